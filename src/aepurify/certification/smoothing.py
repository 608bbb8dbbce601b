"""The smoothed classifier of (denoised) randomized smoothing and its noise draws.

``g(x) = argmax_c P[f(D(clip(x + delta, 0, 1))) = c]``, ``delta ~ N(0, sigma^2 I)``: f a
classifier, D a purifier used as a Gaussian denoiser (Salman et al., NeurIPS 2020) or none (plain
randomized smoothing, Cohen et al., ICML 2019).

Clipping. x + delta leaves [0, 1] (at sigma 0.5 most pixels do); the project's classifiers and
purifiers take images in [0, 1]. The noisy image is clipped to [0, 1] before the purifier and the
classifier. The certificate holds for any base classifier, so ``f o D o clip`` is as valid a base
classifier as ``f o D``: clipping changes which classifier is certified, never whether the
certificate is sound (and the denoisers train on clipped noisy images too).

Noise draws are batched as EOT batches its draws (:mod:`aepurify.attacks.threat_models`): one
call of D and f takes as many noisy copies of an image as fit a budget of pixel values (256
CIFAR-10-sized images on a CPU, 4,096 on an accelerator). They come from a generator seeded by
(seed, phase, image index) (:func:`noise_generator`), so they are replayable: the same seed, image,
phase, budget and device give the same draws and the same counts, whatever ran before.

Precision. The base classifier is whatever computes the counts, so its arithmetic is part of
its definition: ``precision: fp32`` (the default) certifies the float32 network; ``bf16`` certifies
the same weights run under bf16 autocast with channels-last activations, 3 to 4 times faster on a
CPU with AMX (:mod:`aepurify.precision`). Both are sound certificates, of two slightly different
classifiers (on CIFAR-10 bf16 moved 616 of 20,000 class counts against fp32,
``benchmarks/certify_throughput.py``): a bf16 certificate is not a certificate of the fp32
network. Every pass of one run (CERTIFY, and PREDICT on the attacked examples) uses the same
precision, so both bounds are bounds of one smoothed classifier.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks.base import num_classes_of
from ..attacks.threat_models import eot_pixel_budget
from ..checks import inputs_validated
from ..errors import ConfigError
from ..precision import Precision, autocast, channels_last_weights
from ..purifiers.base import Identity
from ..utils import channels_last_input, derive_seed
from .cohen import Certificate, Prediction, certify_from_counts, predict_from_counts


def noise_generator(seed: int, phase: str, index: int, device: torch.device | str = "cpu"
                    ) -> torch.Generator:
    """The generator of one image's draws in one phase (``selection``, ``estimation``,
    ``predict-0.5``, ``attack-0.5``, ...): seeded from (seed, phase, index), on ``device``, so
    draws do not depend on which images or phases ran before (a resumed run repeats them)."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(seed, "smoothing", phase, int(index)))
    return gen


def draws_per_call(image_shape: tuple[int, ...], max_pixels: int) -> int:
    """Noisy copies of one image (C, H, W) per call of D and f within ``max_pixels`` pixel
    values (at least one)."""
    return max(1, int(max_pixels) // max(int(np.prod(image_shape)), 1))


def noise_chunks(image_shape: tuple[int, ...], num: int, sigma: float,
                 generator: torch.Generator, max_pixels: int) -> Iterator[torch.Tensor]:
    """The ``num`` Gaussian noise draws of one image, ``sigma * N(0, I)``, in chunks of
    :func:`draws_per_call` draws, from ``generator`` on its device: the draws sampled apart
    from their use, so a test (or a plain loop) can replay them.

    Shapes: yields (r, C, H, W) float32 tensors, sum of r = num.
    """
    per = draws_per_call(image_shape, max_pixels)
    for start in range(0, num, per):
        r = min(per, num - start)
        yield torch.randn((r, *image_shape), generator=generator, device=generator.device,
                          dtype=torch.float32).mul_(sigma)


class SmoothedClassifier:
    """The smoothed classifier g of a classifier f and an optional purifier D at noise sigma.

    Args:
        classifier: f, (N, C, H, W) in [0, 1] -> logits (N, K), with ``num_classes`` somewhere
            in its module tree (:func:`aepurify.as_classifier` sets it).
        purifier: D, (N, C, H, W) in [0, 1] -> the same, or None (plain randomized smoothing).
            A random purifier is allowed: its randomness joins the noise (the certificate holds
            for any random base classifier, Cohen et al.), but its draws are then those of the
            global generator, replayed only by re-seeding it.
        sigma: standard deviation of the Gaussian noise, pixels in [0, 1].
        max_pixels: pixel values per call of D and f (None: by device, as EOT).
        precision: the base classifier's arithmetic in every counting pass, ``fp32`` or
            ``bf16`` (autocast, channels-last; see the module docstring: part of what is
            certified).

    Raises:
        ConfigError: sigma <= 0, max_pixels < 1, a precision other than fp32 or bf16, or a
            classifier without ``num_classes``.
    """

    def __init__(self, classifier: nn.Module, purifier: nn.Module | None, sigma: float,
                 max_pixels: int | None = None, precision: Precision = "fp32") -> None:
        if not sigma > 0:
            raise ConfigError(f"sigma must be > 0; got {sigma}")
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1; got {max_pixels}")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"the base classifier's precision must be fp32 or bf16; got "
                              f"{precision!r}")
        self.precision = precision
        self.classifier = classifier.eval()
        self.purifier = (purifier if purifier is not None else Identity()).eval()
        self.sigma = float(sigma)
        self.max_pixels = max_pixels
        self.num_classes = num_classes_of(classifier)

    def pixel_budget(self, device: torch.device) -> int:
        """Pixel values per call of D and f on ``device``."""
        return self.max_pixels if self.max_pixels is not None else eot_pixel_budget(device)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """The base classifier's logits ``f(D(clip(x, 0, 1)))``, (N, C, H, W) -> (N, K)."""
        return self.classifier(self.purifier(x.clamp(0, 1)))

    @torch.no_grad()
    def counts(self, x: torch.Tensor, num: int, generator: torch.Generator) -> np.ndarray:
        """Class counts of ``num`` noisy copies of one image: how often
        ``argmax f(D(clip(x + delta)))`` gave each class.

        Args:
            x: one image (C, H, W) in [0, 1].
            num: draws.
            generator: where the noise comes from (:func:`noise_generator`).

        Returns:
            int64 array (K,) summing to ``num``.
        """
        total = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        budget = self.pixel_budget(x.device)
        bf16 = self.precision == "bf16"
        with inputs_validated(), \
                channels_last_weights([self.classifier, self.purifier], bf16):
            for noise in noise_chunks(tuple(x.shape), num, self.sigma, generator, budget):
                noisy = noise.to(x.device).add_(x).clamp_(0, 1)
                if bf16:
                    noisy = channels_last_input(noisy)
                with autocast(self.precision, x.device):
                    pred = self.classifier(self.purifier(noisy)).float().argmax(1)
                total += torch.bincount(pred, minlength=self.num_classes)
        return total.cpu().numpy()

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int,
                index: int) -> Certificate:
        """Cohen et al.'s CERTIFY for one image (C, H, W) in [0, 1]: ``n0`` selection draws,
        ``n`` estimation draws, confidence 1 - alpha; draws seeded by (seed, phase, index)."""
        sel = self.counts(x, n0, noise_generator(seed, "selection", index, x.device))
        est = self.counts(x, n, noise_generator(seed, "estimation", index, x.device))
        return certify_from_counts(sel, est, self.sigma, alpha)

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int, index: int,
                phase: str = "predict") -> Prediction:
        """Cohen et al.'s PREDICT for one image (C, H, W) in [0, 1] from ``n`` draws seeded by
        (seed, phase, index)."""
        counts = self.counts(x, n, noise_generator(seed, phase, index, x.device))
        return predict_from_counts(counts, alpha)

    def to(self, device: torch.device | str) -> SmoothedClassifier:
        """Move f and D to ``device``; returns self."""
        self.classifier.to(device)
        self.purifier.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """What the run record keeps about it."""
        return {"sigma": self.sigma, "max_pixels": self.max_pixels,
                "num_classes": self.num_classes, "clip": "x + delta clipped to [0, 1]",
                "precision": self.precision}
