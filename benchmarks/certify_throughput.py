"""Certification throughput: noise draws per second through denoiser + classifier in
``SmoothedClassifier.counts`` (seeded draws batched by pixel budget, clip, argmax, bincount)
against the same forward in a plain loop, measured side by side in one run (goal: ratio >= 0.9).
A bf16 row (the project's fast path, aepurify.precision: autocast, channels-last; in the plain
loop only) shows what the reduced precision would buy and how many class counts it changes:
counting passes are verdicts and stay float32 unless bf16 gives the same counts.

    python benchmarks/certify_throughput.py [--draws 20000] [--repeats 3] [--threads 2]

Settings: MNIST-sized images (1x28x28) through MagNet's reformer (16 channels) and LeNet, as
configs/certify/mnist-*.yaml; CIFAR-sized ones (3x32x32) through APuDAE's REDNet-10 (32
channels, direct mode) and the CIFAR classifier of the configs (airbench94 where registered,
else a ResNet-18 at a quarter width). Untrained weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aepurify.certification import SmoothedClassifier, noise_chunks, noise_generator
from aepurify.models import CLASSIFIERS, create_classifier
from aepurify.precision import channels_last_weights, with_precision
from aepurify.purifiers import DefendedClassifier, create_purifier


def plain_counts(classifier: torch.nn.Module, purifier: torch.nn.Module, x: torch.Tensor,
                 draws: int, per_call: int, sigma: float, bf16: bool = False) -> np.ndarray:
    """The yardstick: the same draws' forward passes in a plain loop (global generator); with
    ``bf16``, the project's fast path (aepurify.precision: autocast, channels-last)."""
    counts = torch.zeros(classifier.num_classes, dtype=torch.long)
    net = with_precision(DefendedClassifier(classifier, purifier), "bf16" if bf16 else "fp32")
    with torch.no_grad(), channels_last_weights([classifier, purifier], bf16):
        for start in range(0, draws, per_call):
            r = min(per_call, draws - start)
            noisy = (x + sigma * torch.randn(r, *x.shape)).clamp(0, 1)
            counts += torch.bincount(net(noisy).argmax(1), minlength=classifier.num_classes)
    return counts.numpy()


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cifar_clf = "airbench94" if "airbench94" in CLASSIFIERS else "resnet18"
    cifar_params = {} if cifar_clf == "airbench94" else {"width": 16}
    setups = {
        "mnist: magnet + lenet": (
            create_classifier("lenet", dataset="mnist"),
            create_purifier("magnet", "mnist", filters=16), 0.5, (1, 28, 28)),
        f"cifar: rednet + {cifar_clf}": (
            create_classifier(cifar_clf, dataset="cifar10", **cifar_params),
            create_purifier("apudae", "cifar10", mode="direct", layers=5, features=32), 0.25,
            (3, 32, 32)),
    }
    print(f"{args.draws} draws per image, {args.threads} threads, torch {torch.__version__}, "
          f"best of {args.repeats}")
    print(f"{'setting':<26} {'counts (draws/s)':>17} {'plain (draws/s)':>16} {'ratio':>6} "
          f"{'bf16 (draws/s)':>15} {'bf16 counts':>12}")
    for name, (clf, pur, sigma, shape) in setups.items():
        clf.eval()
        pur.eval()
        x = torch.rand(shape)
        smoothed = SmoothedClassifier(clf, pur, sigma)
        budget = smoothed.pixel_budget(x.device)
        per_call = next(noise_chunks(shape, args.draws, sigma, noise_generator(0, "b", 0),
                                     budget)).shape[0]
        ours = best_seconds(lambda: smoothed.counts(x, args.draws, noise_generator(0, "b", 0)),
                            args.repeats)
        plain = best_seconds(lambda: plain_counts(clf, pur, x, args.draws, per_call, sigma),
                             args.repeats)
        bf16 = best_seconds(lambda: plain_counts(clf, pur, x, args.draws, per_call, sigma,
                                                 bf16=True), args.repeats)
        torch.manual_seed(1)
        fp = plain_counts(clf, pur, x, args.draws, per_call, sigma)
        torch.manual_seed(1)
        low = plain_counts(clf, pur, x, args.draws, per_call, sigma, bf16=True)
        same = "identical" if np.array_equal(fp, low) else f"{int(np.abs(fp - low).sum())} moved"
        print(f"{name:<26} {args.draws / ours:>17,.0f} {args.draws / plain:>16,.0f} "
              f"{plain / ours:>6.2f} {args.draws / bf16:>15,.0f} {same:>12}")


if __name__ == "__main__":
    main()
