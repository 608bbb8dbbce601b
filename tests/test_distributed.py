"""The pieces of a distributed run that need no second process: how cells are split among
ranks, how a batch is split for data-parallel training, how rank files merge, the backend and
the rank's device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aepurify.attacks import ThreatModel
from aepurify.distributed import backend_for, launched
from aepurify.evaluation.cells import AttackSpec, DefenseKeys, order_cells
from aepurify.evaluation.partition import craft_cost, split_cells, unit_cost, unit_key, units_of
from aepurify.evaluation.store import ResultRow, ResultStore, merge_shards, shard_path
from aepurify.training.data_parallel import DataParallel
from aepurify.utils import pick_device

PURIFIERS = ("none", "magnet", "jpeg", "vae")


def _grid():
    """A grid like the demo's: clean rows, gray-box FGSM and PGD shared by four purifiers,
    white-box PGD per purifier (EOT for the random one), transfer PGD shared by two."""
    fgsm = AttackSpec("fgsm", "fgsm", "linf", {}, 1, 0)
    pgd = AttackSpec("pgd", "pgd", "linf", {"steps": 20}, 1, 1)
    cells = []
    for label in PURIFIERS:
        keys = DefenseKeys("mnist", 0, "lenet", "k-lenet", label, f"k-{label}")
        cells.append(keys.clean_cell(100))
        for eps in (0.1, 0.2, 0.3):
            cells.append(keys.attack_cell(ThreatModel("gray-box"), fgsm, eps, 100))
            cells.append(keys.attack_cell(ThreatModel("gray-box"), pgd, eps, 100))
            if label != "none":
                tm = ThreatModel("white-box", eot=label == "vae", eot_samples=8)
                cells.append(keys.attack_cell(tm, pgd, eps, 50))
            if label in ("none", "magnet"):
                cells.append(keys.attack_cell(ThreatModel("transfer"), pgd, eps, 100,
                                              source_key="k-src"))
    return order_cells(cells)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_split_covers_every_cell_once_and_is_deterministic(world):
    cells = _grid()
    shares = split_cells(cells, world)
    assert len(shares) == world
    keys = [c.key for share in shares for c in share]
    assert sorted(keys) == sorted(c.key for c in cells)  # each cell exactly once
    assert [[c.key for c in s] for s in split_cells(_grid(), world)] == \
           [[c.key for c in s] for s in shares]


def test_cells_sharing_crafted_examples_stay_on_one_rank():
    cells = _grid()
    shares = split_cells(cells, 3)
    rank_of = {c.key: r for r, share in enumerate(shares) for c in share}
    units = units_of(cells)
    shared = [u for u in units if len(u) > 1]
    # gray-box FGSM/PGD at 3 budgets (4 purifiers each), transfer PGD at 3 (2 purifiers each)
    assert sorted(len(u) for u in shared) == [2] * 3 + [4] * 6
    for unit in shared:
        assert len({rank_of[c.key] for c in unit}) == 1
        # consecutive in the rank's run order, so run.py crafts once and reuses
        order = [c.key for c in shares[rank_of[unit[0].key]]]
        positions = sorted(order.index(c.key) for c in unit)
        assert positions == list(range(positions[0], positions[0] + len(unit)))


def test_split_balances_the_estimate_and_starts_with_expensive_cells():
    cells = _grid()
    shares = split_cells(cells, 2)
    loads = [sum(unit_cost(u) for u in units_of(s)) for s in shares]
    biggest = max(unit_cost(u) for u in units_of(cells))
    assert abs(loads[0] - loads[1]) <= biggest  # greedy LPT bound
    for share in shares:
        costs = [unit_cost(u) for u in units_of(share)]
        assert costs == sorted(costs, reverse=True)
    # the EOT white-box cell of the random purifier is the most expensive unit: it goes first
    first = shares[0][0]
    assert first.purifier == "vae" and first.threat_model.eot


def test_cost_estimate_counts_steps_eot_and_the_purifier():
    cells = {(c.purifier, c.threat_model.name if c.threat_model else "clean",
              c.attack.label if c.attack else "", c.eps): c for c in _grid()}
    gray_pgd = cells[("magnet", "gray-box", "pgd", 0.1)]
    gray_fgsm = cells[("magnet", "gray-box", "fgsm", 0.1)]
    white = cells[("magnet", "white-box", "pgd", 0.1)]
    eot = cells[("vae", "white-box+eot", "pgd", 0.1)]
    assert craft_cost(cells[("magnet", "clean", "", 0.0)]) == 0
    assert craft_cost(gray_pgd) == 20 * craft_cost(gray_fgsm)
    assert craft_cost(white) == craft_cost(gray_pgd) * 2 * 50 / 100  # purifier, half the images
    assert craft_cost(eot) == craft_cost(white) * 8
    assert unit_key(gray_pgd) == unit_key(cells[("jpeg", "gray-box", "pgd", 0.1)])
    assert unit_key(white) != unit_key(cells[("jpeg", "white-box", "pgd", 0.1)])


@pytest.mark.parametrize("n,world", [(64, 2), (57, 2), (10, 3), (1, 2), (5, 4)])
def test_a_batch_is_shared_without_gaps_and_weighted_to_the_global_mean(n, world):
    parts = [DataParallel(r, world).share(n) for r in range(world)]
    covered = [i for sl, w in parts if w > 0 for i in range(n)[sl]]
    assert covered == list(range(n))
    # sum over ranks of weight * mean(rank's losses) / world == mean over the batch
    losses = np.arange(1.0, n + 1)
    total = sum(w * losses[sl].mean() for sl, w in parts) / world
    assert total == pytest.approx(losses.mean())


def _rows(store: ResultStore, purifiers: list[str], seconds: float) -> None:
    for p in purifiers:
        store.put(ResultRow("mnist", "lenet", p, "none", "none", "none", 0.0, 4, 0.5, seconds,
                            np.array([1, 0, 1, 0], bool), spec_hash=f"h-{p}"))
        store.put_examples(("mnist", "lenet", p, "none", "none", "none", 0.0),
                           np.zeros((1, 1, 2, 2), np.float32))


def test_rank_files_merge_into_results_db_and_go(tmp_path):
    with ResultStore(tmp_path / "results.db") as main:
        _rows(main, ["none", "jpeg"], 1.0)
        for rank, purifiers in enumerate([["jpeg", "magnet"], ["vae"]]):
            with ResultStore(shard_path(tmp_path, rank)) as shard:
                _rows(shard, purifiers, 2.0)
        shard_path(tmp_path, 2).touch()  # a rank killed before it made its tables
        assert merge_shards(main, tmp_path) == 3
        rows = {r.purifier: r for r in main.rows()}
        assert sorted(rows) == ["jpeg", "magnet", "none", "vae"]
        assert rows["jpeg"].seconds == 2.0 and rows["none"].seconds == 1.0  # newer rows win
        assert rows["vae"].correct.tolist() == [True, False, True, False]
        assert main.examples(rows["magnet"].key).shape == (1, 1, 2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]


def test_backend_and_device_of_a_rank(monkeypatch):
    assert backend_for("cpu") == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched()
    if torch.cuda.device_count() >= 2:
        assert pick_device("auto") == torch.device("cuda", 1)
    else:
        assert pick_device("cpu") == torch.device("cpu")
        if not torch.cuda.is_available():
            assert pick_device("auto") == torch.device("cpu")


def _agree_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        dp = DataParallel(rank, 2)
        results = [dp.all_agree(True, torch.device("cpu")),
                   dp.all_agree(rank == 0, torch.device("cpu"))]
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_a_choice_only_when_every_rank_makes_it(tmp_path):
    """The choice to keep training images on the GPU depends on each GPU's free memory; under
    DDP the ranks take it together, since it decides where the augmentation draws come from."""
    import torch.multiprocessing as mp

    mp.spawn(_agree_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [True, False]
