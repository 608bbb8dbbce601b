"""Stage 4: report. Reads rows, the summary, the sanity results and a run-record dict (never a
config or a model) and writes every output file of a run.

    >>> write_report(out, rows, record, summary=summary, sanity=sanity)

Modules: ``markdown`` (report.md), ``html`` (report.html), ``plots`` (the headline and
per-threat-model figures), ``console`` (the 80-column summary), ``tables`` (row groupings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analyses import AnalysisResult
from ..detection import write_detection_csv
from ..formats import fmt_eps, write_records_csv  # noqa: F401  (their home: formats)
from ..sanity import SanityResult, write_sanity_csv
from ..store import COLUMNS, ResultRow
from ..summary import SummaryRow, summarize, write_summary_csv
from .console import print_summary, summary_console
from .html import write_html
from .markdown import write_markdown
from .plots import plot_headline, plot_threat_models

__all__ = ["write_report", "write_csv", "print_summary", "summary_console", "write_markdown",
           "write_html", "plot_headline", "plot_threat_models"]


def write_csv(rows: list[ResultRow], path: Path) -> Path:
    """``results.csv`` with exactly the columns
    ``dataset,classifier,purifier,threat_model,attack,norm,eps,n,accuracy,seconds``."""
    return write_records_csv((row.csv_record() for row in rows), COLUMNS, path)


def write_report(out: Path, rows: list[ResultRow], record: dict[str, Any], *,
                 summary: list[SummaryRow] | None = None,
                 sanity: list[SanityResult] | None = None,
                 analyses: list[AnalysisResult] | None = None,
                 examples: list[tuple[str, str]] | None = None) -> None:
    """Write results.csv, summary.csv, sanity.csv, detection.csv (defenses that reject),
    headline.png, accuracy-<threat model>.png, report.md and report.html into ``out``.

    Args:
        out: the output folder (exists).
        rows: the finished rows, in plan order.
        record: the run record (``name``, ``dataset``, ``classifiers``, ``seed``,
            ``code_version``, ``command``, ``models``, ``failed``, ``skipped``, ...).
        summary: the adaptive-protocol summary (computed from ``rows`` when None).
        sanity: the gradient-masking checks.
        analyses: report sections of the analyses.
        examples: (caption, file name) of the example figures.
    """
    summary = summary if summary is not None else summarize(rows)
    write_csv(rows, out / "results.csv")
    write_summary_csv(summary, out / "summary.csv")
    write_sanity_csv(sanity or [], out / "sanity.csv")
    write_detection_csv(rows, out / "detection.csv")
    headline = plot_headline(summary, out)
    plots = plot_threat_models(rows, out)
    write_markdown(out / "report.md", rows, record, headline=headline, plots=plots,
                   summary=summary, sanity=sanity, analyses=analyses, examples=examples)
    write_html(out / "report.md", out / "report.html",
               f"aepurify report: {record.get('name', 'experiment')}")
