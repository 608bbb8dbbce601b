"""APuDAE purification throughput on CPU, each mode against the classifier's own forward pass,
measured side by side in one run (so the ratios hold on any machine, loaded or not).

    python benchmarks/apudae_throughput.py [--dataset mnist|cifar10] [--images 1000]
        [--batch 500] [--repeats 3] [--threads 2] [--layers 4] [--features 16]

Defaults: the demo's setting (MNIST 28x28, LeNet, REDNet-8 with 16 channels). ``--dataset
cifar10`` uses 3x32x32 images, ResNet-18 and, unless given, the paper's REDNet-30 (15 layers,
64 channels). Weights are untrained and the DAE uncalibrated (mu = 0), so every image stays
above mu and gets the backward pass of every step: the worst case of the ``adaptive`` mode,
which on a CPU skips it for images at or below mu (``benchmarks/throughput.py`` measures both). Printed per line: images per second of wall clock
and per CPU second (user + system of this process), each the best of ``--repeats`` runs, and
what one purification costs in classifier forward passes, by wall clock and by CPU time. On a
loaded machine the CPU-time figures are the steadier ones (with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from aepurify.models import create_classifier
from aepurify.purifiers import create_purifier
from aepurify.purifiers.apudae import MODES


def timed(fn, x: torch.Tensor, batch: int, repeats: int) -> tuple[float, float]:
    """Best wall seconds and best CPU seconds over ``repeats`` runs of fn over x in batches."""
    best_wall, best_cpu = float("inf"), float("inf")
    with torch.no_grad():
        fn(x[:min(batch, 8)])  # warm-up (allocations, kernel selection)
        for _ in range(repeats):
            cpu, wall = os.times(), time.perf_counter()
            for start in range(0, x.shape[0], batch):
                fn(x[start:start + batch])
            wall = time.perf_counter() - wall
            t = os.times()
            best_wall = min(best_wall, wall)
            best_cpu = min(best_cpu, (t.user - cpu.user) + (t.system - cpu.system))
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description="APuDAE purification throughput on CPU")
    parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--features", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.dataset == "mnist":
        shape, arch, layers, features = (1, 28, 28), "lenet", 4, 16
    else:
        shape, arch, layers, features = (3, 32, 32), "resnet18", 15, 64
    layers = args.layers or layers
    features = args.features or features
    x = torch.rand(args.images, *shape)
    classifier = create_classifier(arch, dataset=args.dataset).eval()
    clf_wall, clf_cpu = timed(classifier, x, args.batch, args.repeats)
    print(f"{args.dataset} {shape[1]}x{shape[2]}, {args.images} images, batch {args.batch}, "
          f"{args.threads} threads, REDNet-{2 * layers} with {features} channels, "
          f"torch {torch.__version__}")
    print(f"{'what':<22} {'images/s':>9} {'images/CPU s':>13} "
          f"{'classifier forwards (wall, CPU)':>32}")
    rows = [(f"{arch} forward", clf_wall, clf_cpu)]
    for mode in MODES:
        purifier = create_purifier("apudae", in_channels=shape[0], mode=mode, layers=layers,
                                   features=features).eval()
        rows.append((f"apudae {mode}", *timed(purifier, x, args.batch, args.repeats)))
    for what, wall, cpu in rows:
        # what one purification costs, in forward passes of the classifier
        ratio = f"{wall / clf_wall:.1f}, {cpu / clf_cpu:.1f}"
        print(f"{what:<22} {args.images / wall:>9.0f} {args.images / cpu:>13.0f} {ratio:>32}")


if __name__ == "__main__":
    main()
