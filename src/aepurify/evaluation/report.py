"""Outputs of an evaluation: ``results.csv``, ``report.md``, one accuracy-versus-epsilon plot per
threat model, and a console table."""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .store import COLUMNS, ResultRow  # noqa: E402

if TYPE_CHECKING:
    from .analyses import AnalysisResult
    from .sanity import SanityResult
    from .summary import SummaryRow

CLEAN = "none"



def write_records_csv(records: Iterable[Any], columns: Sequence[str], path: Path,
                      convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Path:
    """Write ``records`` (dataclasses or dicts) as CSV rows with the header ``columns``;
    ``convert`` edits each row's dict (formatting) before it is written. Returns ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for record in records:
            rec = asdict(record) if is_dataclass(record) else dict(record)
            writer.writerow(convert(rec) if convert else rec)
    return path


def style_accuracy_axes(ax: Any, xlabel: str, title: str) -> None:
    """The accuracy plots' common axes: accuracy in [0, 1] on y, a grid, a small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")

def write_csv(rows: list[ResultRow], path: Path) -> Path:
    """``results.csv`` with exactly the columns
    ``dataset,classifier,purifier,threat_model,attack,norm,eps,n,accuracy,seconds``."""
    return write_records_csv((row.csv_record() for row in rows), COLUMNS, path)


def fmt_eps(eps: float) -> str:
    """8/255 for multiples of 1/255 that are not round decimals, else the number (0.3, 2)."""
    k = eps * 255
    if 0 < eps < 1 and abs(k - round(k)) < 1e-6 and abs(eps * 100 - round(eps * 100)) > 1e-9:
        return f"{round(k)}/255"
    return f"{eps:g}"


def column(row: ResultRow) -> str:
    """Table column of a row: attack, norm and budget."""
    return f"{row.attack} {row.norm} {fmt_eps(row.eps)}"


def _several(rows: list[ResultRow]) -> bool:
    return len({r.classifier for r in rows}) > 1


def clean_accuracy(rows: list[ResultRow]) -> dict[tuple[str, str], float]:
    """(classifier, purifier) -> clean accuracy."""
    return {(r.classifier, r.purifier): r.accuracy for r in rows if r.attack == CLEAN}


def pivot(rows: list[ResultRow]) -> dict[str, tuple[list[str], dict[tuple[str, str], dict[str, ResultRow]]]]:
    """threat model -> (column labels, (classifier, purifier) -> column -> row)."""
    out: dict[str, tuple[list[str], dict[tuple[str, str], dict[str, ResultRow]]]] = {}
    for r in rows:
        if r.attack == CLEAN:
            continue
        cols, table = out.setdefault(r.threat_model, ([], defaultdict(dict)))
        col = column(r)
        if col not in cols:
            cols.append(col)
        table[(r.classifier, r.purifier)][col] = r
    return out


def _model(record: dict[str, Any], classifier: str, purifier: str) -> dict[str, Any]:
    models = record.get("models", {})
    return models.get(f"purifier:{purifier}") or models.get(f"purifier:{classifier}/{purifier}") \
        or {}


def summary_lines(summary: list[SummaryRow], several: bool) -> list[str]:
    """The adaptive-protocol table: clean, gray-box and adaptive robust accuracy."""
    lines = ["## Adaptive robust accuracy", "",
             "Per-example worst case: an image counts as robust only if it survives every "
             "attack it met (gray-box: every gray-box attack; adaptive: every attack under every "
             "threat model), on the same images (n).", "",
             "| defense | norm | eps | n | clean | gray-box robust | adaptive robust | "
             "worst single attack | rows |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for s in summary:
        label = f"{s.classifier} / {s.purifier}" if several else s.purifier
        gray = "-" if s.graybox_robust != s.graybox_robust else f"{s.graybox_robust:.3f}"
        lines.append(f"| {label} | {s.norm} | {fmt_eps(s.eps)} | {s.n} | {s.clean:.3f} | {gray} | "
                     f"**{s.adaptive_robust:.3f}** | {s.worst_attack} ({s.worst_accuracy:.3f}) | "
                     f"{s.attacks} |")
    return lines


def sanity_lines(results: list[SanityResult], several: bool) -> list[str]:
    """The gradient-masking checks, failures marked FAILED."""
    failed = sum(r.passed is False for r in results)
    lines = ["## Sanity checks (gradient masking)", "",
             f"{failed} of {len(results)} checks failed." if failed else
             f"All {sum(r.passed is True for r in results)} checks that ran passed.", "",
             "| check | defense | verdict | detail |", "|---|---|---|---|"]
    for r in results:
        verdict = {True: "passed", False: "FAILED", None: "not run"}[r.passed]
        label = f"{r.classifier} / {r.purifier}" if several else r.purifier
        lines.append(f"| {r.check} | {label} | {verdict} | {r.detail} |")
    return lines


def write_markdown(rows: list[ResultRow], record: dict[str, Any], path: Path,
                   plots: dict[str, str], analyses: list[AnalysisResult] | None = None,
                   summary: list[SummaryRow] | None = None,
                   sanity: list[SanityResult] | None = None,
                   examples: list[tuple[str, str]] | None = None) -> Path:
    """``report.md``: how the run was made, the adaptive-protocol summary, the sanity checks,
    clean accuracy, one table per threat model with its plot, the analyses, example images,
    the combinations not evaluated (with the reason) and the models."""
    cfg = record.get("config", {})
    several = _several(rows)
    clean = clean_accuracy(rows)
    archs = ", ".join(f"`{c.get('label') or c.get('arch')}`" for c in cfg.get("classifiers", []))
    lines = [f"# aepurify report: {cfg.get('name', 'experiment')}", ""]
    if record.get("dataset_note"):
        lines += [f"**{record['dataset_note']}.**", ""]
    lines += [
        f"- data set: `{cfg.get('dataset')}`, first {record.get('test_images')} test images "
        "(a row's n says how many it used)",
        f"- classifier(s): {archs}",
        f"- seed: {record.get('seed')}; code version: `{record.get('code_version')}`; "
        f"torch {record.get('torch')} on `{record.get('device')}`",
        f"- command: `{record.get('command')}`",
        "- accuracy is the fraction of the test images classified correctly (in [0, 1]); eps is "
        "on the [0, 1] pixel scale; threat models as in METHODS.md (gray-box crafts on the bare "
        "classifier, white-box through the purifier, bpda through its surrogate, eot averages "
        "the purifier's randomness).",
        "",
    ]
    if summary:
        lines += summary_lines(summary, several) + [""]
    if sanity:
        lines += sanity_lines(sanity, several) + [""]
    lines += ["## Clean accuracy", "",
              "| defense | clean accuracy | properties |", "|---|---:|---|"]
    for (clf, pur), acc in clean.items():
        props = _model(record, clf, pur).get("properties") or {}
        flags = ", ".join(k for k in ("differentiable", "stochastic") if props.get(k))
        sur = props.get("surrogate")
        label = f"{clf} / {pur}" if several else pur
        lines.append(f"| {label} | {acc:.4f} | {flags or '-'}"
                     f"{'; bpda surrogate: ' + sur if sur else ''} |")
    for tm, (cols, table) in pivot(rows).items():
        lines += ["", f"## Threat model: {tm}", "",
                  "| defense | clean | " + " | ".join(cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for (clf, pur), vals in table.items():
            label = f"{clf} / {pur}" if several else pur
            cells = [f"{vals[c].accuracy:.4f}" if c in vals else "-" for c in cols]
            lines.append(f"| {label} | {clean.get((clf, pur), float('nan')):.4f} | "
                         + " | ".join(cells) + " |")
        ns = {r.n for vals in table.values() for r in vals.values()}
        if len(ns) > 1:
            lines += ["", f"Rows use different numbers of images (n = {sorted(ns)}); see "
                      "results.csv."]
        if tm in plots:
            lines += ["", f"![accuracy versus epsilon, {tm}]({plots[tm]})"]
    for result in analyses or []:
        lines += ["", f"## {result.title}", "", result.markdown.rstrip()]
    if examples:
        lines += ["", "## Examples", "",
                  "Clean image, adversarial image (with the defended prediction), purified image "
                  "and the perturbation (amplified), for the strongest attack at the largest "
                  "budget."]
        for caption, name in examples:
            lines += ["", f"**{caption}**", "", f"![{caption}]({name})"]
    if record.get("failed"):
        lines += ["", "## Failed rows", "",
                  "These rows raised an error and are not in the tables; `errors.log` has the "
                  "tracebacks, and running the same command again retries them.", "",
                  "| row | error |", "|---|---|"]
        for f in record["failed"]:
            lines.append(f"| {f['row']} | {f['error'].replace('|', '/')} |")
    if record.get("skipped"):
        lines += ["", "## Not evaluated", "", "| purifier | threat model | why |", "|---|---|---|"]
        for s in record["skipped"]:
            lines.append(f"| {s['purifier']} | {s['threat_model']} | {s['reason']} |")
    lines += ["", "## Models", "", "| model | origin | key | training metrics |", "|---|---|---|---|"]
    for name, m in record.get("models", {}).items():
        metrics = m.get("metrics") or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in metrics.items() if k in ("test_accuracy", "final_loss",
                                                               "steps", "seconds"))
        lines.append(f"| {name} | {m.get('origin')} | `{m.get('key')}` | {shown or '-'} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_threat_models(rows: list[ResultRow], out_dir: Path) -> dict[str, str]:
    """One PNG per threat model: accuracy against epsilon, a line per (defense, attack), one
    panel per norm; the undefended classifier's gray-box curve is drawn as a grey reference.

    Returns:
        threat model -> file name.
    """
    several = _several(rows)
    clean = clean_accuracy(rows)
    by_tm: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.attack != CLEAN:
            by_tm[r.threat_model].append(r)
    baseline = [r for r in rows if r.purifier == CLEAN and r.threat_model == "gray-box"]
    defenses = list(dict.fromkeys((r.classifier, r.purifier) for r in rows))
    colours = {d: plt.cm.tab10(i % 10) for i, d in enumerate(defenses)}
    styles = ["-", "--", ":", "-."]
    files = {}
    for tm, tm_rows in by_tm.items():
        norms = list(dict.fromkeys(r.norm for r in tm_rows))
        fig, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4.2), squeeze=False)
        for ax, norm in zip(axes[0], norms, strict=True):
            series: dict[tuple[tuple[str, str], str, bool], list[tuple[float, float]]] = \
                defaultdict(list)
            for r in tm_rows:
                if r.norm == norm:
                    series[((r.classifier, r.purifier), r.attack, False)].append((r.eps, r.accuracy))
            if tm != "gray-box":
                for r in baseline:
                    if r.norm == norm:
                        series[((r.classifier, CLEAN), r.attack, True)].append((r.eps, r.accuracy))
            attacks = list(dict.fromkeys(a for _, a, _ in series))
            for (defense, att, is_ref), pts in series.items():
                if defense in clean:
                    pts = [(0.0, clean[defense])] + pts
                pts.sort()
                name = defense[1] if not several else f"{defense[0]} / {defense[1]}"
                ax.plot([e for e, _ in pts], [a for _, a in pts], marker="o", ms=3,
                        color="grey" if is_ref else colours[defense],
                        linestyle=styles[attacks.index(att) % len(styles)],
                        label=f"{'undefended, gray-box' if is_ref else name} / {att}")
            style_accuracy_axes(ax, f"epsilon ({norm}, pixels in [0, 1])", f"{tm}, {norm}")
        fig.tight_layout()
        name = f"accuracy-{tm.replace('+', '_')}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files[tm] = name
    return files


def console_table(rows: list[ResultRow], console: Console | None = None,
                  title: str = "robust accuracy") -> None:
    """Print one table: a row per (defense, threat model), a column per attack and budget."""
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    several = _several(rows)
    clean = clean_accuracy(rows)
    cols: list[str] = []
    cells: dict[tuple[tuple[str, str], str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.attack == CLEAN:
            continue
        col = column(r)
        if col not in cols:
            cols.append(col)
        cells[((r.classifier, r.purifier), r.threat_model)][col] = r.accuracy
    table = Table(title=title)
    table.add_column("defense", no_wrap=True)
    table.add_column("threat model", no_wrap=True)
    table.add_column("clean", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for (defense, tm), vals in cells.items():
        name = f"{defense[0]} / {defense[1]}" if several else defense[1]
        table.add_row(name, tm, f"{clean.get(defense, float('nan')):.3f}",
                      *[f"{vals[c]:.3f}" if c in vals else "-" for c in cols])
    console.print(table)
