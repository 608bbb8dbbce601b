"""Audit your own defense, end to end: a classifier and a purifier written and trained here,
registered nowhere, audited with one call.

    python examples/audit_own_defense.py [--images 100] [--version quick] [--out DIR]

1. A purifier of our own: Gaussian noise (sigma 0.2) followed by a small denoising autoencoder
   trained to remove it; the noise makes it random, and the audit is told nothing about it.
2. A small CNN classifier, trained on the purified images (one and two epochs on 10,000 MNIST
   training images, the copy that ships with aepurify).
3. ``aepurify.audit`` probes what the purifier does not declare (it finds it differentiable and
   random), picks white-box + EOT, runs the attacks of the version (``quick``: PGD-20 and
   APGD-CE, gradients averaged over 10 draws of the noise), classifies every example ten times
   with fresh noise (N-evaluation: robust only if all ten are correct, with single-draw and
   majority vote beside it) and prints the verdict in 80 columns.

The default finishes within minutes on 2 CPU cores. ``--version standard`` adds APGD-DLR, Square,
gray-box attacks for reference and the sanity checks, with 20 EOT draws: many times the work.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import aepurify as ap


class SmallCNN(nn.Module):
    """MNIST classifier: images (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.1307) / 0.3081).flatten(1))


class Denoiser(nn.Module):
    """A small convolutional autoencoder: noisy images (N, 1, 28, 28) -> clean ones in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                                 nn.ConvTranspose2d(8, 8, 4, padding=1, stride=2), nn.ReLU(),
                                 nn.Conv2d(8, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(model: nn.Module, x: torch.Tensor, loss_fn, epochs: int = 1, batch: int = 128) -> None:
    """Adam, learning rate 1e-3, ``epochs`` passes over x in shuffled batches."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0]).split(batch):
            opt.zero_grad()
            loss_fn(model, idx).backward()
            opt.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="test images to audit")
    parser.add_argument("--version", default="quick", choices=["quick", "standard",
                                                                  "thorough"])
    parser.add_argument("--out", default=None, help="also write the report files here")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    x_train, y_train = ap.load_dataset("mnist", "train").tensors(slice(0, 10_000))
    x_test, y_test = ap.load_dataset("mnist", "test").tensors(slice(0, args.images))

    denoiser = Denoiser()
    train(denoiser, x_train, lambda m, idx: F.mse_loss(
        m((x_train[idx] + 0.2 * torch.randn_like(x_train[idx])).clamp(0, 1)), x_train[idx]))

    def purify(x: torch.Tensor) -> torch.Tensor:
        """Our defense: add Gaussian noise (sigma 0.2), then denoise. Random, registered
        nowhere, properties undeclared."""
        return denoiser((x + 0.2 * torch.randn_like(x)).clamp(0, 1))

    classifier = SmallCNN()  # trained on purified images, the inputs it will see
    train(classifier, x_train, lambda m, idx: F.cross_entropy(
        m(purify(x_train[idx]).detach()), y_train[idx]), epochs=2)
    print(f"trained the denoiser and the classifier in {time.perf_counter() - start:.0f} s")

    result = ap.audit(classifier, purify, x_test, y_test, norm="linf", eps=0.1,
                      version=args.version, out=args.out)
    print(result)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
