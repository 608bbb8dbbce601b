"""EOT gradient cost on CPU with the draws in one big batch against chunks of ``EOT_PIXELS_CPU``
pixel values (the default on a CPU: 256 images of 3x32x32), measured side by side in one run.

    python benchmarks/eot_chunking.py [--images 100] [--samples 20] [--repeats 2] [--threads 2]

The setting of configs/benchmark-cifar10.yaml's random purifiers: 3x32x32 images, a ResNet-18 at
a quarter width, APuDAE (adaptive, REDNet-10 with 32 channels) under bpda+eot and the VAE under
white-box+eot, 20 draws per gradient. Weights are untrained: the cost does not depend on them
(every refinement runs its fixed number of steps). One line per purifier: seconds for one
gradient of the EOT loss with all draws in one call (``max_pixels`` of 4096 such images, the
previous default)
and with the CPU chunking, each the best of ``--repeats``, and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aepurify.attacks.threat_models import (EOT, EOT_PIXELS_ACCELERATOR, EOT_PIXELS_CPU,
                                            BPDAClassifier)
from aepurify.models import create_classifier
from aepurify.purifiers import DefendedClassifier, create_purifier


def gradient_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     repeats: int) -> float:
    """Best wall seconds of one loss gradient with respect to x, over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        xa = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        assert g.shape == x.shape
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.images, 3, 32, 32)
    y = torch.randint(0, 10, (args.images,))
    classifier = create_classifier("resnet18", dataset="cifar10", width=16).eval()
    setups = {
        "apudae bpda+eot": BPDAClassifier(DefendedClassifier(classifier, create_purifier(
            "apudae", in_channels=3, mode="adaptive", layers=5, features=32).eval())),
        "vae white-box+eot": DefendedClassifier(classifier, create_purifier(
            "vae", in_channels=3, image_size=32).eval()),
    }
    print(f"{args.images} images 3x32x32, {args.samples} EOT draws, {args.threads} threads, "
          f"torch {torch.__version__}")
    chunk = EOT_PIXELS_CPU // (3 * 32 * 32)
    print(f"{'setting':<20} {'one call (s)':>13} {f'chunks of {chunk} (s)':>17} "
          f"{'speed-up':>9}")
    for name, model in setups.items():
        whole = gradient_seconds(EOT(model, args.samples, max_pixels=EOT_PIXELS_ACCELERATOR), x, y,
                                 args.repeats)
        chunked = gradient_seconds(EOT(model, args.samples), x, y, args.repeats)
        print(f"{name:<20} {whole:>13.1f} {chunked:>17.1f} {whole / chunked:>8.1f}x")


if __name__ == "__main__":
    main()
