"""Training recipes by name: how a classifier is trained. A classifier class names its recipe
(``recipe = "airbench"`` on :class:`aepurify.models.AirBench`); the others train with the
standard cross-entropy loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import ImageDataset
from ..errors import ConfigError
from .airbench import fit_airbench
from .loops import fit_standard
from .settings import TrainSettings

RECIPES = {"standard": fit_standard, "airbench": fit_airbench}


def fit_classifier(model: nn.Module, train: ImageDataset, settings: TrainSettings,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train a classifier with its class's recipe (:data:`RECIPES`; ``standard``: cross-entropy
    over the shared minibatch loop, :func:`aepurify.training.loops.fit_standard`).

    Args:
        model: the classifier; images (N, C, H, W) in [0, 1] -> logits (N, K).
        train: training split (uint8 images).
        settings: the training settings (with the architecture's defaults filled in where a
            config gave none: :func:`aepurify.training.settings.with_defaults`).
        device: where to train.

    Returns:
        Training metrics (final loss, steps, seconds, images, precision, ...).

    Raises:
        ConfigError: a recipe name no entry of :data:`RECIPES` has.
    """
    name = getattr(model, "recipe", "standard")
    if name not in RECIPES:
        raise ConfigError(f"unknown training recipe {name!r} of {type(model).__name__}; "
                          f"known: {', '.join(RECIPES)}")
    return RECIPES[name](model, train, settings, device)
