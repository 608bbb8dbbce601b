"""The last stages of ``evaluate``, after the rows are in ``results.db``: the analyses, the
example figures, the summary and checks, the report and the run record. A plain run and rank 0
of a distributed run (after it merged the ranks' rows) finish the same way, through
:func:`finish_run`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils import stable_hash
from .analyses import ANALYSES, AnalysisResult
from .cells import Cell
from .examples import example_figures
from .experiment import Experiment
from .report import write_report
from .run import FailedRow, finished_rows
from .sanity import SanityResult, run_checks
from .store import ResultRow, ResultStore
from .summary import SummaryRow, summarize

RESULTS_DB = "results.db"
ERRORS_LOG = "errors.log"


@dataclass
class EvaluationResult:
    """What a run found, as written into its output folder.

    Attributes:
        out_dir: the output folder.
        rows: the finished rows, in plan order (results.csv).
        summary: the adaptive protocol, per (classifier, purifier, norm, eps) (summary.csv).
        sanity: the gradient-masking checks (sanity.csv).
        failed: rows that raised in this run (not stored; a rerun retries them).
        record: the run record (run.json).
        analyses: the analyses' report sections.
    """

    out_dir: Path
    rows: list[ResultRow]
    summary: list[SummaryRow]
    sanity: list[SanityResult]
    failed: list[FailedRow]
    record: dict[str, Any]
    analyses: list[AnalysisResult] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[SanityResult]:
        """The sanity checks that failed."""
        return [r for r in self.sanity if r.passed is False]


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


def write_record(out: Path, record: dict[str, Any], status: str) -> None:
    """``run.json``: the run record with its status (running, finished, ...)."""
    (out / "run.json").write_text(json.dumps({**record, "status": status}, indent=2,
                                             default=str) + "\n")


def pending_rows(store: ResultStore, cells: list[Cell]) -> int:
    """How many of ``cells`` ``store`` does not hold finished with the same spec."""
    return sum(not store.has(c.key, c.spec_hash) for c in cells)


@contextmanager
def recorded_status(out: Path, record: dict[str, Any], pending: int) -> Iterator[None]:
    """``run.json`` while rows are computed: ``running`` once there is a row to compute (a
    finished run's record stays as it is until then: a rerun with nothing to do, or one that
    fails before its first row, does not overwrite it), ``interrupted`` on Ctrl-C."""
    if pending:
        write_record(out, record, "running")
    try:
        yield
    except KeyboardInterrupt:
        if pending:
            write_record(out, record, "interrupted")
        raise


def finish_run(exp: Experiment, out: Path, record: dict[str, Any], failed: list[FailedRow]
               ) -> EvaluationResult:
    """From the rows in ``out/results.db`` to every output: analyses, example figures, summary,
    sanity checks, report files and the finished ``run.json``."""
    with ResultStore(out / RESULTS_DB) as store:
        rows = finished_rows(store, exp.cells)
        analyses = run_analyses(exp, rows, store, out)
        examples = example_figures(exp.workload, rows, store, out)
    record["failed"] = [asdict(f) for f in failed]
    summary = summarize(rows)
    sanity = run_checks(rows, exp.config.sanity, exp.workload.stochastic())
    write_report(out, rows, record, summary=summary, sanity=sanity, analyses=analyses,
                 examples=examples)
    record["analyses"] = {a.title: a.data for a in analyses}
    record["sanity_failed"] = [f"{r.check}: {r.purifier}" for r in sanity if r.unexplained]
    record["sanity_findings"] = [f"{r.check}: {r.purifier}: {r.finding}" for r in sanity
                                 if r.passed is False and r.finding]
    write_record(out, record, f"finished, {len(failed)} row(s) failed" if failed else "finished")
    return EvaluationResult(out, rows, summary, sanity, failed, record, analyses)
