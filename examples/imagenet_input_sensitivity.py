"""How much blur, JPEG, bit-depth reduction, median smoothing and noise EfficientNet-Lite0 takes
on the 20 ImageNet validation images (foolbox samples): clean accuracy after each transform and
the mean squared change it makes, the yardstick a 224 px purifier's reconstruction error is read
against (docs/imagenet.md).

    python examples/imagenet_input_sensitivity.py
"""

from __future__ import annotations

import torch
from kornia.filters import gaussian_blur2d

from aepurify.data import load_dataset
from aepurify.models import create_classifier
from aepurify.purifiers import create_purifier


def main() -> None:
    torch.manual_seed(0)
    model = create_classifier("efficientnet-lite0")
    x, y = load_dataset("imagenet-samples").tensors()
    transforms = {"none": lambda z: z}
    for sigma in (0.5, 1.0, 2.0):
        k = 2 * int(2 * sigma) + 1
        transforms[f"gaussian blur sigma {sigma:g} px"] = (
            lambda z, k=k, s=sigma: gaussian_blur2d(z, (k, k), (s, s)))
    for q in (10, 23, 50, 70):
        transforms[f"jpeg quality {q}"] = create_purifier("jpeg", quality=q)
    for b in (3, 4, 5):
        transforms[f"bit depth {b}"] = create_purifier("bit-depth", bits=b)
    for k in (3, 5):
        transforms[f"median {k}x{k}"] = create_purifier("median", kernel_size=k)
    for s in (0.02, 0.05, 0.1):
        transforms[f"gaussian noise sigma {s:g}"] = (
            lambda z, s=s: (z + s * torch.randn_like(z)).clamp(0, 1))
    print("20 ImageNet validation images (foolbox samples), EfficientNet-Lite0")
    print(f"{'transform':<28} {'accuracy':>8} {'mse':>9}")
    with torch.no_grad():
        for name, fn in transforms.items():
            z = fn(x).clamp(0, 1)
            acc = (model(z).argmax(1) == y).float().mean().item()
            print(f"{name:<28} {acc:>8.2f} {float((z - x).pow(2).mean()):>9.5f}")


if __name__ == "__main__":
    main()
