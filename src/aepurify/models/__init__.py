"""Classifiers, created by name from a registry (as in timm).

    >>> from aepurify.models import create_classifier
    >>> net = create_classifier("lenet", dataset="mnist")   # (N, 1, 28, 28) in [0, 1] -> (N, 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..registry import Registry
from .base import Classifier
from .lenet import LeNet
from .resnet import ResNet18
from .small_cnn import SmallCNN
from .vgg import VGG11, VGG16

__all__ = ["CLASSIFIERS", "Classifier", "create_classifier", "load_classifier",
           "LeNet", "SmallCNN", "ResNet18", "VGG11", "VGG16"]

CLASSIFIERS: Registry[Classifier] = Registry("classifier")
CLASSIFIERS.register("lenet")(LeNet)
CLASSIFIERS.register("small-cnn")(SmallCNN)
CLASSIFIERS.register("resnet18")(ResNet18)
CLASSIFIERS.register("vgg11")(VGG11)
CLASSIFIERS.register("vgg16")(VGG16)


def create_classifier(arch: str, dataset: str | None = None, **params: Any) -> Classifier:
    """Build an untrained classifier by name.

    Args:
        arch: ``lenet``, ``small-cnn``, ``resnet18``, ``vgg11`` or ``vgg16``.
        dataset: if given, fills in channels, image size, class count and normalisation
            statistics from the data set; explicit ``params`` win.
        params: architecture keyword arguments.

    Raises:
        ConfigError: unknown architecture, data set or parameter.
    """
    if dataset is not None:
        from ..data import dataset_spec

        spec = dataset_spec(dataset)
        params = {"in_channels": spec.image_shape[0], "image_size": spec.image_shape[1],
                  "num_classes": spec.num_classes, "mean": list(spec.mean),
                  "std": list(spec.std), **params}
    return CLASSIFIERS.create(arch, **params)


def load_classifier(path: str | Path, arch: str | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Load a classifier checkpoint (``model.safetensors`` + ``config.json``).

    Args:
        path: checkpoint directory.
        arch: if given, the architecture the checkpoint must hold.

    Returns:
        (classifier in eval mode, checkpoint config).

    Raises:
        CheckpointError: missing, corrupt, not a classifier, or another architecture.
    """
    module, config = load_checkpoint(path, CLASSIFIERS, kind="classifier", expect_name=arch,
                                     map_location=map_location)
    return module, config  # type: ignore[return-value]
