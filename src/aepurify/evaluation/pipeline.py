"""``evaluate``: a config through the four stages, plan the cells -> run and store rows ->
summarise and check -> report.

    prepare(config)            experiment.py   registry names -> models, images, planned cells
    run_cells(workload, store) run.py          cells -> rows in results.db (resumable)
    summarize(rows)            summary.py      rows -> per-example worst cases
    run_checks(rows, ...)      sanity.py       rows -> gradient-masking checks
    write_report(out, rows, record, ...)       report/ -> csv, png, report.md, report.html

``outputs.finish_run`` chains the last three; under torchrun ``sharded.evaluate_sharded`` runs
the same stages with the cells split among the ranks (docs/scale.md).

Only the first stage reads the config's registry names; the others see a
:class:`~aepurify.evaluation.run.Workload`, rows and a record dict, so other front ends (an
audit of in-memory modules, a distributed run) reuse them as they are.
"""

from __future__ import annotations

from pathlib import Path

from ..distributed import launched
from .config import ExperimentConfig
from .config_file import load_config
from .experiment import prepare, run_record
from .lock import holds_output_lock
from .outputs import (ERRORS_LOG, RESULTS_DB, EvaluationResult, finish_run, pending_rows,
                      recorded_status, run_analyses)
from .run import run_cells
from .sharded import evaluate_sharded
from .store import ResultStore, check_results_file, merge_shards

__all__ = ["evaluate", "EvaluationResult", "run_analyses"]


def evaluate(config: str | Path | ExperimentConfig, out_dir: str | Path, *,
             n_test: int | None = None, data_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, device: str | None = None,
             argv: list[str] | None = None) -> EvaluationResult | None:
    """Run an experiment config end to end and write its outputs into ``out_dir``.

    Outputs: ``results.db`` (resumable store), ``results.csv``, ``summary.csv`` (adaptive
    protocol), ``sanity.csv`` (gradient-masking checks), ``report.md``, ``report.html``
    (self-contained), ``headline.png``, ``accuracy-<threat model>.png``, ``examples-*.png``,
    the analyses' files and ``run.json`` (seed, config, code version, models).

    Started by ``torchrun`` with several processes, the ranks split the cells and rank 0 writes
    the outputs (:func:`aepurify.evaluation.sharded.evaluate_sharded`); the rows are the same
    as a plain run's.

    Args:
        config: YAML path or a parsed config.
        out_dir: output folder (created; an existing results.db is resumed).
        n_test: override the config's number of test images.
        data_dir: folder with the data files.
        cache_dir: model cache folder.
        device: override the config's device.
        argv: command line to record (default sys.argv).

    Returns:
        The rows, summary, sanity checks and failed rows of this config; None on the ranks
        other than 0 of a distributed run.

    Raises:
        ConfigError, DataError, CheckpointError: bad input, reported in one line.
        OutputLockedError: another run is writing to ``out_dir``.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides={} if n_test is None else {"n_test": n_test})
    elif n_test is not None:
        config = config.model_copy(update={"n_test": n_test})
    options = {"data_dir": data_dir, "cache_dir": cache_dir, "device": device, "argv": argv}
    if launched():
        return evaluate_sharded(config, out_dir, **options)
    return _evaluate_here(config, out_dir, **options)


@holds_output_lock("out_dir")  # one run per output folder
def _evaluate_here(config: ExperimentConfig, out_dir: str | Path, *,
                   data_dir: str | Path | None, cache_dir: str | Path | None,
                   device: str | None, argv: list[str] | None) -> EvaluationResult:
    """:func:`evaluate` in this one process."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_results_file(out / RESULTS_DB)  # a corrupt file is refused before any training
    exp = prepare(config, out, data_dir=data_dir, cache_dir=cache_dir, device=device)
    record = run_record(exp, argv)
    with ResultStore(out / RESULTS_DB) as store:
        store.set_meta("config", record["config"])
        merge_shards(store, out)  # rows a killed distributed run left in its ranks' files
        with recorded_status(out, record, pending_rows(store, exp.cells)):
            failed = run_cells(exp.workload, store, errors_log=out / ERRORS_LOG)
    return finish_run(exp, out, record, failed)
