"""``aepurify evaluate`` and ``aepurify demo``: run a config's grid and print its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import INTERRUPTED, DataDir, Overrides, _overrides, app, console


@app.command()
def evaluate(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML) or a shipped name.")],
    out: Annotated[Path, typer.Option(help="Output directory (an existing run resumes).")],
    n_test: Annotated[Optional[int], typer.Option(help="Number of test images.")] = None,
    data_dir: DataDir = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Model cache folder.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Override the config's device.")] = None,
    set_: Overrides = None,
) -> None:
    """Run a config's grid; write results.db, results.csv, report.md and plots to --out."""
    from ..evaluation import evaluate as run
    from ..evaluation import load_config, print_summary, summary_console
    from ..resources import find_config

    overrides = _overrides(set_)
    if n_test is not None:
        overrides["n_test"] = n_test
    try:
        parsed = load_config(find_config(config), overrides=overrides)
        result = run(parsed, out, data_dir=data_dir, cache_dir=cache_dir, device=device)
    except KeyboardInterrupt:  # here, not in main(): typer turns it into a silent exit 130
        console.print(INTERRUPTED, highlight=False)
        raise typer.Exit(130) from None
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    print_summary(summary_console(), result.summary, result.sanity, result.failed,
                  problems=summary_console(stderr=True))
    console.print(f"report: {out / 'report.md'} (and report.html)\n"
                  f"results: {out / 'results.csv'}, {out / 'summary.csv'}", highlight=False)
    _exit_on_failed_rows(result.failed, out)


def _exit_on_failed_rows(failed: list, out: Path) -> None:
    """After the failed rows were named (they are kept out of the tables): exit 1."""
    if failed:
        console.print(f"{len(failed)} row(s) failed (tracebacks in {out / 'errors.log'}); run the "
                      "same command again to retry them", highlight=False)
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/demo"),
    n_test: Annotated[Optional[int], typer.Option(help="Number of MNIST test images.")] = None,
    data_dir: DataDir = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Model cache folder.")] = None,
    set_: Overrides = None,
) -> None:
    """The main job: train (or reuse) the classifier and every purifier on MNIST with quick
    settings, attack them under each threat model, print the table, write the report."""
    evaluate(Path("demo-mnist"), out, n_test=n_test, data_dir=data_dir, cache_dir=cache_dir,
             device=None, set_=set_)
