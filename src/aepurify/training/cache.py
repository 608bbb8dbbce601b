"""Train-or-reuse: trained models are cached on disk, keyed by the hash of everything that
determines them (architecture, parameters, data set, training settings and, for purifiers trained
with the classifier, the classifier's own key). Changing any of these trains anew; re-running the
same config reuses the checkpoint. A checkpoint that no longer loads (code changed its
architecture) is retrained rather than trusted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..data import ImageDataset, cache_root
from ..errors import CheckpointError
from ..models import Classifier, create_classifier, load_classifier
from ..purifiers import Purifier, create_purifier, load_purifier, purifier_class
from ..utils import seed_everything, stable_hash
from .loops import accuracy, fit_classifier
from .settings import TrainSettings

log = logging.getLogger(__name__)

# Bump when training semantics change in a way the config does not show.
# 2: augmentation draws from its own seeded generator on the images' device (no longer kornia's
#    global-RNG draws); the resolved precision and compile setting join the key.
CACHE_VERSION = 2


@dataclass
class Trained:
    """A model ready for evaluation and where it came from.

    Attributes:
        module: the classifier or purifier (eval mode).
        key: cache key (hash of what determines the weights); "" for untrained transforms.
        origin: ``"trained"``, ``"cache"``, ``"checkpoint"`` or ``"untrained"``.
        path: checkpoint directory, if any.
        config: the checkpoint's config.json content (training metrics etc.), if any.
    """

    module: nn.Module
    key: str
    origin: str
    path: Path | None
    config: dict[str, Any]


def model_cache_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else cache_root() / "models"


def _from_cache(target: Path, key: str,
                load: Callable[[Path], tuple[nn.Module, dict[str, Any]]]) -> Trained | None:
    """The cached model at ``target``, or None when absent or unusable (then it is retrained)."""
    if not target.exists():
        return None
    try:
        module, config = load(target)
    except CheckpointError as exc:
        log.warning("retraining: cached %s is unusable (%s)", target, exc)
        return None
    log.info("reusing cached model %s", target)
    return Trained(module, key, "cache", target, config)


def _train_and_save(target: Path, build: Callable[[], nn.Module],
                    fit: Callable[[nn.Module], dict[str, Any]], *, kind: str, name: str,
                    metadata: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Build, fit and save atomically (a temporary folder renamed into place), so an
    interrupted training leaves no half-written checkpoint in the cache."""
    module = build()
    metrics = fit(module)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        save_checkpoint(module, tmp, kind=kind, name=name, metrics=metrics, **metadata)
        if target.exists():  # an unusable entry (see the callers), or a concurrent run's
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same training first: keep theirs
            log.info("%s was written concurrently; keeping that copy", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    module.eval()
    return module, {"metrics": metrics, **metadata}


def get_classifier(arch: str, dataset: str, *, params: dict[str, Any] | None = None,
                   settings: TrainSettings | None = None, checkpoint: str | Path | None = None,
                   train_data: Callable[[], ImageDataset] | None = None,
                   test_data: ImageDataset | None = None, cache_dir: str | Path | None = None,
                   device: torch.device | str = "cpu") -> Trained:
    """A trained classifier: from ``checkpoint``, from the cache, or trained now (and cached).

    Args:
        arch: registry name (``lenet``, ``small-cnn``, ``resnet18``, ``vgg11``).
        dataset: data set name; sets input shape, classes and normalisation.
        params: architecture keyword arguments.
        settings: training settings (used when training).
        checkpoint: a checkpoint directory to load instead of training.
        train_data: returns the training split (called only if training is needed).
        test_data: if given, test accuracy is measured after training and recorded.
        cache_dir: model cache (default ``$AEPURIFY_CACHE/models``).

    Raises:
        CheckpointError: the checkpoint is missing, corrupt, of another architecture or was
            trained on another data set.
    """
    params = dict(params or {})
    # keyed on what training computes on this device (bf16 on CUDA, fp32 on a CPU by default)
    settings = (settings or TrainSettings()).resolved(device)
    if checkpoint is not None:
        module, config = load_classifier(checkpoint, arch, map_location=device)
        if config.get("dataset") not in (None, dataset):
            raise CheckpointError(f"checkpoint {checkpoint} was trained on {config['dataset']}, "
                                  f"not {dataset}")
        return Trained(module, config.get("cache_key") or stable_hash(config), "checkpoint",
                       Path(checkpoint), config)
    key = stable_hash({"v": CACHE_VERSION, "kind": "classifier", "arch": arch, "params": params,
                       "dataset": dataset, "train": settings.model_dump()})
    target = model_cache_dir(cache_dir) / f"classifier-{arch}-{dataset}-{key}"
    cached = _from_cache(target, key, lambda p: load_classifier(p, arch, map_location=device))
    if cached is not None:
        return cached
    log.info("training classifier %s on %s (cache %s)", arch, dataset, target)

    def fit(model: nn.Module) -> dict[str, Any]:
        assert train_data is not None, "training needs train_data"
        metrics = fit_classifier(model, train_data(), settings, device=device)
        if test_data is not None:
            metrics["test_accuracy"] = accuracy(model, test_data, device=device,
                                                desc=f"test {arch}")
        return metrics

    def build() -> Classifier:
        seed_everything(settings.seed)
        return create_classifier(arch, dataset, **params).to(device)

    module, config = _train_and_save(
        target, build, fit, kind="classifier", name=arch,
        metadata={"dataset": dataset, "train": settings.model_dump(), "seed": settings.seed,
                  "cache_key": key})
    return Trained(module, key, "trained", target, config)


def get_purifier(name: str, dataset: str, *, params: dict[str, Any] | None = None,
                 settings: TrainSettings | None = None, checkpoint: str | Path | None = None,
                 classifier: Trained | None = None,
                 train_data: Callable[[], ImageDataset] | None = None,
                 cache_dir: str | Path | None = None, device: torch.device | str = "cpu"
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
        train_data: returns the training split (called only if training is needed).

    Raises:
        CheckpointError: bad checkpoint (see :func:`aepurify.purifiers.load_purifier`).
        ConfigError: unknown purifier or parameter.
    """
    params = dict(params or {})
    # keyed on what training computes on this device (bf16 on CUDA, fp32 on a CPU by default)
    settings = (settings or TrainSettings()).resolved(device)
    cls = purifier_class(name)
    if checkpoint is not None:
        module, config = load_purifier(checkpoint, name, map_location=device)
        return Trained(module, config.get("cache_key") or stable_hash(config), "checkpoint",
                       Path(checkpoint), config)
    if not cls.trainable:
        module = create_purifier(name, dataset, **params).to(device).eval()
        return Trained(module, stable_hash({"name": name, "params": module.hparams}),
                       "untrained", None, {})
    classifier_key = classifier.key if (cls.needs_classifier and classifier) else None
    key = stable_hash({"v": CACHE_VERSION, "kind": "purifier", "name": name, "params": params,
                       "dataset": dataset, "train": settings.model_dump(),
                       "classifier": classifier_key})
    target = model_cache_dir(cache_dir) / f"purifier-{name}-{dataset}-{key}"
    cached = _from_cache(target, key, lambda p: load_purifier(p, name, map_location=device))
    if cached is not None:
        return cached
    log.info("training purifier %s on %s (cache %s)", name, dataset, target)

    def build() -> Purifier:
        seed_everything(settings.seed)
        return create_purifier(name, dataset, **params).to(device)

    def fit(module: nn.Module) -> dict[str, Any]:
        assert train_data is not None, "training needs train_data"
        clf = classifier.module if classifier is not None else None
        return module.fit(train_data(), settings, classifier=clf, device=device)  # type: ignore[operator]

    module, config = _train_and_save(
        target, build, fit, kind="purifier", name=name,
        metadata={"dataset": dataset, "train": settings.model_dump(), "seed": settings.seed,
                  "cache_key": key, "classifier_key": classifier_key})
    return Trained(module, key, "trained", target, config)
