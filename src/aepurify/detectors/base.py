"""A detector is a score per image plus a threshold fixed on clean held-out images at a chosen
false-positive rate (MagNet, Meng and Chen, CCS 2017;
docs/purifiers/magnet.md).

An image is rejected when its score reaches the threshold. The threshold follows MagNet's
``Operator.get_thrs`` (reference code Trevillie/MagNet, ``worker.py``): with n clean calibration
scores and a false-positive rate f, it is the k-th largest score, k = floor(n f), so exactly k of
the calibration images (ties aside) are rejected; f = 0.001 per detector in MagNet's tests.
Thresholds are set once, before any attack runs (Tramer et al. 2020, "On adaptive attacks").

Detectors read what they need from :class:`Views`, which computes each reconstruction and each
set of logits once per batch, so several detectors on one autoencoder (MagNet's L1 and L2) and the
reformer itself share one pass, and a random autoencoder's reformer and detectors share one draw.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..purifiers import Purifier


class Views:
    """What the detectors of one defended classifier read for one batch of images, each computed
    once: the reconstruction of every autoencoder, and the classifier's logits on the images and
    on a reconstruction.

    Args:
        x: the images (N, C, H, W) in [0, 1] (with a graph when an attack differentiates).
        classifier: maps images to logits (N, K); needed by probability-divergence detectors.
        purifier: the defense's purifier, if any.
        purified: ``purifier(x)`` already computed (the reformer's output), if any: when the
            purifier's reconstruction is its output (MagNet), detectors on it reuse this tensor.
        logits: ``classifier(purified)`` already computed, if any.
    """

    def __init__(self, x: torch.Tensor, classifier: nn.Module | None = None,
                 purifier: Purifier | None = None, purified: torch.Tensor | None = None,
                 logits: torch.Tensor | None = None) -> None:
        self.x = x
        self.classifier = classifier
        self.purifier = purifier
        self._reconstructions: dict[int, torch.Tensor] = {}
        self._logits: dict[int, torch.Tensor] = {}
        self._input_logits: torch.Tensor | None = None
        if purifier is not None and purified is not None and purifier.reconstruction_is_output:
            self._reconstructions[id(purifier)] = purified
            if logits is not None:
                self._logits[id(purifier)] = logits

    def reconstruction(self, autoencoder: Purifier) -> torch.Tensor:
        """AE(x) (N, C, H, W) in [0, 1] for ``autoencoder`` (computed once per batch)."""
        key = id(autoencoder)
        if key not in self._reconstructions:
            self._reconstructions[key] = autoencoder.reconstruction(self.x)
        return self._reconstructions[key]

    def _classify(self, images: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise ConfigError("a probability-divergence detector needs the defended classifier")
        return self.classifier(images)

    def input_logits(self) -> torch.Tensor:
        """f(x), logits (N, K) of the classifier on the images themselves."""
        if self._input_logits is None:
            self._input_logits = self._classify(self.x)
        return self._input_logits

    def reconstruction_logits(self, autoencoder: Purifier) -> torch.Tensor:
        """f(AE(x)), logits (N, K) of the classifier on ``autoencoder``'s reconstruction."""
        key = id(autoencoder)
        if key not in self._logits:
            self._logits[key] = self._classify(self.reconstruction(autoencoder))
        return self._logits[key]


def magnet_threshold(scores: torch.Tensor, false_positive_rate: float) -> float:
    """MagNet's threshold: the k-th largest of the clean ``scores`` (n,), k = floor(n * f), so a
    score at or above it is rejected and k of the n calibration images are.

    Raises:
        ConfigError: f outside (0, 1), non-finite scores, or fewer than 1 / f scores (k would be
            0: MagNet's code then takes the smallest score and rejects everything).
    """
    if not 0 < false_positive_rate < 1:
        raise ConfigError(f"a false-positive rate must be in (0, 1); got {false_positive_rate}")
    scores = scores.detach().flatten().float()
    if not bool(torch.isfinite(scores).all()):
        raise ConfigError("a detector gave a non-finite score on a clean calibration image")
    n = int(scores.numel())
    k = math.floor(n * false_positive_rate + 1e-9)
    if k < 1:
        need = math.ceil(1 / false_positive_rate - 1e-9)
        raise ConfigError(f"a false-positive rate of {false_positive_rate:g} needs at least {need} "
                          f"clean calibration images; got {n}")
    return float(torch.topk(scores, k).values[-1])


class Detector(nn.Module):
    """Base of the detectors: a score per image and a threshold.

    Subclasses implement :meth:`score`. The threshold and the false-positive rate it was set
    for are buffers (NaN until :meth:`set_threshold`).

    Attributes:
        kind: the registry name.
        autoencoder: the purifier whose reconstruction the score reads (None for a detector that
            reads none).

    Shapes: ``score``: :class:`Views` of images (N, C, H, W) in [0, 1] -> scores (N,), higher
    meaning "less like a clean image".
    """

    kind: ClassVar[str] = ""

    def __init__(self, autoencoder: Purifier | None = None) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("false_positive_rate", torch.tensor(float("nan")))

    def score(self, views: Views) -> torch.Tensor:
        """The score of every image (N,); differentiable where the autoencoder and the
        classifier are. Override this."""
        raise NotImplementedError

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.threshold))

    def set_threshold(self, clean_scores: torch.Tensor, false_positive_rate: float) -> float:
        """Fix the threshold on clean held-out scores (n,) for ``false_positive_rate``
        (:func:`magnet_threshold`); returns it.

        Raises:
            ConfigError: see :func:`magnet_threshold`.
        """
        value = magnet_threshold(clean_scores, false_positive_rate)
        self.threshold.fill_(value)
        self.false_positive_rate.fill_(false_positive_rate)
        return value

    def fires(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) bool: which scores reach the threshold.

        Raises:
            ConfigError: the threshold was never set.
        """
        if not self.calibrated:
            raise ConfigError(f"the {self.describe()} detector has no threshold; calibrate it on "
                              "clean held-out images first")
        return scores >= self.threshold

    def params(self) -> dict[str, Any]:
        """The detector's own options (for labels, records and hashes)."""
        return {}

    def describe(self) -> str:
        """A short human name, e.g. ``reconstruction error L2``."""
        return self.kind
