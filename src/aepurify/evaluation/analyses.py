"""Analyses that run after the grid and add a section to the report (for example the S2SNet
signal-transfer matrix, input-gradient statistics, accuracy against perturbation size).

An analysis is a function registered by name::

    @ANALYSES.register("my-analysis")
    def my_analysis(exp: Experiment, rows: list[ResultRow], out_dir: Path, **params) -> AnalysisResult

It may read the prepared experiment (data, trained models) and the finished rows, write files
into ``out_dir`` and return a markdown section. Results are kept in ``results.db`` keyed by the
analysis, its options and the models' keys, so a resumed run does not redo them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..registry import Registry
from ..utils import stable_hash

if TYPE_CHECKING:
    from .runner import Experiment
    from .store import ResultRow, ResultStore


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


def run_analyses(exp: Experiment, rows: list[ResultRow], store: ResultStore, out_dir: Path
                 ) -> list[AnalysisResult]:
    """Run the config's analyses (reusing results stored by an earlier run)."""
    results = []
    model_keys = {k: v.key for k, v in exp.classifiers.items()}
    model_keys.update({f"{c}/{p}": v.key for (c, p), v in exp.purifiers.items()})
    for entry in exp.config.analyses:
        key = "analysis:" + stable_hash({"name": entry.name, "params": entry.params,
                                         "models": model_keys, "n": len(exp.test),
                                         "seed": exp.config.seed})
        stored = store.get_meta(key)
        if stored is not None and all((out_dir / f).exists() for f in stored.get("files", [])):
            results.append(AnalysisResult(**stored))
            continue
        fn = ANALYSES.get(entry.name)
        result = fn(exp=exp, rows=rows, out_dir=out_dir, **entry.params)
        store.set_meta(key, asdict(result))
        results.append(result)
    return results
