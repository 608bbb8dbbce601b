"""Purifiers, created by name from a registry.

    >>> from aepurify.purifiers import create_purifier, DefendedClassifier
    >>> jpeg = create_purifier("jpeg", quality=50)
    >>> defended = DefendedClassifier(classifier, jpeg)      # an nn.Module
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint
from ..registry import Registry
from .apudae import APuDAE
from .base import DefendedClassifier, Identity, Purifier
from .feature_dae import HGD, FeatureDAE
from .magnet import MagNet
from .magnet_pool import MagNetPool
from .patch_vae import VAE, PatchVAE
from .probe import PropertyReport, PurifierProperties, probe_properties
from .randomness import Randomness
from .s2snet import S2SNet
from .transforms import JPEG, BitDepth, Median
from .wrapped import FunctionPurifier, as_purifier

__all__ = ["PURIFIERS", "Purifier", "DefendedClassifier", "create_purifier", "load_purifier",
           "Identity", "MagNet", "MagNetPool", "S2SNet", "JPEG", "BitDepth", "Median", "FeatureDAE", "HGD",
           "APuDAE", "VAE", "PatchVAE", "as_purifier", "FunctionPurifier", "Randomness",
           "probe_properties", "PurifierProperties", "PropertyReport"]

PURIFIERS: Registry[Purifier] = Registry("purifier")
PURIFIERS.register("none")(Identity)
PURIFIERS.register("magnet")(MagNet)
PURIFIERS.register("magnet-pool")(MagNetPool)
PURIFIERS.register("jpeg")(JPEG)
PURIFIERS.register("bit-depth")(BitDepth)
PURIFIERS.register("median")(Median)
PURIFIERS.register("s2snet")(S2SNet)
PURIFIERS.register("feature-dae")(FeatureDAE)
PURIFIERS.register("hgd")(HGD)
PURIFIERS.register("apudae")(APuDAE)
PURIFIERS.register("vae")(VAE)
PURIFIERS.register("patch-vae")(PatchVAE)


def purifier_class(name: str) -> type[Purifier]:
    """The class registered under ``name`` (ConfigError if unknown)."""
    return PURIFIERS.get(name)  # type: ignore[return-value]


def create_purifier(name: str, dataset: str | None = None, **params: Any) -> Purifier:
    """Build a purifier by name (untrained, if it is trainable).

    Args:
        name: ``none``, ``magnet``, ``magnet-pool``, ``jpeg``, ``bit-depth``, ``median``,
            ``s2snet``, ``feature-dae``, ``hgd``, ``apudae``, ``vae``, ``patch-vae``.
        dataset: if given, fills ``in_channels`` (and ``image_size`` where the purifier takes
            it) from the data set; explicit ``params`` win.
        params: the purifier's keyword arguments.

    Raises:
        ConfigError: unknown name or parameter.
    """
    cls = purifier_class(name)
    if dataset is not None:
        from ..data import dataset_spec

        spec = dataset_spec(dataset)
        accepted = inspect.signature(cls.__init__).parameters
        defaults = {"in_channels": spec.image_shape[0], "image_size": spec.image_shape[1]}
        params = {**{k: v for k, v in defaults.items() if k in accepted}, **params}
    return PURIFIERS.create(name, **params)


def load_purifier(path: str | Path, name: str | None = None,
                  map_location: str | torch.device = "cpu") -> tuple[Purifier, dict]:
    """Load a purifier checkpoint (``model.safetensors`` + ``config.json``).

    Raises:
        CheckpointError: missing, corrupt, not a purifier, or another architecture.
    """
    module, config = load_checkpoint(path, PURIFIERS, kind="purifier", expect_name=name,
                                     map_location=map_location)
    return module, config  # type: ignore[return-value]
