"""Train-or-reuse for models of a user's entry point (``entry_point: "package.module:factory"``
in a config): the factory builds the module, :func:`~aepurify.as_classifier` /
:func:`~aepurify.as_purifier` wrap it, and what must be trained is trained with the entry's
settings and cached under a key that includes the entry point and its kwargs (a checkpoint of
such a model is loaded back into a module the factory builds, since no registry rebuilds it).

- classifier: trained unless the entry says ``pretrained: true`` or the module has
  ``trainable = False``; a pretrained one is keyed by a digest of its weights.
- purifier: a factory returning a trainable :class:`~aepurify.purifiers.Purifier` is trained
  (against the classifier when it ``needs_classifier``); any other callable is wrapped as it is,
  its undeclared properties probed on the test images.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint_into
from ..data import ImageDataset
from ..entry_points import build_purifier, call_entry_point
from ..errors import CheckpointError, ConfigError
from ..models import WrappedClassifier, as_classifier
from ..purifiers import Purifier, as_purifier, probe_properties
from ..utils import module_digest, preserved_rng, seed_everything, stable_hash
from .model_cache import (CACHE_VERSION, Trained, _numerics_key, _train_and_save,
                          _training_data, classifier_fitter, model_cache_dir)
from .settings import TrainSettings

log = logging.getLogger(__name__)

ORIGIN = "entry point"


def safe_name(entry_point: str) -> str:
    """An entry point as part of a cache folder name (``my_models-small_cnn``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", entry_point).strip(".-") or "entry-point"


def _cached(target: Path, key: str, build: Callable[[], nn.Module], kind: str, name: str,
            device: torch.device | str) -> Trained | None:
    if not target.exists():
        return None
    module = build()
    try:
        config = load_checkpoint_into(module, target, kind=kind, expect_name=name,
                                      map_location=device)
    except CheckpointError as exc:
        log.warning("retraining: cached %s is unusable (%s)", target, exc)
        return None
    log.info("reusing cached model %s", target)
    return Trained(module, key, "cache", target, config)


def get_entry_classifier(entry_point: str, kwargs: dict[str, Any], dataset: str, *,
                         sample: torch.Tensor, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None, pretrained: bool = False,
                         settings: TrainSettings | None = None,
                         train_data: Callable[[], ImageDataset] | None = None,
                         test_data: ImageDataset | None = None,
                         cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                         data_dir: str | Path | None = None) -> Trained:
    """The classifier of an entry point, wrapped with ``as_classifier`` (classes read from a
    forward pass on ``sample``), pretrained or trained now / from the cache.

    Args:
        entry_point: ``"package.module:factory"`` returning an ``nn.Module`` (or callable) that
            maps normalised images to logits.
        kwargs: the factory's keyword arguments.
        dataset: the data set it is trained on (part of the cache key).
        sample: images (N, C, H, W) in [0, 1] for the probe forward pass.
        mean, std: normalisation put in front of the module.
        pretrained: never train it (also when the module says ``trainable = False``).
        settings, train_data, test_data, cache_dir, device, data_dir: as
            :func:`aepurify.training.get_classifier`.

    Raises:
        ConfigError: the entry point cannot be imported or built, or its module's output is not
            logits (probabilities, wrong shape).
        CheckpointError: a cached checkpoint that cannot be read is retrained, not raised.
    """
    settings = settings or TrainSettings()

    def build() -> WrappedClassifier:
        module = call_entry_point(entry_point, kwargs, "classifier")
        return as_classifier(module, mean=mean, std=std, sample=sample.cpu()).to(device)

    with preserved_rng():  # a factory draws initial weights: the caller's streams stay as they were
        first = build()
    if pretrained or not getattr(first.module, "trainable", True):
        key = stable_hash({"kind": "classifier", "entry_point": entry_point, "kwargs": kwargs,
                           "mean": mean, "std": std, "weights": module_digest(first)})
        return Trained(first.eval(), key, "pretrained", None, {"entry_point": entry_point})
    key = stable_hash({"v": CACHE_VERSION, "kind": "classifier", "entry_point": entry_point,
                       "kwargs": kwargs, "mean": mean, "std": std, "dataset": dataset,
                       "train": settings.model_dump(), **_numerics_key(device)})
    target = model_cache_dir(cache_dir) / f"classifier-{safe_name(entry_point)}-{dataset}-{key}"
    fit = classifier_fitter(settings, train_data, data_dir, test_data, device, entry_point)
    return _train_or_reuse(target, key, build, fit, "classifier", entry_point, device, settings,
                           {"dataset": dataset, "entry_point": entry_point, "kwargs": kwargs})


def _train_or_reuse(target: Path, key: str, build: Callable[[], nn.Module],
                    fit: Callable[[nn.Module], dict[str, Any]], kind: str, entry_point: str,
                    device: torch.device | str, settings: TrainSettings,
                    metadata: dict[str, Any]) -> Trained:
    """The model of an entry point from the cache folder ``target`` (weights loaded into a
    module ``build`` makes), else built under ``settings.seed``, trained by ``fit`` and saved
    there with ``metadata``."""
    with preserved_rng():  # building draws initial weights the caller must not see
        cached = _cached(target, key, build, kind, entry_point, device)
    if cached is not None:
        return cached
    log.info("training %s %s (cache %s)", kind, entry_point, target)

    def seeded() -> nn.Module:
        seed_everything(settings.seed)
        return build()

    module, config = _train_and_save(
        target, seeded, fit, kind=kind, name=entry_point, device=device,
        metadata={**metadata, "train": settings.model_dump(), "seed": settings.seed,
                  "cache_key": key})
    return Trained(module, key, "trained", target, config)


def get_entry_purifier(entry_point: str, kwargs: dict[str, Any], dataset: str, *,
                       sample: torch.Tensor, label: str, differentiable: bool | None = None,
                       stochastic: bool | None = None, settings: TrainSettings | None = None,
                       classifier: Trained | None = None,
                       train_data: Callable[[], ImageDataset] | None = None,
                       cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                       data_dir: str | Path | None = None, seed: int = 0) -> Trained:
    """The purifier of an entry point: a trainable :class:`Purifier` trained now / from the
    cache, anything else wrapped with ``as_purifier`` and its undeclared properties probed on
    ``sample`` (recorded in the returned ``config["properties"]``).

    Args:
        entry_point: ``"package.module:factory"`` returning a Purifier or a callable mapping
            images (N, C, H, W) in [0, 1] to the same.
        sample: images (N, C, H, W) in [0, 1] (probes use the first few), on ``device``.
        label: the purifier's name in rows and messages.
        differentiable, stochastic: declared properties (None: probed).
        seed: seed of the probes.

    Raises:
        ConfigError: the entry point cannot be imported or built, or returns no callable; its
            output breaks the purifier contract on the probe images.
    """
    settings = settings or TrainSettings()
    with preserved_rng():
        built = build_purifier(entry_point, kwargs)  # a factory, or the purifier itself
    if isinstance(built, Purifier) and built.trainable:
        return _trained_purifier(entry_point, kwargs, dataset, settings, built.needs_classifier,
                                 classifier, train_data, cache_dir, device, data_dir)
    purifier = as_purifier(built, differentiable=differentiable, stochastic=stochastic,
                           name=label)
    if isinstance(purifier, nn.Module):
        purifier = purifier.to(device).eval()
    properties = probe_properties(purifier, sample, seed=seed)
    properties.fill_unknown(purifier)
    key = stable_hash({"kind": "purifier", "entry_point": entry_point, "kwargs": kwargs,
                       "differentiable": purifier.differentiable,
                       "stochastic": purifier.stochastic, "weights": module_digest(built)})
    return Trained(purifier, key, ORIGIN, None,
                   {"entry_point": entry_point, "properties": properties.as_dict()})


def _trained_purifier(entry_point: str, kwargs: dict[str, Any], dataset: str,
                      settings: TrainSettings, needs: bool, classifier: Trained | None,
                      train_data: Callable[[], ImageDataset] | None,
                      cache_dir: str | Path | None, device: torch.device | str,
                      data_dir: str | Path | None) -> Trained:
    def build() -> Purifier:
        return call_entry_point(entry_point, kwargs, "purifier").to(device)

    classifier_key = classifier.key if (needs and classifier is not None) else None
    key = stable_hash({"v": CACHE_VERSION, "kind": "purifier", "entry_point": entry_point,
                       "kwargs": kwargs, "dataset": dataset, "train": settings.model_dump(),
                       "classifier": classifier_key, **_numerics_key(device)})
    target = model_cache_dir(cache_dir) / f"purifier-{safe_name(entry_point)}-{dataset}-{key}"

    def fit(module: nn.Module) -> dict[str, Any]:
        clf = classifier.module if classifier is not None else None
        train = _training_data(settings, train_data, data_dir)
        metrics = module.fit(train, settings, classifier=clf, device=device)  # type: ignore[operator]
        return {**metrics, "train_data": train.name}

    return _train_or_reuse(target, key, build, fit, "purifier", entry_point, device, settings,
                           {"dataset": dataset, "classifier_key": classifier_key,
                            "entry_point": entry_point, "kwargs": kwargs})
