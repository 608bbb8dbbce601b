"""Evaluation: run a config's grid, keep rows in SQLite, write results.csv, report.md and plots.

    >>> from aepurify.evaluation import evaluate
    >>> rows = evaluate("configs/demo-mnist.yaml", "runs/demo", n_test=200)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import s2snet_analyses  # noqa: F401  (registers s2snet-signal-transfer, s2snet-gradients)
from .analyses import ANALYSES, AnalysisResult, run_analyses
from .config import AttackEntry, ClassifierEntry, ExperimentConfig, PurifierEntry, load_config
from .report import console_table, plot_threat_models, write_csv, write_markdown
from .runner import Experiment, planned_rows, prepare, run_cells, run_record
from .store import COLUMNS, ResultRow, ResultStore

__all__ = ["evaluate", "load_config", "ExperimentConfig", "ClassifierEntry", "PurifierEntry",
           "AttackEntry", "ResultRow", "ResultStore", "COLUMNS", "write_outputs", "Experiment",
           "ANALYSES", "AnalysisResult", "console_table"]


def evaluate(config: str | Path | ExperimentConfig, out_dir: str | Path, *,
             n_test: int | None = None, data_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, device: str | None = None,
             argv: list[str] | None = None) -> list[ResultRow]:
    """Run an experiment config end to end and write its outputs into ``out_dir``.

    Outputs: ``results.db`` (resumable store), ``results.csv``, ``report.md``,
    ``accuracy-<threat model>.png``, the analyses' files and ``run.json`` (seed, config, code
    version, models).

    Args:
        config: YAML path or a parsed config.
        out_dir: output folder (created; an existing results.db is resumed).
        n_test: override the config's number of test images.
        data_dir: folder with the data files.
        cache_dir: model cache folder.
        device: override the config's device.
        argv: command line to record (default sys.argv).

    Returns:
        The finished rows of this config, in plan order.

    Raises:
        ConfigError, DataError, CheckpointError: bad input, reported in one line.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, overrides={"n_test": n_test})
    elif n_test is not None:
        config = config.model_copy(update={"n_test": n_test})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exp = prepare(config, out, data_dir=data_dir, cache_dir=cache_dir, device=device)
    record = run_record(exp, argv)
    (out / "run.json").write_text(json.dumps({**record, "status": "running"}, indent=2,
                                             default=str) + "\n")
    with ResultStore(out / "results.db") as store:
        store.set_meta("config", record["config"])
        run_cells(exp, store)
        rows = planned_rows(exp, store)
        analyses = run_analyses(exp, rows, store, out)
    write_outputs(rows, record, out, analyses)
    record["analyses"] = {a.title: a.data for a in analyses}
    (out / "run.json").write_text(json.dumps({**record, "status": "finished"}, indent=2,
                                             default=str) + "\n")
    return rows


def write_outputs(rows: list[ResultRow], record: dict[str, Any], out: Path,
                  analyses: list[AnalysisResult] | None = None) -> None:
    """results.csv, the plots and report.md from finished rows."""
    write_csv(rows, out / "results.csv")
    plots = plot_threat_models(rows, out)
    write_markdown(rows, record, out / "report.md", plots, analyses)
