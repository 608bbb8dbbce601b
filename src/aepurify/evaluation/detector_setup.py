"""The config side of detectors (MagNet; :mod:`aepurify.detectors`): hold the calibration images
out of the autoencoders' training, train (or reuse) a detector's own autoencoder, build each
purifier entry's detectors and fix their thresholds on the held-out clean training images before
any attack runs.

The calibration images are the last ``calibration_images`` of the training split (MagNet held out
5,000 MNIST training images for this; it took the first, the split's end is taken here as
APuDAE's calibration does). Every autoencoder a detector reads trains on the images before them
only: its ``train.max_images`` is capped, which is part of its cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import ImageDataset
from ..detectors import DetectorSet, create_detector
from ..errors import ConfigError
from ..purifiers import Purifier
from ..training import Trained, TrainSettings, get_purifier
from ..utils import stable_hash
from .config import ExperimentConfig, PurifierEntry


def held_out(settings: TrainSettings, calibration_images: int,
             train: Callable[[], ImageDataset]) -> TrainSettings:
    """``settings`` with ``max_images`` capped so that the last ``calibration_images`` of the
    training split stay out of training (unchanged when nothing is held out, or when the model
    trains on another source, ``settings.data``).

    Raises:
        ConfigError: the training split has no images left to train on.
    """
    if calibration_images <= 0 or settings.data is not None:
        return settings
    n = len(train())
    room = n - calibration_images
    if room < 1:
        raise ConfigError(f"the detectors hold out {calibration_images} calibration images, and "
                          f"the training split has only {n}")
    cap = room if settings.max_images is None else min(settings.max_images, room)
    return settings if cap == settings.max_images else settings.model_copy(
        update={"max_images": cap})


def reads_purifier(entry: PurifierEntry) -> bool:
    """Whether a detector of ``entry`` reads the entry's own purifier (no autoencoder of its own),
    so the purifier's training must leave the calibration images out."""
    return any(d.autoencoder is None for d in entry.detectors)


@dataclass
class DefenseDetectors:
    """One defense's calibrated detectors and what they came from.

    Attributes:
        detectors: the calibrated set.
        key: hash of everything that determines its decisions (kinds, options, autoencoder
            keys, false-positive rates, thresholds): joins the defense's row hashes.
        autoencoders: detector label -> its own autoencoder (not the purifier), if any.
        calibration: per detector, as :meth:`DetectorSet.calibrate` returns it.
    """

    detectors: DetectorSet
    key: str
    autoencoders: dict[str, Trained] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)


def build_detectors(config: ExperimentConfig, entry: PurifierEntry, purifier: Trained,
                    classifier: Trained, train: Callable[[], ImageDataset],
                    device: torch.device, common: dict[str, Any]) -> DefenseDetectors:
    """The calibrated detectors of ``entry`` in front of ``classifier``.

    Args:
        config: the validated config (data set, batch size).
        entry: a purifier entry with ``detectors``.
        purifier: the entry's ready purifier.
        classifier: the defended classifier (divergence detectors read its softmax).
        train: returns the training split (calibration images and autoencoder training).
        device: where the models run.
        common: the model cache arguments (``cache_dir``, ``data_dir``, ...).

    Raises:
        ConfigError: an autoencoder without a reconstruction error, too few calibration images
            for a false-positive rate, or a bad detector option.
    """
    built, rates, labels, autoencoders = [], [], [], {}
    shared: dict[str, Trained] = {}
    for d in entry.detectors:
        source: Trained = purifier
        if d.autoencoder is not None:
            ae = d.autoencoder
            spec = stable_hash(ae.model_dump(mode="json"))
            if spec not in shared:
                settings = held_out(ae.train, entry.calibration_images, train)
                shared[spec] = get_purifier(ae.name, config.dataset, params=ae.params,
                                            settings=settings, checkpoint=ae.checkpoint,
                                            classifier=classifier, train_data=train,
                                            device=device, **common)
            source = shared[spec]
            autoencoders[d.row_label] = source
        module: Purifier = source.module  # type: ignore[assignment]
        built.append(create_detector(d.name, module, **d.params))
        rates.append(d.false_positive_rate)
        labels.append(d.row_label)
    detectors = DetectorSet(built, labels).to(device)
    calibration: list[dict[str, Any]] = []
    data = train()
    for count in sorted({d.calibration_images for d in entry.detectors}):
        idx = [i for i, d in enumerate(entry.detectors) if d.calibration_images == count]
        part = DetectorSet([built[i] for i in idx], [labels[i] for i in idx])
        x_cal, _ = data.take(None, start=len(data) - count).tensors(slice(None), device)
        calibration += part.calibrate(x_cal, classifier.module, purifier.module,  # type: ignore[arg-type]
                                      [rates[i] for i in idx], config.batch_size)
    calibration.sort(key=lambda c: labels.index(c["label"]))
    key = stable_hash({"detectors": detectors.spec(), "purifier": purifier.key,
                       "classifier": classifier.key,
                       "autoencoders": {k: v.key for k, v in autoencoders.items()},
                       "calibration_images": [d.calibration_images for d in entry.detectors]})
    return DefenseDetectors(detectors, key, autoencoders, calibration)
