"""``evaluate`` under torchrun: the ranks split the grid and rank 0 writes the outputs.

    torchrun --nproc-per-node N -m aepurify evaluate CONFIG --out DIR

1. Rank 0 takes the output folder's lock (the others rely on it) and prepares the experiment
   first, training every model missing from the cache; the others wait, then read the cache.
   So the cache is written by one process, and every rank evaluates the same weights a plain
   run would.
2. Rank 0 merges the rank files a killed run left behind into ``results.db`` and tells every
   rank which rows are finished.
3. Every rank plans the same cells, takes its share (:func:`~.partition.split_cells`: cells
   that share crafted examples stay together, balanced by a cost estimate, expensive first),
   and writes its rows to its own SQLite file ``results-rank<r>.db``, committing each row.
4. After all ranks are done (a barrier), rank 0 merges the rank files into ``results.db`` and
   writes results.csv, the report and run.json exactly as a plain run does.

Each row derives its seeds from its own key (never from the order cells run in), so its value
does not depend on the number of ranks. A killed run loses only the rows in progress: the next
run, with any number of ranks, keeps every row any rank finished and recomputes the rest.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ..distributed import Group, backend_for, process_group
from ..utils import pick_device
from .config import ExperimentConfig
from .experiment import Experiment, prepare, run_record
from .lock import output_lock
from .outputs import (ERRORS_LOG, RESULTS_DB, EvaluationResult, finish_run, pending_rows,
                      write_record)
from .partition import estimated_loads, split_cells
from .run import FailedRow, log_resume, run_cells
from .store import ResultStore, check_results_file, merge_shards, shard_path

RANK_ERRORS = "errors-rank{rank}.log"


def evaluate_sharded(config: ExperimentConfig, out_dir: str | Path, *,
                     data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                     device: str | None = None, argv: list[str] | None = None
                     ) -> EvaluationResult | None:
    """:func:`aepurify.evaluation.evaluate` as one rank of a torchrun run (see the module's
    text for the steps).

    Returns:
        The result on rank 0; None on the other ranks.

    Raises:
        OutputLockedError: another run holds ``out_dir`` (rank 0; the others raise
            RankFailedError).
        ConfigError, DataError, CheckpointError: as in a plain run.
    """
    out = Path(out_dir)
    dev = pick_device(device or config.device)
    with process_group(dev) as group, ExitStack() as held:
        group.on_main(lambda: held.enter_context(output_lock(out)))
        group.on_main(lambda: check_results_file(out / RESULTS_DB))  # before any training
        exp = group.main_first(lambda: prepare(config, out, data_dir=data_dir,
                                               cache_dir=cache_dir, device=device))
        record = run_record(exp, argv)
        record["distributed"] = {"world_size": group.world, "backend": backend_for(dev),
                                 "estimated_load": estimated_loads(exp.cells, group.world)}
        finished = group.broadcast(group.on_main(lambda: _open_run(exp, out, record)))
        mine = split_cells(exp.cells, group.world)[group.rank]
        todo = [c for c in mine if (c.key, c.spec_hash) not in finished]
        with ResultStore(shard_path(out, group.rank)) as shard:
            failed = run_cells(exp.workload, shard, todo,
                               errors_log=out / RANK_ERRORS.format(rank=group.rank))
        done = group.gather((len(todo), failed))  # waits for the slowest rank
        if not group.is_main:
            return None
        record["distributed"]["rows_computed"] = [n for n, _ in done]
        return _close_run(exp, out, record, [f for _, fs in done for f in fs], group)


def _open_run(exp: Experiment, out: Path, record: dict) -> set[tuple]:
    """Rank 0, before the grid: the rank files of a killed run are merged, a resumed run says
    how many rows are finished (as a plain run does), and run.json says running if any row is
    left; returns the finished rows as (key, spec hash) pairs."""
    with ResultStore(out / RESULTS_DB) as store:
        store.set_meta("config", record["config"])
        merge_shards(store, out)
        pending = pending_rows(store, exp.cells)
        finished = {(row.key, row.spec_hash) for row in store.rows()}
    log_resume(len(exp.cells) - pending, len(exp.cells))
    if pending:
        write_record(out, record, "running")
    return finished


def _close_run(exp: Experiment, out: Path, record: dict, failed: list[FailedRow],
               group: Group) -> EvaluationResult:
    """Rank 0, after every rank finished: merge the rows and the error logs, write outputs."""
    with ResultStore(out / RESULTS_DB) as store:
        merge_shards(store, out)
    logs = [out / RANK_ERRORS.format(rank=r) for r in range(group.world)]
    texts = [log.read_text() for log in logs if log.exists()]
    if any(texts):
        with open(out / ERRORS_LOG, "a") as f:
            f.write("".join(texts))
    for log in logs:
        log.unlink(missing_ok=True)
    return finish_run(exp, out, record, failed)
