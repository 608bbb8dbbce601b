"""Attack strength under bf16 attack gradients: every row of a grid evaluated twice from the same
trained models, once with the attacks (and APuDAE's refinement steps) in fp32 and once in bf16
(autocast, channels-last), the verdicts in fp32 both times; prints the rows that differ and the
largest difference.

    python benchmarks/precision_strength.py [--grid demo cifar10] [--n-test N] \
        [--data-dir D] [--out runs/precision-strength]

Goal (issue "The CPU at full speed"): robust accuracy under bf16 gradients within 0.01 of fp32,
or lower, on every row (bf16 - fp32 <= 0.01); the script exits 1 where a row misses it.

Grids: ``demo`` is ``configs/demo-mnist.yaml`` (every row of the demo; its models come from the
model cache, trained as ``make demo`` trains them); ``cifar10`` is
``benchmarks/precision-cifar10.yaml`` (airbench94 on the CIFAR-10 JPEG copy with MagNet's
reformer, JPEG and APuDAE under gray-box, white-box, bpda, bpda+eot and S-BIM, at 8/255; its
numbers are "CIFAR-10 (JPEG copy)"). The CIFAR-10 grid needs the data folder that holds
``cifar10-jpeg.tar.gz`` (``--data-dir``) and trains airbench94 once (about 10 minutes on a
2-core CPU with bf16 units; cached after). Clean rows of deterministic purifiers are fp32 in both
runs (identical by construction) and are left out of the comparison. A random purifier's rows
use the same seeds in both runs, so they differ only through the arithmetic; a row on n images
moves in steps of 1/n.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import torch

from aepurify.evaluation.config_file import load_config
from aepurify.evaluation.experiment import prepare
from aepurify.evaluation.plan import plan_grid
from aepurify.evaluation.run import finished_rows, run_cells
from aepurify.evaluation.store import CLEAN, ResultStore
from aepurify.resources import find_config
from aepurify.utils import seed_everything

HERE = Path(__file__).resolve().parent
GRIDS = {"demo": "demo-mnist", "cifar10": str(HERE / "precision-cifar10.yaml")}
TOLERANCE = 0.01


def run_twice(name: str, n_test: int | None, data_dir: str | None, out: Path
              ) -> list[tuple[str, int, float, float, float, float]]:
    """Every row of grid ``name`` in fp32 and in bf16: (row, n, fp32 accuracy, bf16 accuracy,
    fp32 seconds, bf16 seconds)."""
    overrides = {} if n_test is None else {"n_test": n_test}
    config = load_config(find_config(GRIDS[name]), overrides=overrides)
    out.mkdir(parents=True, exist_ok=True)
    exp = prepare(config, out, data_dir=data_dir)
    rows = {}
    for precision in ("fp32", "bf16"):
        for trained in exp.purifiers.values():
            trained.module.set_precision(precision)
        plan = plan_grid(exp.config, exp.classifiers, exp.purifiers, exp.source, len(exp.test),
                         precision)
        work = dataclasses.replace(exp.workload, cells=plan.cells, precision=precision)
        seed_everything(config.seed)
        start = time.perf_counter()
        with ResultStore(out / f"{name}-{precision}.db") as store:
            failed = run_cells(work, store)
            if failed:
                raise SystemExit(f"{len(failed)} row(s) failed, first: {failed[0].row}: "
                                 f"{failed[0].error}")
            rows[precision] = {r.key: r for r in finished_rows(store, plan.cells)}
        print(f"{name}: {precision} grid {time.perf_counter() - start:.0f} s", flush=True)
    deterministic = {label for (_, label), t in exp.purifiers.items()
                     if not t.module.stochastic}
    table = []
    for key, a in rows["fp32"].items():
        b = rows["bf16"][key]
        if a.attack == CLEAN and a.purifier in deterministic:
            continue  # an fp32 verdict on clean images in both runs
        label = " ".join(str(k) for k in key[1:6]) + f" {key[6]:g}"
        table.append((label, a.n, a.accuracy, b.accuracy, a.seconds, b.seconds))
    return table


def report(name: str, table: list, out: Path) -> bool:
    """Print the rows that differ, the largest difference and the time ratio; write all rows
    to ``out/<name>.csv``. Returns whether every row meets the goal."""
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "n", "fp32", "bf16", "difference", "fp32_seconds",
                         "bf16_seconds"])
        for label, n, a, b, sa, sb in table:
            writer.writerow([label, n, f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}", f"{sa:.2f}",
                             f"{sb:.2f}"])
    differing = [r for r in table if r[3] != r[2]]
    print(f"\n{name}: {len(table)} rows compared, {len(differing)} differ "
          "(bf16 - fp32; negative: bf16 attacks stronger)")
    for label, n, a, b, _, _ in sorted(differing, key=lambda r: r[2] - r[3])[:40]:
        print(f"  {label[:52]:52s} n={n:<4d} {a:.3f} {b:.3f} {b - a:+.3f}")
    worst = max((r[3] - r[2] for r in table), default=0.0)
    largest = max((abs(r[3] - r[2]) for r in table), default=0.0)
    seconds = [sum(r[4] for r in table), sum(r[5] for r in table)]
    ok = worst <= TOLERANCE + 1e-9
    print(f"{name}: largest |difference| {largest:.3f}; largest bf16 - fp32 {worst:+.3f} "
          f"(goal <= {TOLERANCE}: {'met' if ok else 'NOT met'}); row seconds fp32 "
          f"{seconds[0]:.0f}, bf16 {seconds[1]:.0f} ({seconds[0] / max(seconds[1], 1e-9):.2f}x)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="*", choices=sorted(GRIDS), default=["demo", "cifar10"])
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/precision-strength")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU "
          f"{torch.backends.cpu.get_cpu_capability()}", flush=True)
    ok = True
    for name in args.grid:
        out = Path(args.out)
        ok &= report(name, run_twice(name, args.n_test, args.data_dir, out / name), out / name)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
