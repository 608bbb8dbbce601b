"""Evaluation: run a config's grid, keep rows in SQLite, write results.csv, report.md and plots.

    >>> from aepurify.evaluation import evaluate
    >>> rows = evaluate("configs/demo-mnist.yaml", "runs/demo", n_test=200)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import end_to_end  # noqa: F401  (registers the end-to-end analysis)
from . import s2snet_analyses  # noqa: F401  (registers s2snet-signal-transfer, s2snet-gradients)
from . import perturbation_plot  # noqa: F401  (registers the accuracy-vs-perturbation analysis)
from .analyses import ANALYSES, AnalysisResult, run_analyses
from .config import AttackEntry, ClassifierEntry, ExperimentConfig, PurifierEntry, load_config
from .examples import example_figures
from .html import write_html
from .report import console_table, plot_threat_models, write_csv, write_markdown
from .runner import Experiment, planned_rows, prepare, run_cells, run_record
from .sanity import SanityResult, run_checks, write_sanity_csv
from .store import COLUMNS, ResultRow, ResultStore
from .summary import SummaryRow, summarize, write_summary_csv

__all__ = ["evaluate", "load_config", "ExperimentConfig", "ClassifierEntry", "PurifierEntry",
           "AttackEntry", "ResultRow", "ResultStore", "COLUMNS", "write_outputs", "Experiment",
           "ANALYSES", "AnalysisResult", "console_table", "SummaryRow", "SanityResult", "summarize",
           "run_checks"]


def evaluate(config: str | Path | ExperimentConfig, out_dir: str | Path, *,
             n_test: int | None = None, data_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, device: str | None = None,
             argv: list[str] | None = None) -> list[ResultRow]:
    """Run an experiment config end to end and write its outputs into ``out_dir``.

    Outputs: ``results.db`` (resumable store), ``results.csv``, ``summary.csv`` (adaptive
    protocol), ``sanity.csv`` (gradient-masking checks), ``report.md``, ``report.html``
    (self-contained), ``accuracy-<threat model>.png``, ``examples-*.png``, the analyses' files
    and ``run.json`` (seed, config, code version, models).

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
        config = load_config(config, overrides={} if n_test is None else {"n_test": n_test})
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
        examples = example_figures(exp, rows, store, out)
    record["failed"] = exp.failed
    stochastic = {label: bool(t.module.stochastic) for (_, label), t in exp.purifiers.items()}
    summary = summarize(rows)
    sanity = run_checks(rows, exp.config, stochastic)
    write_outputs(rows, record, out, analyses, summary, sanity, examples)
    record["analyses"] = {a.title: a.data for a in analyses}
    record["sanity_failed"] = [f"{r.check}: {r.purifier}" for r in sanity if r.passed is False]
    status = f"finished, {len(exp.failed)} row(s) failed" if exp.failed else "finished"
    (out / "run.json").write_text(json.dumps({**record, "status": status}, indent=2,
                                             default=str) + "\n")
    return rows


def write_outputs(rows: list[ResultRow], record: dict[str, Any], out: Path,
                  analyses: list[AnalysisResult] | None = None,
                  summary: list[SummaryRow] | None = None,
                  sanity: list[SanityResult] | None = None,
                  examples: list[tuple[str, str]] | None = None) -> None:
    """results.csv, summary.csv, sanity.csv, the plots, report.md and report.html."""
    write_csv(rows, out / "results.csv")
    write_summary_csv(summary if summary is not None else summarize(rows), out / "summary.csv")
    write_sanity_csv(sanity or [], out / "sanity.csv")
    plots = plot_threat_models(rows, out)
    write_markdown(rows, record, out / "report.md", plots, analyses, summary, sanity, examples)
    write_html(out / "report.md", out / "report.html",
               f"aepurify report: {record.get('config', {}).get('name', 'experiment')}")
