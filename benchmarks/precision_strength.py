"""Attack strength under bf16 attack gradients: every row of a grid evaluated twice from the same
trained models, once with the attacks (and APuDAE's refinement steps) in fp32 and once in bf16
(autocast, channels-last), the verdicts in fp32 both times; prints the rows that differ and the
largest difference.

    python benchmarks/precision_strength.py [--grid demo cifar10] [--n-test N] \
        [--data-dir D] [--out runs/precision-strength] [--control]

Goal (issue "The CPU at full speed"): robust accuracy under bf16 gradients within 0.01 of fp32,
or lower, on every row (bf16 - fp32 <= 0.01); the script exits 1 where a row misses it.
``--control`` runs the fp32 grid a second time with the next base seed (other random starts,
other draws of a random purifier's N evaluations; the same trained models): how much each row
moves between two fp32 runs, the yardstick for the bf16 differences. (Another thread count is
no yardstick: fp32 evaluation gives the same rows with 1 and 2 threads.)

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


RUNS = {"fp32": ("fp32", 0), "bf16": ("bf16", 0), "fp32-seed+1": ("fp32", 1)}


def run_grid(name: str, runs: list[str], n_test: int | None, data_dir: str | None, out: Path
             ) -> dict[str, dict]:
    """Every row of grid ``name`` once per entry of ``runs`` (:data:`RUNS`: fp32 and bf16, and
    fp32 with the config's seed + 1), from the same trained models: run -> row key -> row
    (clean rows of deterministic purifiers left out: an fp32 verdict in every run)."""
    overrides = {} if n_test is None else {"n_test": n_test}
    config = load_config(find_config(GRIDS[name]), overrides=overrides)
    out.mkdir(parents=True, exist_ok=True)
    exp = prepare(config, out, data_dir=data_dir)
    deterministic = {label for (_, label), t in exp.purifiers.items()
                     if not t.module.stochastic}
    rows = {}
    for run in runs:
        precision, seed_offset = RUNS[run]
        for trained in exp.purifiers.values():
            trained.module.set_precision(precision)
        plan = plan_grid(exp.config, exp.classifiers, exp.purifiers, exp.source, len(exp.test),
                         precision)
        seed = config.seed + seed_offset
        if seed_offset:  # row hashes carry the seed: plan again for it
            plan = plan_grid(exp.config.model_copy(update={"seed": seed}), exp.classifiers,
                             exp.purifiers, exp.source, len(exp.test), precision)
        work = dataclasses.replace(exp.workload, cells=plan.cells, precision=precision, seed=seed)
        seed_everything(seed)
        start = time.perf_counter()
        with ResultStore(out / f"{name}-{run}.db") as store:
            failed = run_cells(work, store)
            if failed:
                raise SystemExit(f"{len(failed)} row(s) failed, first: {failed[0].row}: "
                                 f"{failed[0].error}")
            rows[run] = {r.key: r for r in finished_rows(store, plan.cells)
                         if not (r.attack == CLEAN and r.purifier in deterministic)}
        print(f"{name}: {run} grid {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def _label(key: tuple) -> str:
    return " ".join(str(k) for k in key[1:6]) + f" {key[6]:g}"


def report(name: str, rows: dict[str, dict], out: Path) -> bool:
    """Print how the rows differ, the largest difference and (with the control run) how much
    the same rows move between two fp32 runs that differ only in their thread count; write all
    rows to ``out/<name>.csv``. Returns whether every row meets the goal."""
    fp32, bf16, control = rows["fp32"], rows["bf16"], rows.get("fp32-seed+1")
    keys = list(fp32)
    diffs = {k: bf16[k].accuracy - fp32[k].accuracy for k in keys}
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "n", "fp32", "bf16", "bf16_minus_fp32", "fp32_next_seed",
                         "fp32_seconds", "bf16_seconds"])
        for k in keys:
            writer.writerow([_label(k), fp32[k].n, f"{fp32[k].accuracy:.4f}",
                             f"{bf16[k].accuracy:.4f}", f"{diffs[k]:+.4f}",
                             f"{control[k].accuracy:.4f}" if control else "",
                             f"{fp32[k].seconds:.2f}", f"{bf16[k].seconds:.2f}"])
    above = [k for k in keys if diffs[k] > TOLERANCE + 1e-9]
    print(f"\n{name}: {len(keys)} rows; bf16 - fp32 (negative: bf16 attacks stronger): "
          f"{sum(d > 0 for d in diffs.values())} higher, {sum(d < 0 for d in diffs.values())} "
          f"lower, mean {sum(diffs.values()) / max(len(keys), 1):+.4f}")
    print(f"  {'row':46s} {'n':>5s}  fp32  bf16   diff" + ("  fp32 seed+1" if control else ""))
    for k in sorted(keys, key=lambda k: -abs(diffs[k]))[:12]:
        moved = f"  {control[k].accuracy:.3f}" if control else ""
        print(f"  {_label(k)[:46]:46s} {fp32[k].n:5d} {fp32[k].accuracy:.3f} "
              f"{bf16[k].accuracy:.3f} {diffs[k]:+.3f}{moved}")
    seconds = [sum(fp32[k].seconds for k in keys), sum(bf16[k].seconds for k in keys)]
    print(f"{name}: largest |bf16 - fp32| {max(map(abs, diffs.values()), default=0.0):.3f}, "
          f"largest bf16 - fp32 {max(diffs.values(), default=0.0):+.3f}; {len(above)} row(s) "
          f"above +{TOLERANCE} (goal: none); row seconds fp32 {seconds[0]:.0f}, bf16 "
          f"{seconds[1]:.0f} ({seconds[0] / max(seconds[1], 1e-9):.2f}x)")
    if control:
        moves = {k: control[k].accuracy - fp32[k].accuracy for k in keys}
        noisy = [k for k in above if abs(moves[k]) >= diffs[k] - 1e-9]
        print(f"{name}: control, fp32 with the next seed against fp32: largest |difference| "
              f"{max(map(abs, moves.values()), default=0.0):.3f}, "
              f"{sum(abs(m) > TOLERANCE + 1e-9 for m in moves.values())} row(s) past "
              f"{TOLERANCE}; of the {len(above)} bf16 row(s) above +{TOLERANCE}, {len(noisy)} "
              "move as much in the control")
    return not above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="*", choices=sorted(GRIDS), default=["demo", "cifar10"])
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/precision-strength")
    parser.add_argument("--control", action="store_true",
                        help="also run fp32 with the next seed: how much the rows move between "
                             "two fp32 runs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU "
          f"{torch.backends.cpu.get_cpu_capability()}", flush=True)
    ok = True
    for name in args.grid:
        out = Path(args.out) / name
        runs = ["fp32", "bf16"] + (["fp32-seed+1"] if args.control else [])
        ok &= report(name, run_grid(name, runs, args.n_test, args.data_dir, out), out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
