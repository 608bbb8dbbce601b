"""Classifiers, created by name from a registry (as in timm).

    >>> from aepurify.models import create_classifier
    >>> net = create_classifier("lenet", dataset="mnist")   # (N, 1, 28, 28) in [0, 1] -> (N, 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..errors import ConfigError
from ..registry import Registry
from .airbench import AirBench, AirBench94, AirBench95
from .base import Classifier
from .efficientnet import EfficientNetLite0
from .lenet import LeNet
from .resnet import ResNet18
from .small_cnn import SmallCNN
from .vgg import VGG11, VGG16
from .wrapped import WrappedClassifier, as_classifier, check_labels, check_logits

__all__ = ["CLASSIFIERS", "Classifier", "create_classifier", "load_classifier",
           "LeNet", "SmallCNN", "ResNet18", "VGG11", "VGG16", "EfficientNetLite0", "AirBench",
           "AirBench94", "AirBench95", "default_train",
           "is_pretrained", "WrappedClassifier", "as_classifier", "check_labels", "check_logits"]

CLASSIFIERS: Registry[Classifier] = Registry("classifier")
CLASSIFIERS.register("lenet")(LeNet)
CLASSIFIERS.register("small-cnn")(SmallCNN)
CLASSIFIERS.register("resnet18")(ResNet18)
CLASSIFIERS.register("vgg11")(VGG11)
CLASSIFIERS.register("vgg16")(VGG16)
CLASSIFIERS.register("efficientnet-lite0")(EfficientNetLite0)
CLASSIFIERS.register("airbench94")(AirBench94)
CLASSIFIERS.register("airbench95")(AirBench95)


def default_train(arch: str) -> dict[str, Any]:
    """Training settings that architecture ``arch`` brings for what a config leaves out
    (``default_train`` on its class; airbench's recipe settings), or {}."""
    return dict(getattr(CLASSIFIERS.get(arch), "default_train", {}))


def is_pretrained(arch: str) -> bool:
    """Whether ``arch`` comes with its own weights and is never trained (``trainable = False``
    on its class, e.g. ``efficientnet-lite0``)."""
    return not getattr(CLASSIFIERS.get(arch), "trainable", True)


def create_classifier(arch: str, dataset: str | None = None, **params: Any) -> Classifier:
    """Build an untrained classifier by name.

    Args:
        arch: ``lenet``, ``small-cnn``, ``resnet18``, ``vgg11``, ``vgg16``, ``airbench94``,
            ``airbench95`` or ``efficientnet-lite0`` (pretrained: built with its weights).
        dataset: if given, fills in channels, image size, class count and normalisation
            statistics from the data set; explicit ``params`` win. A pretrained classifier keeps
            its own normalisation and is checked against the data set's channels and classes.
        params: architecture keyword arguments.

    Raises:
        ConfigError: unknown architecture, data set or parameter; a pretrained classifier whose
            channels or classes do not match the data set.
    """
    if dataset is not None:
        from ..data import dataset_spec

        spec = dataset_spec(dataset)
        if is_pretrained(arch):
            net = CLASSIFIERS.create(arch, **params)
            channels, classes = net.input_shape[0], net.num_classes
            if channels != spec.image_shape[0] or classes < spec.num_classes:
                raise ConfigError(f"classifier {arch} ({channels} channels, {classes} classes) "
                                  f"does not fit data set {spec.name} "
                                  f"({spec.image_shape[0]} channels, {spec.num_classes} classes)")
            return net
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
