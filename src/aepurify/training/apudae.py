"""Training APuDAE's denoising autoencoder (Kalaria, Hazra and Chakrabarti, arXiv 2208.13838):
the DAE learns to remove Gaussian noise (MSE) on the training split minus a held-out part, on
which the clean reconstruction error's mean and spread (mu, sigma) are then calibrated."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageDataset
from ..errors import ConfigError
from .loops import run_minibatches
from .settings import TrainSettings

TRAIN_EXTRA = {"calibration_images"}


def fit_apudae(purifier: nn.Module, train: ImageDataset, settings: TrainSettings,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train an APuDAE purifier's DAE on noisy images (its ``training_loss``), then calibrate
    mu and sigma on held-out clean images (its ``calibrate``). Typed as a module: this package
    does not import the purifiers (imports flow one way).

    The last ``settings.extra["calibration_images"]`` (default 2,000) images of the training
    split are held out: the DAE never sees them, and the test split is not touched.
    ``settings.max_images`` limits the images the DAE trains on (the first ones).

    Returns:
        training metrics plus ``mu``, ``sigma``, ``calibration_images`` and the held-out
        denoising MSE at ``noise_std``.

    Raises:
        ConfigError: unknown ``extra`` option, or too few training images to hold out.
    """
    unknown = set(settings.extra) - TRAIN_EXTRA
    if unknown:
        raise ConfigError(f"unknown APuDAE training option(s) {sorted(unknown)}; "
                          f"use {sorted(TRAIN_EXTRA)}")
    n_cal = int(settings.extra.get("calibration_images", 2000))
    if n_cal < 2 or n_cal >= len(train):
        raise ConfigError(f"APuDAE calibration_images must be in [2, {len(train) - 1}]; "
                          f"got {n_cal}")
    fit_part = train.take(len(train) - n_cal)
    held_out = train.take(None, start=len(train) - n_cal)
    purifier.to(device)
    metrics = run_minibatches(purifier.dae.parameters(), purifier.training_loss, fit_part,
                              settings, desc="train APuDAE DAE", device=device,
                              modules=[purifier])
    purifier.eval()
    x_cal, _ = held_out.tensors(slice(None), device)
    metrics.update(purifier.calibrate(x_cal))
    with torch.no_grad():
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
        noise = torch.randn(x_cal.shape, generator=gen).to(x_cal.device)
        noisy = (x_cal + purifier.noise_std * noise).clamp(0, 1)
        metrics["held_out_denoising_mse"] = float(F.mse_loss(purifier.reconstruct(noisy), x_cal))
    return metrics
