"""The registry of analyses that run after the grid and add a section to the report (for example
the S2SNet signal-transfer matrix, input-gradient statistics, accuracy against perturbation
size).

An analysis is a function registered by name::

    @ANALYSES.register("my-analysis")
    def my_analysis(exp: Experiment, rows: list[ResultRow], out_dir: Path, **params) -> AnalysisResult

It may read the prepared experiment (data, trained models) and the finished rows, write files
into ``out_dir`` and return a markdown section; text it did not write itself (labels, names)
goes through :func:`aepurify.evaluation.formats.md_text`. Results are kept in ``results.db``
keyed by the analysis, its options and the models' keys, so a resumed run does not redo them
(:func:`aepurify.evaluation.outputs.run_analyses`).

This module holds only the registry, so a config can check analysis names without importing
the stages that run them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry


@dataclass
class AnalysisResult:
    """What an analysis reports.

    Attributes:
        title: section heading in report.md.
        markdown: the section body (tables, image links to files in the output folder).
        files: files it wrote into the output folder.
        data: machine-readable results (kept in results.db and run.json).
    """

    title: str
    markdown: str
    files: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


ANALYSES: Registry[AnalysisResult] = Registry("analysis")

AnalysisFn = Callable[..., AnalysisResult]
