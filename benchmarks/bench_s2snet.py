"""S2SNet speed: the fast path of ``S2SNet.purify`` (BatchNorm folded into the convs in eval
mode, channels-last activations, the 1x1 head as a channel contraction) against the plain
layer-by-layer computation of the same map (``S2SNet.reference_purify``), on the work a
white-box attack does: forward and input gradient through S2SNet + LeNet, MNIST-sized batches.

Prints CPU seconds per 1,000 images (minimum over repeats, both paths interleaved in one run, so
machine load hits both alike) and their ratio; also the cost of the defended classifier relative
to LeNet alone, which is what a white-box row costs relative to a gray-box row.

    .venv/bin/python benchmarks/bench_s2snet.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from aepurify.models import create_classifier
from aepurify.purifiers import create_purifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lenet = create_classifier("lenet", "mnist").eval()
    x = torch.rand(args.batch, 1, 28, 28)
    print(f"S2SNet + LeNet, forward + input gradient, {args.batch} MNIST-sized images, "
          f"{args.threads} threads; CPU seconds per 1,000 images (min of {args.repeats})")
    for params in ({"width": 8, "convs": 1}, {"width": 32}, {}):
        net = create_purifier("s2snet", "mnist", **params).eval()
        paths = {"plain": net.reference_purify, "fast": net.purify, "lenet alone": lambda z: z}
        with torch.no_grad():
            gap = float((net.purify(x) - net.reference_purify(x)).abs().max())
        times: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.repeats + 1):
            for name, fn in paths.items():
                xx = x.clone().requires_grad_(True)
                start = time.process_time()
                torch.autograd.grad(lenet(fn(xx)).sum(), xx)
                times[name].append((time.process_time() - start) * 1000 / args.batch)
        best = {k: min(v[1:]) for k, v in times.items()}
        print(f"  {net.plan}: plain {best['plain']:.3f} s, fast {best['fast']:.3f} s, "
              f"plain/fast {best['plain'] / best['fast']:.2f}x; defended/LeNet "
              f"{best['fast'] / best['lenet alone']:.2f}x; max output gap {gap:.1e}")


if __name__ == "__main__":
    main()
