"""The files of a certification run: ``certify.csv`` (one row per image), ``attacked.csv`` (one
row per image and radius), ``summary.csv`` (certified and attacked accuracy per L2 radius),
``certified.png`` (both against the radius), ``report.md`` / ``report.html``, and the console
table. Strings from a config or a checkpoint go through ``md_text`` (markdown) and rich's
``escape`` (console), as everywhere in the project's reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich import box  # noqa: E402
from rich.table import Table  # noqa: E402

from ..evaluation.formats import md_text, write_records_csv  # noqa: E402
from ..evaluation.report.plots import plain, style_accuracy_axes  # noqa: E402
from .bracket import CHECK_ALPHA, BracketRow  # noqa: E402
from .run import DefenseRun  # noqa: E402

CERTIFY_COLUMNS = ("index", "label", "prediction", "radius", "correct")
ATTACKED_COLUMNS = ("index", "label", "radius", "prediction", "correct", "inherited",
                    "distance")
SUMMARY_COLUMNS = ("dataset", "classifier", "purifier", "sigma", "norm", "eps", "n", "certified",
                   "attacked", "certified_abstained", "attacked_abstained", "contradictions",
                   "allowance", "check")
FIGURE = "certified.png"


def write_certify_csv(run: DefenseRun, path: Path) -> Path:
    """``certify.csv``: per image its index, true label, CERTIFY's prediction (-1: abstain),
    certified L2 radius and whether the prediction is the label."""
    recs = [{"index": i, "label": int(run.labels[i]), "prediction": c["prediction"],
             "radius": round(c["radius"], 6), "correct": int(c["prediction"] == run.labels[i])}
            for i, c in enumerate(run.certificates)]
    return write_records_csv(recs, CERTIFY_COLUMNS, path)


def write_attacked_csv(run: DefenseRun, path: Path) -> Path:
    """``attacked.csv``: per image and radius, PREDICT's answer on the SmoothAdv example
    (-1: abstain), whether it is the label, whether the verdict was inherited from a smaller
    radius, and the example's L2 distance from the image."""
    recs = []
    for radius, rows in run.attacked.items():
        for i, r in enumerate(rows):
            recs.append({"index": i, "label": int(run.labels[i]), "radius": radius,
                         "prediction": r["prediction"],
                         "correct": int(r["prediction"] == run.labels[i]),
                         "inherited": int(r["inherited"]), "distance": round(r["distance"], 6)})
    return write_records_csv(recs, ATTACKED_COLUMNS, path)


def write_summary_csv(rows: list[BracketRow], dataset: str, path: Path) -> Path:
    """``summary.csv``: per L2 radius (``eps``), certified and attacked accuracy and the check."""
    def convert(rec: dict[str, Any]) -> dict[str, Any]:
        out = {k: rec[k] for k in SUMMARY_COLUMNS if k in rec}
        out.update(dataset=dataset, norm="l2", eps=rec["radius"],
                   certified=round(rec["certified"], 6),
                   attacked="" if np.isnan(rec["attacked"]) else round(rec["attacked"], 6),
                   check={True: "passed", False: "FAILED", None: ""}[rec["passed"]])
        return out

    return write_records_csv(rows, SUMMARY_COLUMNS, path, convert)


def write_figure(rows: list[BracketRow], path: Path, title: str) -> Path:
    """Certified (lower bound) and attacked (upper bound) accuracy against the L2 radius, the
    band between them shaded: where the true robust accuracy of the smoothed classifier lies."""
    radii = [r.radius for r in rows]
    certified = [r.certified for r in rows]
    attacked = [r.attacked for r in rows]
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    ax.step(radii, certified, where="post", color="#1f77b4", label="certified (lower bound)")
    ax.plot(radii, certified, "o", color="#1f77b4", ms=4)
    if not all(np.isnan(attacked)):
        ax.plot(radii, attacked, "s-", color="#d62728", ms=4, label="attacked (upper bound)")
        ax.fill_between(radii, certified, attacked, color="#999999", alpha=0.25, step=None,
                        label="true robust accuracy lies here")
    style_accuracy_axes(ax, "L2 radius (pixels in [0, 1])", plain(title), legend=False)
    ax.legend(fontsize=7, loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def _check(row: BracketRow) -> str:
    if row.passed is None:
        return "-"
    return f"{row.contradictions}/{row.allowance} {'passed' if row.passed else 'FAILED'}"


def markdown_lines(run: DefenseRun, rows: list[BracketRow], record: dict[str, Any]) -> list[str]:
    """``report.md``: what was certified, the bracket table, the figure, the check, the run."""
    s = record["settings"]
    attack = s["attack"]
    defense = md_text(record["defense"])
    lines = [f"# Certification: {md_text(record['name'])}", "",
             f"Smoothed classifier g(x) = argmax_c P[f(D(clip(x + delta))) = c], delta ~ "
             f"N(0, sigma^2 I), sigma = {s['sigma']:g}: {defense} on "
             f"{md_text(record['dataset'])} ({record['test_images']} test images). The noisy "
             "image is clipped to [0, 1] before the purifier D and the classifier f; the "
             "certificate holds for any base classifier, so it covers f o D o clip.", "",
             f"Lower bound: CERTIFY (Cohen et al., ICML 2019), n0 = {s['n0']:,} selection and "
             f"n = {s['n']:,} estimation draws, Clopper-Pearson at alpha = {s['alpha']:g}. "
             "Upper bound: SmoothAdv (Salman et al., NeurIPS 2019), L2 PGD on the average of "
             f"softmax over {attack['noise_draws']} noise draws, {attack['steps']} steps, each "
             f"example judged by PREDICT with {record['predict_n']:,} draws (an abstention "
             "counts as an error).", "",
             "## Certified (lower) and attacked (upper) accuracy", "",
             "| L2 radius | certified | attacked | gap | attacked abstained | "
             "contradictions / allowed |", "|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.radius:g} | **{r.certified:.3f}** | **{_fmt(r.attacked)}** | "
                     f"{_fmt(r.gap)} | {r.attacked_abstained if r.passed is not None else '-'} | "
                     f"{_check(r)} |")
    lines += ["", f"CERTIFY abstained on {rows[0].certified_abstained} of {rows[0].n} images.",
              "", f"![certified and attacked accuracy against the L2 radius]({FIGURE})", "",
              "## The check", "",
              "A certified image whose attacked example PREDICT gives another class contradicts "
              "the certificate; that happens only with probability 2 alpha per image (the "
              "certificate or PREDICT wrong). The check fails where such contradictions exceed "
              f"the {1 - CHECK_ALPHA:.1%} quantile of Binomial(certified images, 2 alpha): a "
              "bug in one of the two bounds. Abstentions are no contradiction (near the edge "
              "of the certified ball the top two classes are close), so certified accuracy may "
              "exceed attacked accuracy by the abstentions plus the allowance, never more.", ""]
    failed = [r for r in rows if r.passed is False]
    lines.append("FAILED at radius " + ", ".join(f"{r.radius:g}" for r in failed)
                 if failed else ("Passed at every radius." if rows[0].passed is not None
                                 else "Not run (no attack)."))
    lines += ["", "## The run", "",
              f"- seed {record['seed']}, code version {md_text(record['code_version'])}, "
              f"device {md_text(record['device'])}, torch {md_text(record['torch'])}",
              f"- noise draws per call: {record['draws_per_call']} (pixel budget "
              f"{record['pixel_budget']:,}); counting passes (the certified base classifier) in "
              f"{record.get('counting_precision', 'fp32')}, attack gradients in "
              f"{record.get('attack_precision', 'fp32')}",
              f"- wall time: certify {record['seconds'].get('certify', 0):.0f} s, attack "
              f"{record['seconds'].get('attack', 0):.0f} s in this process (0: read back from "
              "certify.db)",
              f"- command: {md_text(record['command'])}" if record.get("command") else "",
              "", "Files: certify.csv (per image), attacked.csv (per image and radius), "
              "summary.csv (per radius), run.json (seed, settings, models)."]
    return lines


def console_table(rows: list[BracketRow]) -> Table:
    """Certified beside attacked accuracy per radius, in 80 columns."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True, caption_justify="left",
                  caption="certified: lower bound (CERTIFY); attacked: upper bound (SmoothAdv, "
                          "judged by PREDICT); abst.: attacked examples PREDICT abstained on; "
                          "check: contradictions/allowed. Details: report.md")
    for name in ("L2 radius", "certified", "attacked", "gap", "abst.", "check"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(f"{r.radius:g}", f"{r.certified:.3f}", _fmt(r.attacked), _fmt(r.gap),
                      str(r.attacked_abstained) if r.passed is not None else "-", _check(r))
    return table
