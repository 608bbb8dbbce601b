"""The audit's ``detector=``: a defense that rejects, brought as any score function (or MagNet's
detectors), thresholded as MagNet's are (:mod:`aepurify.detectors`).

What the user gives is wrapped into a :class:`~aepurify.detectors.DetectorSet`; every detector
without a threshold gets one on the clean held-out ``calibration`` images at
``false_positive_rate``, before any attack runs. The audit then counts rejection MagNet's way in
every row and adds the ``detector-aware`` threat model (orthogonal PGD), provided gradients flow
from the scores to the images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..checks import check_images
from ..detectors import Detector, DetectorSet, ScoreDetector, Views, default_label
from ..errors import ConfigError
from ..purifiers import Purifier
from ..utils import stable_hash

DetectorLike = Union[Detector, DetectorSet, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class AuditDetectors:
    """The audited defense's detectors, calibrated.

    Attributes:
        detectors: the set.
        key: hash of their kinds, options, thresholds and (score functions) outputs on the
            first calibration images: joins the defense's row hashes.
        differentiable: gradients flow from every score to the images (else the
            detector-aware attack cannot run, and ``why`` says so).
        why: the reason the detector-aware threat model was planned or skipped.
        calibration: per detector: label, description, threshold, false-positive rate and
            calibration images (None where the user set the threshold).
    """

    detectors: DetectorSet
    key: str
    differentiable: bool
    why: str
    calibration: list[dict[str, Any]] = field(default_factory=list)


def _as_detectors(detector: DetectorLike | Sequence[DetectorLike]) -> DetectorSet:
    if isinstance(detector, DetectorSet):
        return detector
    items = list(detector) if isinstance(detector, (list, tuple)) else [detector]
    built: list[Detector] = []
    for i, d in enumerate(items):
        if isinstance(d, DetectorSet):
            built += list(d.detectors)  # type: ignore[arg-type]
        elif isinstance(d, Detector):
            built.append(d)
        else:
            name = getattr(d, "__name__", None) or type(d).__name__
            built.append(ScoreDetector(d, name if name != "<lambda>" else f"detector-{i}"))
    labels = [default_label(d) for d in built]
    if len(set(labels)) != len(labels):
        labels = [f"{lab}-{i}" for i, lab in enumerate(labels)]
    return DetectorSet(built, labels)


def prepare_detectors(detector: DetectorLike | Sequence[DetectorLike],
                      calibration: object | None, false_positive_rate: float,
                      classifier: nn.Module, purifier: Purifier, probe: torch.Tensor,
                      device: torch.device, batch_size: int) -> AuditDetectors:
    """Wrap, calibrate and probe the audit's detectors (see the module docstring).

    Args:
        detector: a :class:`~aepurify.detectors.Detector`, a
            :class:`~aepurify.detectors.DetectorSet`, any callable mapping images (N, C, H, W)
            in [0, 1] to a score per image (N,) (higher: less like a clean image), or a list of
            them; an input is rejected if any fires.
        calibration: clean held-out images (M, C, H, W) in [0, 1] (never the audited images)
            for the detectors without a threshold.
        false_positive_rate: the fraction of the calibration images each threshold rejects
            (MagNet: 0.001; needs M >= 1 / rate).
        classifier, purifier: the audited defense (divergence detectors read the classifier).
        probe: a few audited images, to probe the scores' gradients.
        device: where the models run.
        batch_size: images per calibration batch.

    Raises:
        ConfigError: a detector that is not callable, no calibration images for a detector
            without a threshold, too few of them for the rate, or scores of the wrong shape.
        InputError: calibration images that are not float (M, C, H, W) in [0, 1].
    """
    detectors = _as_detectors(detector).to(device).eval()
    todo = [i for i, d in enumerate(detectors.detectors) if not d.calibrated]
    info: list[dict[str, Any]] = []
    cal_key = None
    if todo:
        if calibration is None:
            raise ConfigError("detector= needs calibration= (clean held-out images, not the "
                              "audited ones) to set its threshold at false_positive_rate")
        x_cal = check_images(calibration, what="calibration").detach().to(device)
        if tuple(x_cal.shape[1:]) != tuple(probe.shape[1:]):
            raise ConfigError(f"calibration images have shape {tuple(x_cal.shape[1:])}; the "
                              f"audited images {tuple(probe.shape[1:])}")
        part = DetectorSet([detectors.detectors[i] for i in todo],  # type: ignore[misc]
                           [detectors.labels[i] for i in todo])
        info = part.calibrate(x_cal, classifier, purifier, [false_positive_rate] * len(todo),
                              batch_size)
        cal_key = stable_hash([float(x_cal.sum()), tuple(x_cal.shape)])
    differentiable, why = _probe_gradients(detectors, classifier, purifier, probe)
    with torch.no_grad():
        outputs = detectors.scores(Views(probe, classifier, purifier))
    key = stable_hash({"spec": detectors.spec(), "calibration": cal_key,
                       "outputs": [round(float(v), 6) for v in outputs.flatten()]})
    return AuditDetectors(detectors, key, differentiable, why, info)


def _probe_gradients(detectors: DetectorSet, classifier: nn.Module, purifier: Purifier,
                     probe: torch.Tensor) -> tuple[bool, str]:
    """Whether every detector's score carries a gradient back to the images, and why."""
    x = probe.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scores = detectors.scores(Views(x, classifier, purifier))
    dead = [label for label, s in zip(detectors.labels, scores) if not s.requires_grad]
    if dead:
        return False, (f"detector {', '.join(dead)}: its score carries no gradient to the "
                       "images (write it in torch operations), so the detector-aware attack "
                       "cannot run")
    return True, ("detectors: an input is rejected if any fires; orthogonal PGD fools the "
                  "classifier and keeps every score under its threshold (Bryniarski et al. "
                  "2022)")
