"""The evaluation grid in one process and under torchrun, side by side in one run: wall time of
each, the speed-up, and whether results.csv is identical in every column but ``seconds``.

    python benchmarks/torchrun_grid.py [--config demo-mnist] [--n-test 200] [--ranks 2]
        [--threads 1] [--out DIR]

First the models are trained into the model cache (``AEPURIFY_CACHE``, else a temporary one) by
``aepurify evaluate CONFIG --n-test 1``, so neither timed run trains. Then, back to back:

    OMP_NUM_THREADS=<ranks * threads> python -m aepurify evaluate CONFIG --n-test N --out DIR/one
    OMP_NUM_THREADS=<threads> torchrun --standalone --nproc-per-node <ranks> \\
        -m aepurify evaluate CONFIG --n-test N --out DIR/ranks<ranks>

so both runs use the same number of cores' worth of threads (one process with ranks * threads
intra-op threads against ranks processes with threads each). Exits 1 if the CSVs differ.
On a shared machine, wrap it in ``flock /tmp/aepurify-heavy.lock`` and say whether others ran.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], threads: int) -> float:
    """Run ``cmd`` with ``threads`` intra-op threads per process; its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "AEPURIFY_PROGRESS": "0"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def rows_without_seconds(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("seconds")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo-mnist")
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="aepurify-torchrun-"))
    os.environ.setdefault("AEPURIFY_CACHE", str(out / "cache"))
    module = [sys.executable, "-m", "aepurify", "evaluate", args.config]
    total = args.ranks * args.threads
    print(f"cache {os.environ['AEPURIFY_CACHE']}; warming it (models trained, not timed)",
          flush=True)
    run([*module, "--n-test", "1", "--out", str(out / "warm")], total)
    grid = ["--n-test", str(args.n_test)]
    one = run([*module, *grid, "--out", str(out / "one")], total)
    print(f"1 process, {total} thread(s): {one:.1f} s", flush=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={args.ranks}", "-m", "aepurify", "evaluate", args.config]
    many = run([*torchrun, *grid, "--out", str(out / f"ranks{args.ranks}")], args.threads)
    print(f"{args.ranks} processes, {args.threads} thread(s) each: {many:.1f} s", flush=True)
    print(f"speed-up: {one / many:.2f}x", flush=True)
    same = rows_without_seconds(out / "one" / "results.csv") == \
        rows_without_seconds(out / f"ranks{args.ranks}" / "results.csv")
    print(f"results.csv identical but for seconds: {same}; outputs in {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
