"""Train-or-reuse, the part every model shares, and classifiers: trained models are cached on
disk, keyed by the hash of everything that determines them (architecture, parameters, data set,
training settings). Changing any of these trains anew; re-running the same config reuses the
checkpoint. A checkpoint that no longer loads (code changed its architecture) is retrained
rather than trusted.

It knows no purifier (:mod:`aepurify.training.cache` adds them): a purifier's training that
needs a classifier of its own (the feature-loss DAE's feature extractor) gets it here without
an import circle through the purifier registry.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..data import ImageDataset, cache_root, load_training_data
from ..errors import CheckpointError
from ..models import Classifier, create_classifier, default_train, is_pretrained, load_classifier
from ..utils import (TRAIN_THREADS, preserved_rng, seed_everything, stable_hash, train_threads,
                     training_numerics)
from .data_parallel import active_data_parallel, checkpoint_written, writes_checkpoints
from .loops import accuracy
from .recipes import fit_classifier
from .settings import TrainSettings, with_defaults

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
        origin: ``"trained"``, ``"cache"``, ``"checkpoint"``, ``"pretrained"`` (packaged
            weights, e.g. efficientnet-lite0) or ``"untrained"``.
        path: checkpoint directory, if any.
        config: the checkpoint's config.json content (training metrics etc.), if any.
    """

    module: nn.Module
    key: str
    origin: str
    path: Path | None
    config: dict[str, Any]


# The cache of the model being trained, for the models its training gets in turn (a feature-loss
# DAE's feature extractor): ``fit`` takes no cache directory, so get_purifier sets it around fit.
_TRAINING_CACHE_DIR: ContextVar[Path | None] = ContextVar("training_cache_dir", default=None)


def model_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The model cache: ``cache_dir``, else the cache of the model whose training asks (see
    :data:`_TRAINING_CACHE_DIR`), else ``$AEPURIFY_CACHE/models``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return _TRAINING_CACHE_DIR.get() or cache_root() / "models"


@contextmanager
def training_in(cache_dir: str | Path | None) -> Iterator[None]:
    """Inside the block, models a training gets in turn go to the cache ``cache_dir`` (see
    :data:`_TRAINING_CACHE_DIR`)."""
    token = _TRAINING_CACHE_DIR.set(model_cache_dir(cache_dir))
    try:
        yield
    finally:
        _TRAINING_CACHE_DIR.reset(token)


def _training_data(settings: TrainSettings, train_data: Callable[[], ImageDataset] | None,
                   data_dir: str | Path | None) -> ImageDataset:
    """What a model trains on: ``settings.data`` if it names a source, else ``train_data()``.
    Sources are made anew per model (crops are cheap next to training, and a data set held for
    the whole run would keep hundreds of MB of 224 px crops alive)."""
    if settings.data is not None:
        return load_training_data(settings.data, data_dir)
    assert train_data is not None, "training needs train_data or settings.data"
    return train_data()


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


def _numerics_key(device: torch.device | str) -> dict[str, Any]:
    """What the cache key adds about the arithmetic: a CPU thread count other than the pinned
    default trains other weights (see aepurify.utils.training_numerics)."""
    threads = train_threads() if torch.device(device).type == "cpu" else TRAIN_THREADS
    key: dict[str, Any] = {"train_threads": threads} if threads != TRAIN_THREADS else {}
    dp = active_data_parallel()
    if dp is not None:  # trained by several ranks: other batches per BatchNorm, other sums
        key["data_parallel"] = dp.world
    return key


def classifier_fitter(settings: TrainSettings, train_data: Callable[[], ImageDataset] | None,
                      data_dir: str | Path | None, test_data: ImageDataset | None,
                      device: torch.device | str, label: str
                      ) -> Callable[[nn.Module], dict[str, Any]]:
    """The training step of a classifier for :func:`_train_and_save`: fit it on the training
    data with ``settings``, then measure its accuracy on ``test_data`` (when given); returns
    the metrics."""
    def fit(model: nn.Module) -> dict[str, Any]:
        train = _training_data(settings, train_data, data_dir)
        metrics = {**fit_classifier(model, train, settings, device=device),
                   "train_data": train.name}
        if test_data is not None:
            metrics["test_accuracy"] = accuracy(model, test_data, device=device,
                                                desc=f"test {label}")
            metrics["test_images"] = len(test_data)
        return metrics

    return fit


def _train_and_save(target: Path, build: Callable[[], nn.Module],
                    fit: Callable[[nn.Module], dict[str, Any]], *, kind: str, name: str,
                    device: torch.device | str, metadata: dict[str, Any]
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Build, fit and save atomically (a temporary folder renamed into place), so an
    interrupted training leaves no half-written checkpoint in the cache. The caller's random
    streams are left as they were: a model trained on first use inside another's training (a
    feature extractor) must not change that one's draws, or its weights would depend on the
    cache's state. CPU training runs with pinned threads (``training_numerics``), recorded as
    ``environment`` in the checkpoint."""
    with preserved_rng(), training_numerics(device) as numerics:
        module = build()
        metrics = fit(module)
    metadata = {**metadata, "environment": numerics}
    if writes_checkpoints():  # in a data-parallel training, rank 0 writes; the others wait
        _save_atomically(module, target, kind=kind, name=name, metrics=metrics, **metadata)
    checkpoint_written()
    module.eval()
    return module, {"metrics": metrics, **metadata}


def _save_atomically(module: nn.Module, target: Path, **meta: Any) -> None:
    """Save into a temporary folder beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        save_checkpoint(module, tmp, **meta)
        if target.exists():  # an unusable entry (see the callers), or a concurrent run's
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same training first: keep theirs
            log.info("%s was written concurrently; keeping that copy", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def get_classifier(arch: str, dataset: str, *, params: dict[str, Any] | None = None,
                   settings: TrainSettings | None = None, checkpoint: str | Path | None = None,
                   train_data: Callable[[], ImageDataset] | None = None,
                   test_data: ImageDataset | None = None, cache_dir: str | Path | None = None,
                   device: torch.device | str = "cpu", data_dir: str | Path | None = None
                   ) -> Trained:
    """A trained classifier: from ``checkpoint``, from the cache, or trained now (and cached).

    Args:
        arch: registry name (``lenet``, ``small-cnn``, ``resnet18``, ``vgg11``).
        dataset: data set name; sets input shape, classes and normalisation.
        params: architecture keyword arguments.
        settings: training settings (used when training).
        checkpoint: a checkpoint directory to load instead of training.
        train_data: returns the training split (called only if training is needed and
            ``settings.data`` names no other source).
        test_data: if given, test accuracy is measured on it after training and recorded, with
            the number of images (``test_accuracy``, ``test_images``); pass the whole test
            split.
        cache_dir: model cache (default ``$AEPURIFY_CACHE/models``).
        data_dir: data folder for a ``settings.data`` source.

    Raises:
        CheckpointError: the checkpoint is missing, corrupt, of another architecture or was
            trained on another data set.
    """
    params = dict(params or {})
    # the architecture's own settings where the config gives none (airbench's recipe), keyed
    # on what training computes on this device (precision auto: bf16 on CUDA and on CPUs with
    # bf16 units, fp32 elsewhere)
    settings = with_defaults(settings, default_train(arch)).resolved(device)
    if checkpoint is not None:
        module, config = load_classifier(checkpoint, arch, map_location=device)
        if config.get("dataset") not in (None, dataset):
            raise CheckpointError(f"checkpoint {checkpoint} was trained on {config['dataset']}, "
                                  f"not {dataset}")
        return Trained(module, config.get("cache_key") or stable_hash(config), "checkpoint",
                       Path(checkpoint), config)
    if is_pretrained(arch):  # packaged weights: nothing to train, nothing to cache
        module = create_classifier(arch, dataset, **params).to(device).eval()
        return Trained(module, stable_hash({"kind": "pretrained", "arch": arch, "params": params}),
                       "pretrained", None, {})
    key = stable_hash({"v": CACHE_VERSION, "kind": "classifier", "arch": arch, "params": params,
                       "dataset": dataset, "train": settings.model_dump(),
                       **_numerics_key(device)})
    target = model_cache_dir(cache_dir) / f"classifier-{arch}-{dataset}-{key}"
    cached = _from_cache(target, key, lambda p: load_classifier(p, arch, map_location=device))
    if cached is not None:
        return cached
    log.info("training classifier %s on %s (cache %s)", arch, dataset, target)

    fit = classifier_fitter(settings, train_data, data_dir, test_data, device, arch)

    def build() -> Classifier:
        seed_everything(settings.seed)
        return create_classifier(arch, dataset, **params).to(device)

    module, config = _train_and_save(
        target, build, fit, kind="classifier", name=arch, device=device,
        metadata={"dataset": dataset, "train": settings.model_dump(), "seed": settings.seed,
                  "cache_key": key})
    return Trained(module, key, "trained", target, config)
