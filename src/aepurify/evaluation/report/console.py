"""The console summary of a run, readable in 80 columns whether or not the output is a terminal:
per defense and budget, clean, gray-box robust and adaptive robust accuracy and the worst single
attack (and, when a defense rejects, its clean rejection rate); then one line per failed sanity
check (explained ones as findings, not bugs) and per failed row. The full grid is in
report.md / report.html."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..formats import fmt_eps
from ..sanity import SanityResult
from ..summary import SummaryRow
from .tables import by_defense, defense_label, several_classifiers

MAX_WIDTH = 80


def summary_console(file: IO[str] | None = None, stderr: bool = False) -> Console:
    """A rich console at most ``MAX_WIDTH`` columns wide: the terminal's width when narrower,
    80 when the output is a file or a pipe (rich would otherwise take $COLUMNS or its own
    default)."""
    columns = shutil.get_terminal_size((MAX_WIDTH, 24)).columns
    return Console(file=file, stderr=stderr, width=max(40, min(MAX_WIDTH, columns)),
                   highlight=False)


def summary_table(summary: Sequence[SummaryRow], title: str = "robust accuracy") -> Table:
    """One line per (defense, norm, eps): n, clean, the clean rejection rate where a defense has
    detectors, gray-box robust, adaptive robust, and the worst single attack's accuracy and name
    (threat model / attack). Long labels wrap inside their column; numbers never shrink.
    Epsilons are L-inf unless the norm is named."""
    several = several_classifiers(summary)
    rejects = any(s.clean_rejection_rate == s.clean_rejection_rate for s in summary)
    caption = ("gray: gray-box robust; adapt: adaptive robust (per-example worst case over "
               "every attack); worst: the strongest single attack (lowest accuracy). ")
    if rejects:
        caption += ("rej: clean images rejected by a detector (an error); a rejected "
                    "adversarial image counts as robust. ")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True,
                  title_justify="left", caption_justify="left",
                  caption=caption + "Every row and plot: report.md")
    table.add_column("defense", overflow="fold", min_width=8, max_width=18)
    names = ("eps", "n", "clean", *(("rej",) if rejects else ()), "gray", "adapt", "worst")
    for name in names:
        table.add_column(name, justify="left" if name == "eps" else "right", no_wrap=True)
    table.add_column("worst attack", overflow="fold", ratio=1, min_width=10)
    previous = None
    for s in by_defense(summary):
        label = defense_label(s.classifier, s.purifier, several)
        gray = "-" if s.graybox_robust != s.graybox_robust else f"{s.graybox_robust:.3f}"
        eps = fmt_eps(s.eps) if s.norm == "linf" else f"{s.norm} {fmt_eps(s.eps)}"
        rej = (_num(s.clean_rejection_rate),) if rejects else ()
        table.add_row(escape(label) if label != previous else "", eps, str(s.n),
                      f"{s.clean:.3f}", *rej, gray, f"{s.adaptive_robust:.3f}",
                      f"{s.worst_accuracy:.3f}", escape(s.worst_attack))
        previous = label
    return table


def random_table(summary: Sequence[SummaryRow]) -> Table | None:
    """Random purifiers (N-evaluation): per defense and budget, n_eval and the adaptive robust
    accuracy under all-of-n, majority vote and a single draw; None when there are none."""
    random = [s for s in by_defense(summary) if s.n_eval > 1]
    if not random:
        return None
    several = several_classifiers(summary)
    table = Table(title="random defenses: N-evaluation (adaptive robust)", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1), collapse_padding=True, title_justify="left",
                  caption_justify="left",
                  caption="all-of-n: every evaluation correct (the verdict above); majority: "
                          "the true class wins the vote; 1 draw: one evaluation")
    table.add_column("defense", overflow="fold", min_width=8, max_width=18)
    for name in ("eps", "n_eval", "all-of-n", "majority", "1 draw"):
        table.add_column(name, justify="left" if name == "eps" else "right", no_wrap=True)
    previous = None
    for s in random:
        label = defense_label(s.classifier, s.purifier, several)
        eps = fmt_eps(s.eps) if s.norm == "linf" else f"{s.norm} {fmt_eps(s.eps)}"
        table.add_row(escape(label) if label != previous else "", eps, str(s.n_eval),
                      f"{s.adaptive_robust:.3f}", _num(s.adaptive_majority_vote),
                      _num(s.adaptive_single_draw))
        previous = label
    return table


def _num(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def first_sentence(text: str) -> str:
    """``text`` up to its first full stop followed by a space (all of it if none)."""
    head, sep, _ = text.partition(". ")
    return head if sep else text


def wrapped(prefix: str, text: str, width: int = MAX_WIDTH) -> str:
    """``prefix`` + ``text`` wrapped at ``width`` columns, continuation lines indented."""
    return "\n".join(textwrap.wrap(f"{prefix}{text}", width=width, subsequent_indent="    ",
                                   break_on_hyphens=False))


def print_summary(console: Console, summary: Sequence[SummaryRow],
                  sanity: Sequence[SanityResult] = (), failed: Sequence[Any] = (), *,
                  problems: Console | None = None, title: str = "robust accuracy") -> None:
    """Print the summary table on ``console``, then each failed sanity check and each failed
    row (objects with ``row`` and ``error``) on a line of its own, wrapped at 80 columns, on
    ``problems`` (default: ``console``; the command line gives stderr)."""
    problems = problems or console
    if summary:
        console.print(summary_table(summary, title), width=min(console.width, MAX_WIDTH))
        random = random_table(summary)
        if random is not None:
            console.print(random, width=min(console.width, MAX_WIDTH))
    width = min(problems.width, MAX_WIDTH)
    lines = [wrapped(f"sanity check failed: {r.check} ({r.purifier}): ", r.detail, width)
             for r in sanity if r.unexplained]
    lines += [wrapped(f"finding, not a bug: {r.check} ({r.purifier}): ",
                      f"{first_sentence(r.finding)} (report.md explains)", width)
              for r in sanity if r.passed is False and r.finding]
    lines += [wrapped("row failed: ", f"{f.row}: {f.error}", width) for f in failed]
    for line in lines:
        problems.print(escape(line), soft_wrap=True)
