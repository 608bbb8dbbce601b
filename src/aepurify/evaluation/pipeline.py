"""``evaluate``: a config through the four stages, plan the cells -> run and store rows ->
summarise and check -> report.

    prepare(config)            experiment.py   registry names -> models, images, planned cells
    run_cells(workload, store) run.py          cells -> rows in results.db (resumable)
    summarize(rows)            summary.py      rows -> per-example worst cases
    run_checks(rows, ...)      sanity.py       rows -> gradient-masking checks
    write_report(out, rows, record, ...)       report/ -> csv, png, report.md, report.html

Only the first stage reads the config's registry names; the others see a
:class:`~aepurify.evaluation.run.Workload`, rows and a record dict, so other front ends (an
audit of in-memory modules, a distributed run) reuse them as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils import stable_hash
from .analyses import ANALYSES, AnalysisResult
from .config import ExperimentConfig
from .config_file import load_config
from .examples import example_figures
from .lock import holds_output_lock
from .experiment import Experiment, prepare, run_record
from .report import write_report
from .run import FailedRow, finished_rows, run_cells
from .sanity import SanityResult, run_checks
from .store import ResultRow, ResultStore
from .summary import SummaryRow, summarize


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


def _write_record(out: Path, record: dict[str, Any], status: str) -> None:
    (out / "run.json").write_text(json.dumps({**record, "status": status}, indent=2,
                                             default=str) + "\n")


@holds_output_lock("out_dir")  # one run per output folder
def evaluate(config: str | Path | ExperimentConfig, out_dir: str | Path, *,
             n_test: int | None = None, data_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, device: str | None = None,
             argv: list[str] | None = None) -> EvaluationResult:
    """Run an experiment config end to end and write its outputs into ``out_dir``.

    Outputs: ``results.db`` (resumable store), ``results.csv``, ``summary.csv`` (adaptive
    protocol), ``sanity.csv`` (gradient-masking checks), ``report.md``, ``report.html``
    (self-contained), ``headline.png``, ``accuracy-<threat model>.png``, ``examples-*.png``,
    the analyses' files and ``run.json`` (seed, config, code version, models).

    Args:
        config: YAML path or a parsed config.
        out_dir: output folder (created; an existing results.db is resumed).
        n_test: override the config's number of test images.
        data_dir: folder with the data files.
        cache_dir: model cache folder.
        device: override the config's device.
        argv: command line to record (default sys.argv).

    Returns:
        The rows, summary, sanity checks and failed rows of this config.

    Raises:
        ConfigError, DataError, CheckpointError: bad input, reported in one line.
        OutputLockedError: another run is writing to ``out_dir``.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides={} if n_test is None else {"n_test": n_test})
    elif n_test is not None:
        config = config.model_copy(update={"n_test": n_test})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exp = prepare(config, out, data_dir=data_dir, cache_dir=cache_dir, device=device)
    record = run_record(exp, argv)
    _write_record(out, record, "running")
    with ResultStore(out / "results.db") as store:
        store.set_meta("config", record["config"])
        failed = run_cells(exp.workload, store, errors_log=out / "errors.log")
        rows = finished_rows(store, exp.cells)
        analyses = run_analyses(exp, rows, store, out)
        examples = example_figures(exp.workload, rows, store, out)
    record["failed"] = [asdict(f) for f in failed]
    summary = summarize(rows)
    sanity = run_checks(rows, config.sanity, exp.workload.stochastic())
    write_report(out, rows, record, summary=summary, sanity=sanity, analyses=analyses,
                 examples=examples)
    record["analyses"] = {a.title: a.data for a in analyses}
    record["sanity_failed"] = [f"{r.check}: {r.purifier}" for r in sanity if r.passed is False]
    _write_record(out, record, f"finished, {len(failed)} row(s) failed" if failed else "finished")
    return EvaluationResult(out, rows, summary, sanity, failed, record, analyses)
