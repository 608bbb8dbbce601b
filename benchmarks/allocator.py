"""glibc's allocator left as it is against tuned (aepurify.allocator), side by side in one run.

    python benchmarks/allocator.py [--rounds 2] [--steps 8]

Each workload runs in fresh processes, alternately with ``AEPURIFY_MALLOC=default`` and with
the tuned allocator (what the ``aepurify`` command sets), ``--rounds`` times; the best round of
each counts. Workloads, in ``precision: auto`` (bf16 with channels-last on a CPU with bf16
units), 2 threads:

- airbench95 training steps (batch 1,024), the full CIFAR-10 configs' classifier;
- REDNet-30 / 64 channels input gradients (batch 128), APuDAE's refinement step;
- airbench94 + REDNet-10 / 32 forward passes (256 images), a counting pass of certification.

Prints images per second both ways, the ratio tuned / default, and the CPU seconds spent in the
kernel (page faults of freshly mapped memory, what the tuning removes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOADS = ("airbench95 training", "REDNet-30/64 input gradient", "certify counting")


def child(workload: str, steps: int) -> dict[str, float]:
    """Run ``steps`` timed iterations of ``workload`` after two warm-up ones, in this process."""
    import torch
    from torch.nn import functional as F

    from aepurify.allocator import tune_allocator
    from aepurify.models import create_classifier
    from aepurify.precision import autocast, resolve_precision
    from aepurify.purifiers import create_purifier

    record = tune_allocator()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    precision = resolve_precision("auto", "cpu")
    cl = torch.channels_last if precision == "bf16" else torch.contiguous_format
    if workload == WORKLOADS[0]:
        model = create_classifier("airbench95", "cifar10-jpeg").train().to(memory_format=cl)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.rand(1024, 3, 32, 32).contiguous(memory_format=cl)
        y = torch.randint(0, 10, (1024,))

        def step() -> None:
            with autocast(precision, "cpu"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elif workload == WORKLOADS[1]:
        dae = create_purifier("apudae", "cifar10-jpeg", mode="direct", layers=15, features=64)
        net = dae.eval().to(memory_format=cl)
        x = torch.rand(128, 3, 32, 32).contiguous(memory_format=cl)

        def step() -> None:
            xi = x.clone().requires_grad_(True)
            with autocast(precision, "cpu"):
                loss = (net(xi).float() - x).square().sum()
            loss.backward()
    else:
        clf = create_classifier("airbench94", "cifar10-jpeg").eval().to(memory_format=cl)
        dae = create_purifier("apudae", "cifar10-jpeg", mode="direct", layers=5,
                              features=32).eval().to(memory_format=cl)
        x = torch.rand(256, 3, 32, 32).contiguous(memory_format=cl)

        def step() -> None:
            with torch.no_grad(), autocast(precision, "cpu"):
                clf(dae(x)).argmax(1)
    for _ in range(2):
        step()
    t0, c0 = time.perf_counter(), os.times()
    for _ in range(steps):
        step()
    seconds, c1 = time.perf_counter() - t0, os.times()
    return {"images_per_s": steps * x.shape[0] / seconds, "system_s": c1.system - c0.system,
            "user_s": c1.user - c0.user, "allocator": record["allocator"],
            "precision": precision}


def measure(workload: str, steps: int, tuned: bool) -> dict[str, float]:
    env = {**os.environ, "AEPURIFY_MALLOC": "" if tuned else "default"}
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--steps", str(steps)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    print(f"{'workload':28} {'default img/s':>13} {'tuned img/s':>11} {'ratio':>6} "
          f"{'sys s default':>13} {'sys s tuned':>11}")
    for workload in WORKLOADS:
        best: dict[bool, dict[str, float]] = {}
        for _ in range(args.rounds):
            for tuned in (False, True):
                r = measure(workload, args.steps, tuned)
                if tuned not in best or r["images_per_s"] > best[tuned]["images_per_s"]:
                    best[tuned] = r
        d, t = best[False], best[True]
        print(f"{workload:28} {d['images_per_s']:13.0f} {t['images_per_s']:11.0f} "
              f"{t['images_per_s'] / d['images_per_s']:6.2f} {d['system_s']:13.1f} "
              f"{t['system_s']:11.1f}", flush=True)
    print(f"precision {t['precision']}; allocator when tuned: {t['allocator']}")


if __name__ == "__main__":
    main()
