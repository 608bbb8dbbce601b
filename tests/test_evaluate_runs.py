"""Runs of `aepurify evaluate` on one output folder: a second run is refused while the first
holds the folder's lock, Ctrl-C says how to resume and exits 130, a dead run's lock is taken
over, and the classifier's recorded test accuracy covers the whole test split."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aepurify.errors import OutputLockedError
from aepurify.evaluation.lock import LOCK_NAME, output_lock

from .test_cli import assert_one_line_error, run_cli

# The clean row is finished at once; the PGD rows after it take long enough to interrupt.
SLOW = {"dataset": "mnist", "n_test": 50,
        "classifier": {"arch": "lenet", "train": {"epochs": 1, "max_images": 500}},
        "attacks": [{"name": "pgd", "eps": [0.05, 0.1, 0.15], "params": {"steps": 20}}]}
ROWS = 4  # clean + three budgets


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One model cache for this module: the LeNet of SLOW trains once."""
    return tmp_path_factory.mktemp("models")


def _start(config: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "AEPURIFY_PROGRESS": "0", "AEPURIFY_OFFLINE": "1",
           "AEPURIFY_CACHE": str(cache)}
    # SIGINT back to its default in the child: a test session started in the background by a
    # non-interactive shell ignores SIGINT, children inherit that, and Python then never raises
    # KeyboardInterrupt, so the Ctrl-C test would see a run that cannot be interrupted.
    return subprocess.Popen([sys.executable, "-m", "aepurify.cli", "evaluate", str(config),
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finished_rows(out: Path) -> int:
    try:
        with sqlite3.connect(out / "results.db", timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_refused_ctrl_c_resumable(tmp_path, cache):
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(SLOW))
    out = tmp_path / "run"
    first = _start(config, out, cache)
    try:
        _wait_for(lambda: (out / LOCK_NAME).exists(), first)  # taken before training starts
        second = run_cli("evaluate", str(config), "--out", str(out))
        assert_one_line_error(second, f"pid {first.pid} on host", "is writing to", str(out))
        _wait_for(lambda: _finished_rows(out) >= 1, first)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == ("interrupted: finished rows are kept in "
                                               "results.db; run again to resume")
    kept = _finished_rows(out)
    assert 1 <= kept < ROWS
    assert not (out / LOCK_NAME).exists()  # released on the way out

    resumed = _start(config, out, cache)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resuming: {kept} of {ROWS} rows already finished" in stderr
    assert _finished_rows(out) == ROWS


def test_lock_of_a_dead_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from aepurify.evaluation.lock import output_lock\n"
         f"with output_lock({str(out)!r}):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid} on host"):
            with output_lock(out):
                pass
    finally:
        holder.kill()  # dies holding the lock: the file stays behind
        holder.wait()
    assert (out / LOCK_NAME).exists()
    with output_lock(out) as path:
        assert path.read_text().splitlines()[0] == str(os.getpid())
    assert not (out / LOCK_NAME).exists()


def test_recorded_test_accuracy_covers_the_whole_split(tmp_path, cache, mnist_test):
    from aepurify.evaluation import evaluate

    config = {**SLOW, "n_test": 20, "attacks": []}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    evaluate(path, tmp_path / "run", cache_dir=cache / "models")  # AEPURIFY_CACHE's layout
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    metrics = record["models"]["classifier:lenet"]["metrics"]
    assert record["test_images"] == 20
    assert metrics["test_images"] == len(mnist_test) == 10_000
    from aepurify.models import load_classifier
    from aepurify.training import accuracy

    model, _ = load_classifier(record["models"]["classifier:lenet"]["path"])
    assert metrics["test_accuracy"] == accuracy(model, mnist_test)
