"""Train-or-reuse for purifiers (:mod:`aepurify.training.model_cache` holds the part every model
shares, and classifiers): a trainable purifier is cached on disk, keyed by the hash of everything
that determines it (name, parameters, data set, training settings and, for purifiers trained
with the classifier, the classifier's own key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ImageDataset
from ..purifiers import Purifier, create_purifier, load_purifier, purifier_class
from ..utils import preserved_rng, seed_everything, stable_hash
from .gaussian_denoiser import GaussianDenoiser, check_denoiser_purifier, fit_gaussian_denoiser
from .model_cache import (CACHE_VERSION, Trained, _from_cache, _numerics_key, _train_and_save,
                          _training_data, get_classifier, model_cache_dir, training_in)
from .settings import TrainSettings

__all__ = ["get_purifier", "get_classifier", "model_cache_dir", "Trained", "CACHE_VERSION"]

log = logging.getLogger(__name__)


def get_purifier(name: str, dataset: str, *, params: dict[str, Any] | None = None,
                 settings: TrainSettings | None = None, checkpoint: str | Path | None = None,
                 classifier: Trained | None = None,
                 train_data: Callable[[], ImageDataset] | None = None,
                 cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                 data_dir: str | Path | None = None, denoiser: GaussianDenoiser | None = None
                 ) -> Trained:
    """A ready purifier: untrained transforms are built directly; trainable ones come from
    ``checkpoint``, the cache, or are trained now (and cached).

    Args:
        name: purifier registry name.
        dataset: data set name; fills channels / image size.
        params: purifier keyword arguments.
        settings: training settings for trainable purifiers.
        checkpoint: checkpoint directory to load instead of training.
        classifier: the defended classifier; used (and part of the cache key) by purifiers that
            train against it.
        train_data: returns the training split (called only if training is needed and
            ``settings.data`` names no other source).
        data_dir: data folder for a ``settings.data`` source.
        denoiser: train the purifier as a Gaussian denoiser for smoothing instead of with its
            own recipe (:mod:`aepurify.training.gaussian_denoiser`; ``sigma`` set); part of the
            cache key, with the classifier's key when its objective reads the classifier.

    Raises:
        CheckpointError: bad checkpoint (see :func:`aepurify.purifiers.load_purifier`).
        ConfigError: unknown purifier or parameter; a denoiser for a purifier that cannot be
            trained as one.
    """
    params = dict(params or {})
    # keyed on what training computes on this device (precision auto: bf16 on CUDA and on CPUs
    # with bf16 units, fp32 elsewhere)
    settings = (settings or TrainSettings()).resolved(device)
    cls = purifier_class(name)
    if checkpoint is not None:
        module, config = load_purifier(checkpoint, name, map_location=device)
        return Trained(module, config.get("cache_key") or stable_hash(config), "checkpoint",
                       Path(checkpoint), config)
    if not cls.trainable and denoiser is None:
        module = create_purifier(name, dataset, **params).to(device).eval()
        return Trained(module, stable_hash({"name": name, "params": module.hparams}),
                       "untrained", None, {})
    if denoiser is not None:  # what it cannot be is known from a built one: fail before training
        with preserved_rng():
            check_denoiser_purifier(create_purifier(name, dataset, **params), name)
    reads = cls.needs_classifier or (denoiser is not None and denoiser.needs_classifier)
    classifier_key = classifier.key if (reads and classifier) else None
    extra_key = {"denoiser": denoiser.model_dump()} if denoiser is not None else {}
    key = stable_hash({"v": CACHE_VERSION, "kind": "purifier", "name": name, "params": params,
                       "dataset": dataset, "train": settings.model_dump(),
                       "classifier": classifier_key, **_numerics_key(device), **extra_key})
    target = model_cache_dir(cache_dir) / f"purifier-{name}-{dataset}-{key}"
    cached = _from_cache(target, key, lambda p: load_purifier(p, name, map_location=device))
    if cached is not None:
        return cached
    log.info("training purifier %s on %s (cache %s)", name, dataset, target)

    def build() -> Purifier:
        seed_everything(settings.seed)
        return create_purifier(name, dataset, **params).to(device)

    def fit(module: nn.Module) -> dict[str, Any]:
        clf = classifier.module if classifier is not None else None
        train = _training_data(settings, train_data, data_dir)
        with training_in(cache_dir):
            if denoiser is not None:
                metrics = fit_gaussian_denoiser(module, train, settings, denoiser,
                                                classifier=clf, device=device, name=name)
            else:
                metrics = module.fit(  # type: ignore[operator]
                    train, settings, classifier=clf, device=device)
        return {**metrics, "train_data": train.name}

    module, config = _train_and_save(
        target, build, fit, kind="purifier", name=name, device=device,
        metadata={"dataset": dataset, "train": settings.model_dump(), "seed": settings.seed,
                  "cache_key": key, "classifier_key": classifier_key})
    return Trained(module, key, "trained", target, config)
