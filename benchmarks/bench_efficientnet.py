"""EfficientNet-Lite0's input-gradient cost on CPU: the plain network (BatchNorm, NCHW) against
the path ``efficientnet-lite0`` runs (BatchNorm folded into the convolutions, channels-last
activations), measured side by side in one run, interleaved.

    python benchmarks/bench_efficientnet.py [--images 20] [--repeats 3] [--threads 2]

The attacks' unit of work on imagenet-samples: one gradient of the cross-entropy with respect to
a batch of 224 px images. Prints seconds per gradient (best of ``--repeats``) for each path, the
ratio, and the largest logit difference between them.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aepurify.models import create_classifier


def gradient_seconds(model, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
    assert g.shape == x.shape
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.images, 3, 224, 224)
    y = torch.randint(0, 1000, (args.images,))
    unfolded = create_classifier("efficientnet-lite0", fold=False)
    unfolded.net.to(memory_format=torch.contiguous_format)

    def plain(images: torch.Tensor) -> torch.Tensor:  # the package's network as it is, in NCHW
        return unfolded.net(unfolded.normalize(images))

    fast = create_classifier("efficientnet-lite0")
    with torch.no_grad():
        diff = float((plain(x) - fast(x)).abs().max())
    for model in (plain, fast):  # warm-up: oneDNN builds its kernels on the first call
        gradient_seconds(model, x[:2], y[:2])
    best = {"plain": float("inf"), "fast": float("inf")}
    for _ in range(args.repeats):
        best["plain"] = min(best["plain"], gradient_seconds(plain, x, y))
        best["fast"] = min(best["fast"], gradient_seconds(fast, x, y))
    print(f"{args.images} images 3x224x224, {args.threads} threads, torch {torch.__version__}")
    print(f"plain (BatchNorm, NCHW)        {best['plain']:6.2f} s per gradient")
    print(f"folded BatchNorm, channels-last {best['fast']:6.2f} s per gradient")
    print(f"speed-up {best['plain'] / best['fast']:.2f}x; largest logit difference {diff:.2e}")


if __name__ == "__main__":
    main()
