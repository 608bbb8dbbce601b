"""Outputs of an evaluation: ``results.csv``, ``report.md``, one accuracy-versus-epsilon plot per
threat model, and a console table."""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .store import COLUMNS, ResultRow  # noqa: E402

CLEAN = "none"


def write_csv(rows: list[ResultRow], path: Path) -> Path:
    """``results.csv`` with exactly the columns
    ``dataset,classifier,purifier,threat_model,attack,norm,eps,n,accuracy,seconds``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(row.csv_record())
    return path


def _fmt_eps(eps: float) -> str:
    """8/255 for multiples of 1/255 that are not round decimals, else the number (0.3, 2)."""
    k = eps * 255
    if 0 < eps < 1 and abs(k - round(k)) < 1e-6 and abs(eps * 100 - round(eps * 100)) > 1e-9:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _purifiers(rows: list[ResultRow]) -> list[str]:
    return list(dict.fromkeys(r.purifier for r in rows))


def clean_accuracy(rows: list[ResultRow]) -> dict[str, float]:
    return {r.purifier: r.accuracy for r in rows if r.attack == CLEAN}


def threat_model_tables(rows: list[ResultRow]) -> dict[str, tuple[list[str], dict[str, dict[str, float]]]]:
    """threat model -> (column labels, purifier -> column -> accuracy)."""
    out: dict[str, tuple[list[str], dict[str, dict[str, float]]]] = {}
    for r in rows:
        if r.attack == CLEAN:
            continue
        cols, table = out.setdefault(r.threat_model, ([], defaultdict(dict)))
        col = f"{r.attack} {r.norm} {_fmt_eps(r.eps)}"
        if col not in cols:
            cols.append(col)
        table[r.purifier][col] = r.accuracy
    return out


def write_markdown(rows: list[ResultRow], record: dict[str, Any], path: Path,
                   plots: dict[str, str]) -> Path:
    """``report.md``: how the run was made, clean accuracy, one table per threat model, the
    skipped combinations with their reasons, and the plots."""
    cfg = record.get("config", {})
    clean = clean_accuracy(rows)
    lines = [f"# aepurify report: {cfg.get('name', 'experiment')}", ""]
    if record.get("dataset_note"):
        lines += [f"**{record['dataset_note']}.**", ""]
    lines += [
        f"- data set: `{cfg.get('dataset')}`, first {record.get('test_images')} test images",
        f"- classifier: `{cfg.get('classifier', {}).get('arch')}`",
        f"- seed: {record.get('seed')}; code version: `{record.get('code_version')}`; "
        f"torch {record.get('torch')} on `{record.get('device')}`",
        f"- command: `{record.get('command')}`",
        "- accuracy is the fraction of the test images classified correctly (in [0, 1]); eps is "
        "on the [0, 1] pixel scale; threat models as in METHODS.md (gray-box crafts on the bare "
        "classifier, white-box through the purifier, bpda through its surrogate).",
        "",
        "## Clean accuracy", "",
        "| purifier | clean accuracy | properties |", "|---|---:|---|",
    ]
    models = record.get("models", {})
    for name, acc in clean.items():
        props = (models.get(f"purifier:{name}") or {}).get("properties") or {}
        flags = ", ".join(k for k in ("differentiable", "stochastic") if props.get(k))
        sur = props.get("surrogate")
        lines.append(f"| {name} | {acc:.4f} | {flags or '-'}"
                     f"{'; bpda surrogate: ' + sur if sur else ''} |")
    for tm, (cols, table) in threat_model_tables(rows).items():
        lines += ["", f"## Threat model: {tm}", "",
                  "| purifier | clean | " + " | ".join(cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for p in _purifiers(rows):
            if p not in table:
                continue
            vals = [f"{table[p][c]:.4f}" if c in table[p] else "-" for c in cols]
            lines.append(f"| {p} | {clean.get(p, float('nan')):.4f} | " + " | ".join(vals) + " |")
        if tm in plots:
            lines += ["", f"![accuracy versus epsilon, {tm}]({plots[tm]})"]
    if record.get("skipped"):
        lines += ["", "## Not evaluated", "", "| purifier | threat model | why |", "|---|---|---|"]
        for s in record["skipped"]:
            lines.append(f"| {s['purifier']} | {s['threat_model']} | {s['reason']} |")
    lines += ["", "## Models", "", "| model | origin | key | training metrics |", "|---|---|---|---|"]
    for name, m in models.items():
        metrics = m.get("metrics") or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in metrics.items() if k in ("test_accuracy", "final_loss",
                                                               "epochs", "steps", "seconds"))
        lines.append(f"| {name} | {m.get('origin')} | `{m.get('key')}` | {shown or '-'} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_threat_models(rows: list[ResultRow], out_dir: Path) -> dict[str, str]:
    """One PNG per threat model: accuracy against epsilon, a line per (purifier, attack), one
    panel per norm; the undefended classifier's gray-box curve is drawn as a dashed reference.

    Returns:
        threat model -> file name.
    """
    clean = clean_accuracy(rows)
    by_tm: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.attack != CLEAN:
            by_tm[r.threat_model].append(r)
    baseline = [r for r in rows if r.purifier == CLEAN and r.threat_model == "gray-box"]
    purifiers = _purifiers(rows)
    colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(purifiers)}
    files = {}
    for tm, tm_rows in by_tm.items():
        norms = list(dict.fromkeys(r.norm for r in tm_rows))
        fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4.2), squeeze=False)
        for ax, norm in zip(axes[0], norms, strict=True):
            series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
            for r in tm_rows:
                if r.norm == norm:
                    series[(r.purifier, r.attack)].append((r.eps, r.accuracy))
            if tm != "gray-box":
                for r in baseline:
                    if r.norm == norm:
                        series[("undefended (gray-box)", r.attack)].append((r.eps, r.accuracy))
            styles = ["-", "--", ":", "-."]
            attacks = list(dict.fromkeys(a for _, a in series))
            for (p, a), pts in series.items():
                base = CLEAN if p.startswith("undefended") else p
                pts = sorted([(0.0, clean[base])] + pts if base in clean else pts)
                colour = "black" if p.startswith("undefended") else colours.get(p)
                ax.plot([e for e, _ in pts], [acc for _, acc in pts], marker="o", ms=3,
                        color=colour, linestyle=styles[attacks.index(a) % len(styles)],
                        alpha=0.6 if p.startswith("undefended") else 1.0, label=f"{p} / {a}")
            ax.set_xlabel(f"epsilon ({norm}, pixels in [0, 1])")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{tm}, {norm}")
            ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        name = f"accuracy-{tm.replace('+', '_')}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files[tm] = name
    return files


def console_table(rows: list[ResultRow], console: Console | None = None,
                  title: str = "robust accuracy") -> None:
    """Print one table: a row per (purifier, threat model), a column per attack/eps."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    clean = clean_accuracy(rows)
    cols: list[str] = []
    cells: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.attack == CLEAN:
            continue
        col = f"{r.attack} {r.norm} {_fmt_eps(r.eps)}"
        if col not in cols:
            cols.append(col)
        cells[(r.purifier, r.threat_model)][col] = r.accuracy
    table = Table(title=title)
    table.add_column("purifier", no_wrap=True)
    table.add_column("threat model", no_wrap=True)
    table.add_column("clean", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for (p, tm), vals in cells.items():
        table.add_row(p, tm, f"{clean.get(p, float('nan')):.3f}",
                      *[f"{vals[c]:.3f}" if c in vals else "-" for c in cols])
    console.print(table)
