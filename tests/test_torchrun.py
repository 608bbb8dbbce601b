"""`aepurify evaluate` and `aepurify train` under torchrun: 2 CPU processes (gloo) started by
the test, against the same commands in one process.

- the grid's results.csv is identical in every column but ``seconds``; the models the
  distributed run needed were trained once (by rank 0) into the shared cache;
- a rank killed mid-grid loses none of its finished rows, and a rerun completes the grid;
- DDP training on 2 ranks gives the weights of one process on the same global batches.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

# A small grid: a LeNet and a MagNet trained on first use, bit-depth, FGSM at two budgets and a
# 5-step PGD under gray-box (crafted once, shared by the purifiers), white-box and bpda.
GRID = {"name": "tiny", "dataset": "mnist", "n_test": 40, "batch_size": 20,
        "classifier": {"arch": "lenet", "train": {"epochs": 1, "max_images": 500}},
        "purifiers": [{"name": "magnet", "train": {"epochs": 1, "max_images": 300}},
                      {"name": "bit-depth", "params": {"bits": 1}}],
        "threat_models": ["gray-box", "white-box", "bpda"],
        "attacks": [{"name": "fgsm", "eps": [0.1, 0.3]},
                    {"name": "pgd", "eps": [0.2], "params": {"steps": 5}}]}
ROWS = 21

# Rank 1 dies right after committing its second row (the way a killed process leaves it).
DYING_RANK = """
import os, sys
from aepurify.evaluation import store
if os.environ["RANK"] == "1":
    put, done = store.ResultStore.put, []
    def dying_put(self, row):
        put(self, row)
        done.append(row.key)
        if len(done) == 2:
            os._exit(17)
    store.ResultStore.put = dying_put
from aepurify.cli import main
main(sys.argv[1:])
"""


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "AEPURIFY_PROGRESS": "0", "AEPURIFY_OFFLINE": "1",
            "AEPURIFY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], cache: Path, ranks: int = 1) -> subprocess.CompletedProcess:
    """``python -m aepurify ARGS``, or the same under torchrun with ``ranks`` processes (a
    ``.py`` first argument: that script instead of the module)."""
    if ranks == 1:
        cmd = [sys.executable, "-m", "aepurify", *args]
    else:
        target = args if args[0].endswith(".py") else ["-m", "aepurify", *args]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", *target]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(cache), timeout=600)


def _csv_without_seconds(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        del row["seconds"]
    return rows


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict[str, Path]:
    """The grid run by 2 ranks on an empty cache (rank 0 trains), then by one process."""
    root = tmp_path_factory.mktemp("torchrun")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(GRID))
    cache = root / "cache"
    two = _run(["evaluate", str(config), "--out", str(root / "two")], cache, ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run(["evaluate", str(config), "--out", str(root / "one")], cache)
    assert one.returncode == 0, one.stderr[-3000:]
    return {"root": root, "config": config, "cache": cache, "one": root / "one",
            "two": root / "two", "two_log": two.stderr}


@pytest.mark.slow
def test_two_ranks_give_the_one_process_results(grid):
    one = _csv_without_seconds(grid["one"] / "results.csv")
    two = _csv_without_seconds(grid["two"] / "results.csv")
    assert len(one) == ROWS
    assert two == one
    assert (grid["two"] / "summary.csv").read_text() == (grid["one"] / "summary.csv").read_text()
    # one results.db, no rank files left; both ranks computed rows
    assert sorted(p.name for p in grid["two"].glob("*.db")) == ["results.db"]
    record = json.loads((grid["two"] / "run.json").read_text())
    assert record["distributed"]["world_size"] == 2
    assert sum(record["distributed"]["rows_computed"]) == ROWS
    assert min(record["distributed"]["rows_computed"]) > 0
    # the models were trained once, by rank 0; rank 1 read them from the cache
    models = sorted(p.name.split("-")[0] for p in (grid["cache"] / "models").iterdir())
    assert models == ["classifier", "purifier"]
    assert grid["two_log"].count("training classifier lenet") == 1
    assert grid["two_log"].count("reusing cached model") == 2  # rank 1: lenet and magnet


@pytest.mark.slow
def test_a_killed_rank_loses_no_finished_rows_and_a_rerun_completes(grid, tmp_path):
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK)
    out = tmp_path / "run"
    args = ["evaluate", str(grid["config"]), "--out", str(out)]
    killed = _run([str(script), *args], grid["cache"], ranks=2)
    assert killed.returncode != 0
    with sqlite3.connect(out / "results-rank1.db") as db:
        kept = dict(db.execute("SELECT purifier || threat_model || attack || eps, seconds "
                               "FROM results").fetchall())
    assert len(kept) == 2  # both rows rank 1 committed before it died
    rerun = _run(args, grid["cache"], ranks=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"of {ROWS} rows already finished" in rerun.stderr  # "resuming: k of n", as one process
    assert _csv_without_seconds(out / "results.csv") == \
        _csv_without_seconds(grid["one"] / "results.csv")
    with sqlite3.connect(out / "results.db") as db:
        after = dict(db.execute("SELECT purifier || threat_model || attack || eps, seconds "
                                "FROM results").fetchall())
    assert {k: after[k] for k in kept} == kept  # kept as they were, not computed again
    assert not list(out.glob("results-rank*.db"))


@pytest.mark.slow
def test_ddp_training_on_two_ranks_matches_one_process(tmp_path, mnist_train):
    from aepurify.models import create_classifier
    from aepurify.training import TrainSettings, fit_classifier
    from aepurify.utils import seed_everything, training_numerics

    # 249 images in batches of 64: the last batch (57) splits unevenly, 29 and 28; augmented
    two = _run(["train", "classifier", "--dataset", "mnist", "--arch", "lenet", "--epochs", "1",
                "--max-images", "249", "--batch-size", "64", "--augment", "--out",
                str(tmp_path / "two")], tmp_path / "cache", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("saved to") == 1  # rank 0 alone wrote and reported it
    # the same training in this one process, as `aepurify train classifier` does it
    settings = TrainSettings(epochs=1, max_images=249, batch_size=64, augment=True)
    with training_numerics("cpu"):
        seed_everything(0)
        model = create_classifier("lenet", "mnist")
        metrics = fit_classifier(model, mnist_train, settings)
    one = model.state_dict()
    ddp = load_file(tmp_path / "two" / "model.safetensors")
    assert ddp.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=0, atol=1e-4)
    recorded = json.loads((tmp_path / "two" / "config.json").read_text())
    assert recorded["metrics"]["steps"] == metrics["steps"] == 4
    assert recorded["metrics"]["final_loss"] == pytest.approx(metrics["final_loss"], abs=1e-4)
    assert recorded["environment"]["data_parallel_ranks"] == 2
