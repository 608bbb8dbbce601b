"""Detectors: defenses that reject (MagNet, Meng and Chen, CCS 2017;
docs/purifiers/magnet.md).

A detector is a score per image plus a threshold fixed on clean held-out images at a chosen
false-positive rate; a defense with detectors rejects an input if any fires. Any purifier with a
reconstruction error (``Purifier.reconstructs``) can feed one.

    >>> from aepurify.detectors import DetectorSet, DetectingClassifier, create_detector
    >>> detectors = DetectorSet([create_detector("reconstruction", magnet, p=2),
    ...                          create_detector("reconstruction", magnet, p=1)])
    >>> detectors.calibrate(x_held_out, classifier, magnet, [0.001, 0.001])
    >>> defense = DetectingClassifier(classifier, magnet, detectors)
    >>> defense.decide(x).rejected          # (N,) bool
"""

from __future__ import annotations

from typing import Any

from ..purifiers import Purifier
from ..registry import Registry
from .base import Detector, Views, magnet_threshold
from .defense import Decision, DetectingClassifier, DetectorSet, RejectionOutput, default_label
from .scores import DivergenceDetector, ReconstructionErrorDetector, ScoreDetector, jensen_shannon

__all__ = ["DETECTORS", "Detector", "Views", "magnet_threshold", "Decision",
           "DetectingClassifier", "DetectorSet", "RejectionOutput", "default_label",
           "DivergenceDetector", "ReconstructionErrorDetector", "ScoreDetector", "jensen_shannon",
           "create_detector"]

DETECTORS: Registry[Detector] = Registry("detector")
DETECTORS.register("reconstruction")(ReconstructionErrorDetector)
DETECTORS.register("divergence")(DivergenceDetector)

# What aepurify passes to every detector factory itself; a config's params may not repeat it.
DETECTOR_ARGS = ("autoencoder",)


def create_detector(name: str, autoencoder: Purifier, **params: Any) -> Detector:
    """Build detector ``name`` (``reconstruction`` or ``divergence``) on ``autoencoder``'s
    reconstruction, uncalibrated.

    Raises:
        ConfigError: unknown name or parameter, or an autoencoder without a reconstruction
            error.
    """
    DETECTORS.check_params(name, params, supplied=DETECTOR_ARGS)
    return DETECTORS.create(name, autoencoder=autoencoder, **params)
