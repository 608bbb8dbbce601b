"""Evaluation: run a config's grid, keep rows in SQLite, write results.csv, report.md and plots.

    >>> from aepurify.evaluation import evaluate
    >>> result = evaluate("configs/demo-mnist.yaml", "runs/demo", n_test=200)
    >>> result.summary[0].adaptive_robust

Four stages, imports flowing one way (see ``pipeline``): plan the cells (``plan``, ``cells``)
-> run and store rows (``run``, ``store``) -> summarise and check (``summary``, ``sanity``) ->
report (``report``). ``experiment`` turns a config into the run stage's ``Workload``.
"""

from __future__ import annotations

from . import end_to_end  # noqa: F401  (registers the end-to-end analysis)
from . import perturbation_plot  # noqa: F401  (registers the accuracy-vs-perturbation analysis)
from . import s2snet_analyses  # noqa: F401  (registers s2snet-signal-transfer, s2snet-gradients)
from .analyses import ANALYSES, AnalysisResult
from .cells import AttackSpec, Cell, DefenseKeys, order_cells
from .config import AttackEntry, ClassifierEntry, ExperimentConfig, PurifierEntry
from .config_file import load_config, parse_config
from .experiment import Experiment, prepare, run_record
from .pipeline import EvaluationResult, evaluate, run_analyses
from .plan import Plan, plan_grid
from .report import print_summary, summary_console, write_report
from .run import FailedRow, Workload, finished_rows, run_cells
from .sanity import SanityResult, run_checks
from .store import COLUMNS, ResultRow, ResultStore
from .summary import SummaryRow, summarize

__all__ = ["evaluate", "EvaluationResult", "load_config", "ExperimentConfig",
           "ClassifierEntry", "PurifierEntry", "AttackEntry", "parse_config",
           "Experiment", "prepare", "run_record", "Plan", "plan_grid", "Cell",
           "AttackSpec", "DefenseKeys", "order_cells", "Workload", "FailedRow",
           "run_cells", "finished_rows", "ResultRow", "ResultStore", "COLUMNS",
           "SummaryRow", "summarize", "SanityResult", "run_checks", "write_report",
           "print_summary", "summary_console", "ANALYSES", "AnalysisResult",
           "run_analyses"]
