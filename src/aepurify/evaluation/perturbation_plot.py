"""Analysis ``accuracy-vs-perturbation``: accuracy against the normalised L2 size of the
perturbation, the figure of the patch-VAE paper (Luo and Pfister, arXiv 1812.02891, which plots
FGSM and I-FGSM sweeps for the VAE defenses against JPEG at several qualities).

It reads the finished rows only: each attacked row records ``details["mean_rel_l2"]``, the mean
over images of ||x_adv - x||_2 / ||x||_2 (the runner's ``perturbation_size``), which is the x
axis; the y axis is the row's accuracy; the clean accuracy sits at x = 0. Every purifier is a
line, one panel per attack, one figure per *view*:

- a threat-model name (``gray-box``, ``white-box+eot``, ``bpda``, ...): that threat model's rows;
- ``worst-case``: for each purifier, attack and epsilon, an image counts as robust only if it
  survives under every threat model the purifier was evaluated under (for example gray-box and
  white-box+eot for a VAE, gray-box and bpda for JPEG): the honest comparison.

Within a view every accuracy is measured on the same images, the first n (n: the smallest row
of the view), so rows attacked on fewer images (expensive EOT attacks) set n for the view.

With ``compare`` and ``baselines`` it also checks the paper's claim at every epsilon from
``moderate_eps`` up ("for moderate to severe attacks the VAE outperforms or closely matches JPEG
at its best quality"): a compared purifier matches at an epsilon when its accuracy is at least
the best baseline's minus ``tolerance``.

Config::

    analyses:
      - name: accuracy-vs-perturbation
        params: {views: [gray-box, worst-case], compare: [vae, patch-vae],
                 baselines: [jpeg-q10, jpeg-q23, jpeg-q50, jpeg-q70], tolerance: 0.02}
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .analyses import ANALYSES, AnalysisResult
from .formats import fmt_eps, md_text, safe_file_name, write_records_csv
from .report.plots import style_accuracy_axes
from .store import CLEAN

if TYPE_CHECKING:
    from .experiment import Experiment
    from .store import ResultRow

NAME = "accuracy-vs-perturbation"
WORST = "worst-case"

# (purifier, attack) -> eps -> (mean normalised L2, accuracy, threat model(s), images)
Series = dict[tuple[str, str], dict[float, tuple[float, float, str, int]]]


def collect(rows: list[ResultRow], view: str, purifiers: list[str] | None = None,
            attacks: list[str] | None = None) -> Series:
    """The points of one view: for each (purifier, attack), eps -> (mean normalised L2,
    accuracy, threat model, images).

    Every accuracy of a view is measured on the same images: the first n, n being the smallest
    row of the view (rows keep per-image correctness). A threat-model view takes that threat
    model's rows; ``worst-case`` counts an image as robust to an attack at an epsilon only if it
    survives it under every threat model the purifier was evaluated under (per image, as the
    adaptive protocol of ``summary.csv``), and places the point at the perturbation size of the
    strongest of those rows. The undefended classifier (purifier ``none``) contributes its
    gray-box rows to every view.
    """
    chosen: dict[tuple[str, str, float], list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.attack == CLEAN or "mean_rel_l2" not in r.details:
            continue
        if purifiers is not None and r.purifier not in purifiers and r.purifier != CLEAN:
            continue
        if attacks is not None and r.attack not in attacks:
            continue
        if r.purifier == CLEAN:
            if r.threat_model != "gray-box":
                continue
        elif view != WORST and r.threat_model != view:
            continue
        chosen[(r.purifier, r.attack, r.eps)].append(r)
    n = min((r.n for group in chosen.values() for r in group), default=0)
    out: Series = defaultdict(dict)
    for (purifier, attack, eps), group in chosen.items():
        # every stored row keeps its per-image results, so the worst case is image by image
        survived = np.logical_and.reduce([np.asarray(r.correct[:n], bool) for r in group])
        strongest = min(group, key=lambda r: r.accuracy)
        out[(purifier, attack)][eps] = (float(strongest.details["mean_rel_l2"]),
                                        float(survived.mean()),
                                        ";".join(sorted({r.threat_model for r in group})), n)
    return out


def claim_check(series: Series, attack: str, compare: list[str], baselines: list[str],
                moderate_eps: float, tolerance: float) -> list[dict[str, Any]]:
    """For each compared purifier: at every epsilon >= ``moderate_eps`` where it and at least
    one baseline have a point, its margin over the best baseline (accuracy difference) and
    whether the claim holds there (margin >= -tolerance)."""
    results = []
    for pur in compare:
        points = series.get((pur, attack), {})
        margins = []
        for eps in sorted(points):
            if eps < moderate_eps - 1e-12:
                continue
            base = [(series[(b, attack)][eps][1], b) for b in baselines
                    if eps in series.get((b, attack), {})]
            if not base:
                continue
            best_acc, best = max(base)
            margins.append({"eps": eps, "accuracy": points[eps][1], "best_baseline": best,
                            "best_baseline_accuracy": best_acc,
                            "margin": points[eps][1] - best_acc})
        if not margins:
            continue
        held = sum(m["margin"] >= -tolerance for m in margins)
        results.append({"purifier": pur, "attack": attack, "points": margins, "held": held,
                        "total": len(margins),
                        "mean_margin": sum(m["margin"] for m in margins) / len(margins),
                        "min_margin": min(m["margin"] for m in margins),
                        "holds": held == len(margins)})
    return results


def _plot(series: Series, clean: dict[str, float], attacks: list[str], title: str,
          path: Path) -> None:
    import matplotlib.pyplot as plt  # the Agg backend is set by .report.plots

    purifiers = list(dict.fromkeys(p for p, _ in series))
    colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(p for p in purifiers if p != CLEAN)}
    fig, axes = plt.subplots(1, len(attacks), figsize=(6 * len(attacks), 4.4), squeeze=False)
    for ax, attack in zip(axes[0], attacks, strict=True):
        for pur in purifiers:
            points = series.get((pur, attack))
            if not points:
                continue
            xy = sorted((x, acc) for x, acc, _, _ in points.values())
            if pur in clean:
                xy = [(0.0, clean[pur])] + xy
            ax.plot([x for x, _ in xy], [a for _, a in xy], marker="o", ms=2.5,
                    color="black" if pur == CLEAN else colours[pur],
                    linestyle="--" if pur == CLEAN else "-",
                    label="undefended" if pur == CLEAN else pur)
        style_accuracy_axes(ax, "mean normalised L2 size of the perturbation, ||x' - x|| / ||x||",
                            f"{attack}, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _as_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{NAME}: {what} must be a list of names; got {value!r}")
    return value


def accuracy_vs_perturbation(exp: Experiment, rows: list[ResultRow], out_dir: Path,
                             views: list[str] | None = None, attacks: list[str] | None = None,
                             purifiers: list[str] | None = None,
                             compare: list[str] | None = None,
                             baselines: list[str] | None = None,
                             moderate_eps: float | None = None, tolerance: float = 0.02,
                             ) -> AnalysisResult:
    """Plot accuracy against the mean normalised L2 perturbation size and check the claim.

    Args:
        exp: the prepared experiment (its classifier labels name the figures).
        rows: the finished rows.
        out_dir: where the PNGs and ``accuracy-vs-perturbation.csv`` go.
        views: threat-model names and/or ``worst-case`` (default: ``gray-box`` and
            ``worst-case``); one figure each.
        attacks: attack labels, one panel each (default: every attack in the rows).
        purifiers: purifier labels to draw (default: all; the undefended classifier always).
        compare: purifier labels whose claim is checked (e.g. ``vae``, ``patch-vae``).
        baselines: purifier labels they are compared with (e.g. the JPEG qualities); the best
            of them at each epsilon is the reference.
        moderate_eps: the smallest epsilon of "moderate to severe" attacks (default: the median
            epsilon of each attack's sweep).
        tolerance: how far below the best baseline still counts as "closely matches"
            (accuracy, in [0, 1]).

    Returns:
        A report section with the figures, the claim table and where the CSV is.

    Raises:
        ConfigError: malformed options.
    """
    views = _as_list(views, "views") or ["gray-box", WORST]
    attacks = _as_list(attacks, "attacks")
    purifiers = _as_list(purifiers, "purifiers")
    compare = _as_list(compare, "compare") or []
    baselines = _as_list(baselines, "baselines") or []
    if not 0 <= float(tolerance) <= 1:
        raise ConfigError(f"{NAME}: tolerance must be in [0, 1]; got {tolerance}")
    several = len({r.classifier for r in rows}) > 1
    attacked = [r for r in rows if r.attack != CLEAN]
    all_attacks = attacks or list(dict.fromkeys(r.attack for r in attacked))
    files: list[str] = []
    lines: list[str] = [
        "Accuracy against the mean normalised L2 size of the perturbation "
        "(||x' - x||_2 / ||x||_2, averaged over the images; the clean accuracy is drawn at 0), "
        "as in the patch-VAE paper's figures. In `worst-case` an image counts as robust only if "
        "it survives the attack under every threat model the defense was evaluated under. "
        "Within a view all accuracies are on the same first n images (the `n` column of the CSV)."]
    records: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for clf in dict.fromkeys(r.classifier for r in rows):
        clf_rows = [r for r in rows if r.classifier == clf]
        clean = {r.purifier: r.accuracy for r in clf_rows if r.attack == CLEAN}
        for view in views:
            series = collect(clf_rows, view, purifiers, all_attacks)
            panels = [a for a in all_attacks if any(k[1] == a for k in series)]
            if not panels:
                lines += ["", f"No rows with a perturbation size for view {md_text(view)}."]
                continue
            stem = f"accuracy-vs-l2-{view.replace('+', '_')}"
            name = safe_file_name(f"{stem}-{clf}.png" if several else f"{stem}.png")
            _plot(series, clean, panels, view if not several else f"{clf}, {view}",
                  out_dir / name)
            files.append(name)
            lines += ["", f"![accuracy versus normalised L2, {md_text(view)}]({name})"]
            for (pur, attack), points in series.items():
                for eps, (rel, acc, tm, n) in sorted(points.items()):
                    records.append({"classifier": clf, "view": view, "purifier": pur,
                                    "attack": attack, "eps": eps, "threat_model": tm, "n": n,
                                    "mean_rel_l2": rel, "accuracy": acc})
            for attack in panels:
                sweep = sorted({e for (p, a), pts in series.items() if a == attack for e in pts})
                start = moderate_eps if moderate_eps is not None else median(sweep)
                for c in claim_check(series, attack, compare, baselines, float(start),
                                     float(tolerance)):
                    checks.append({"classifier": clf, "view": view, "moderate_eps": start, **c})
    if checks:
        lines += ["", f"Claim check: at each epsilon from `moderate_eps` up, the defense's "
                  f"accuracy minus the best of {md_text(', '.join(baselines))} at that epsilon "
                  "(the claim "
                  f"holds at an epsilon when the margin is at least -{float(tolerance):g}).", "",
                  "| classifier | view | attack | defense | eps range | holds at | mean margin "
                  "| worst margin | claim |", "|---|---|---|---|---|---:|---:|---:|---|"]
        for c in checks:
            eps = [p["eps"] for p in c["points"]]
            lines.append(
                f"| {md_text(c['classifier'])} | {md_text(c['view'])} | {md_text(c['attack'])} | "
                f"{md_text(c['purifier'])} | "
                f"{fmt_eps(min(eps))} to {fmt_eps(max(eps))} | {c['held']}/{c['total']} | "
                f"{c['mean_margin']:+.3f} | {c['min_margin']:+.3f} | "
                f"{'holds' if c['holds'] else 'does not hold'} |")
    if records:
        write_records_csv(records, list(records[0]), out_dir / "accuracy-vs-perturbation.csv")
        files.append("accuracy-vs-perturbation.csv")
        lines += ["", "Every point: `accuracy-vs-perturbation.csv`."]
    return AnalysisResult("Accuracy against perturbation size", "\n".join(lines), files,
                          {"claims": checks})


if NAME not in ANALYSES:  # idempotent: a re-import must not register twice
    ANALYSES.register(NAME)(accuracy_vs_perturbation)
