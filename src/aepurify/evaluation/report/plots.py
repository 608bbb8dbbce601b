"""The report's figures: the headline (gray-box against adaptive robust accuracy over epsilon,
one panel per defense) and one figure per threat model (one panel per defense, a line per
attack). Small multiples with shared axes and the legend outside the panels, so no line hides
under it however many defenses a run has."""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..store import CLEAN, ResultRow  # noqa: E402
from ..summary import SummaryRow  # noqa: E402
from .tables import Defense, clean_accuracy, defense_label, several_classifiers  # noqa: E402

HEADLINE = "headline.png"
MAX_COLUMNS = 4
GRAY_BOX_COLOUR, ADAPTIVE_COLOUR = "#1f77b4", "#d62728"


def style_accuracy_axes(ax: Any, xlabel: str, title: str, legend: bool = True) -> None:
    """The accuracy plots' common axes: accuracy in [0, 1] on y, a grid, a small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=7, loc="lower left")


def _panels(blocks: Sequence[tuple[str, Sequence[Any]]], draw: Callable[[Any, str, Any], None],
            legend: tuple[list[Any], list[str]], path: Path) -> None:
    """Small multiples: for each (norm, panels) block a new row of panels (at most
    ``MAX_COLUMNS`` wide), x shared within a block, y ([0, 1] accuracy) shared by all; the
    legend sits above the panels, outside them."""
    widest = max(len(panels) for _, panels in blocks)
    ncols = widest if widest <= MAX_COLUMNS else min(MAX_COLUMNS, math.ceil(math.sqrt(widest)))
    rows_of = [math.ceil(len(panels) / ncols) for _, panels in blocks]
    nrows = sum(rows_of)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.5 * nrows + 0.6),
                             sharey=True, squeeze=False, layout="constrained")
    row = 0
    for (norm, panels), n_rows in zip(blocks, rows_of, strict=True):
        block = [ax for r in range(row, row + n_rows) for ax in axes[r]]
        for i, ax in enumerate(block):
            if i >= len(panels):
                ax.set_visible(False)
                continue
            if i:
                ax.sharex(block[0])
            draw(ax, norm, panels[i])
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i % ncols == 0:
                ax.set_ylabel("accuracy")
            if i + ncols >= len(panels):
                ax.set_xlabel(f"epsilon ({norm}, pixels in [0, 1])", fontsize=8)
        row += n_rows
    fig.legend(*legend, loc="outside upper center", ncol=min(4, len(legend[0])), fontsize=8,
               frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plain(text: str) -> str:
    """A label as matplotlib text: ``$`` escaped, so a label from a config is never read as
    mathtext (which can fail to parse and end the run)."""
    return text.replace("$", r"\$")


def _title(ax: Any, text: str) -> None:
    ax.set_title(plain("\n".join(textwrap.wrap(text, 30)[:2])), fontsize=9)


def plot_headline(summary: list[SummaryRow], out_dir: Path) -> str | None:
    """``headline.png``: per defense, gray-box against adaptive robust accuracy over epsilon
    (the per-example worst cases of ``summary.csv``), clean accuracy marked at eps 0, the
    undefended classifier's adaptive curve as a grey reference.

    Returns:
        The file name, or None when there is no summary row to draw.
    """
    if not summary:
        return None
    several = several_classifiers(summary)
    series: dict[tuple[str, Defense], list[SummaryRow]] = defaultdict(list)
    for s in summary:
        series[(s.norm, (s.classifier, s.purifier))].append(s)
    norms = list(dict.fromkeys(s.norm for s in summary))
    blocks = [(norm, [d for (nm, d) in series if nm == norm]) for norm in norms]

    def draw(ax: Any, norm: str, defense: Defense) -> None:
        points = sorted(series[(norm, defense)], key=lambda s: s.eps)
        clean = points[0].clean
        undefended = series.get((norm, (defense[0], CLEAN)))
        if undefended and defense[1] != CLEAN:
            ref = sorted(undefended, key=lambda s: s.eps)
            ax.plot([0.0] + [s.eps for s in ref], [ref[0].clean] + [s.adaptive_robust for s in ref],
                    color="0.6", lw=1, ls="--")
        gray = [(s.eps, s.graybox_robust) for s in points if s.graybox_robust == s.graybox_robust]
        if gray:
            ax.plot([0.0] + [e for e, _ in gray], [clean] + [a for _, a in gray], marker="o",
                    ms=3, color=GRAY_BOX_COLOUR)
        ax.plot([0.0] + [s.eps for s in points], [clean] + [s.adaptive_robust for s in points],
                marker="s", ms=3, color=ADAPTIVE_COLOUR)
        ax.plot([0.0], [clean], marker="D", ms=6, color="black", ls="none")
        _title(ax, defense_label(*defense, several))

    legend = ([Line2D([], [], color=GRAY_BOX_COLOUR, marker="o", ms=3),
               Line2D([], [], color=ADAPTIVE_COLOUR, marker="s", ms=3),
               Line2D([], [], color="black", marker="D", ls="none"),
               Line2D([], [], color="0.6", ls="--")],
              ["gray-box robust", "adaptive robust (worst case over every attack)",
               "clean accuracy (eps 0)", "undefended, adaptive"])
    _panels(blocks, draw, legend, out_dir / HEADLINE)
    return HEADLINE


def plot_threat_models(rows: list[ResultRow], out_dir: Path) -> dict[str, str]:
    """One PNG per threat model: accuracy against epsilon, one panel per defense, a line per
    attack (clean accuracy at eps 0); the undefended classifier's gray-box curves of the same
    attacks are drawn dashed grey as a reference.

    Returns:
        threat model -> file name.
    """
    several = several_classifiers(rows)
    clean = clean_accuracy(rows)
    by_tm: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.attack != CLEAN:
            by_tm[r.threat_model].append(r)
    baseline = [r for r in rows if r.purifier == CLEAN and r.threat_model == "gray-box"]
    files = {}
    for tm, tm_rows in by_tm.items():
        attacks = list(dict.fromkeys(r.attack for r in tm_rows))
        colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(attacks)}
        series: dict[tuple[str, Defense], dict[str, list[tuple[float, float]]]] = \
            defaultdict(lambda: defaultdict(list))
        for r in tm_rows:
            series[(r.norm, (r.classifier, r.purifier))][r.attack].append((r.eps, r.accuracy))
        norms = list(dict.fromkeys(r.norm for r in tm_rows))
        blocks = [(norm, [d for (nm, d) in series if nm == norm]) for norm in norms]
        with_reference = tm != "gray-box" and bool(baseline)

        def draw(ax: Any, norm: str, defense: Defense) -> None:
            lines = series[(norm, defense)]
            if with_reference:
                for att in lines:
                    ref = sorted((r.eps, r.accuracy) for r in baseline if r.norm == norm
                                 and r.attack == att and r.classifier == defense[0])
                    start = clean.get((defense[0], CLEAN))
                    ref = ([(0.0, start)] if start is not None and ref else []) + ref
                    ax.plot([e for e, _ in ref], [a for _, a in ref], color="0.6", lw=1, ls="--")
            for att, pts in lines.items():
                pts = sorted(pts)
                if defense in clean:
                    pts = [(0.0, clean[defense])] + pts
                ax.plot([e for e, _ in pts], [a for _, a in pts], marker="o", ms=3,
                        color=colours[att])
            _title(ax, defense_label(*defense, several))

        handles = [Line2D([], [], color=colours[a], marker="o", ms=3) for a in attacks]
        labels = [plain(a) for a in attacks]
        if with_reference:
            handles.append(Line2D([], [], color="0.6", ls="--"))
            labels.append("undefended, gray-box (same attack)")
        name = f"accuracy-{tm.replace('+', '_')}.png"
        _panels(blocks, draw, (handles, labels), out_dir / name)
        files[tm] = name
    return files
