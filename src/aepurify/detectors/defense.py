"""A defended classifier that can reject: purifier + classifier + detectors (MagNet, Meng and
Chen, CCS 2017). An input is rejected if any detector fires.

- :class:`DetectorSet`: the detectors of one defense, their labels, their calibration.
- :class:`DetectingClassifier`: ``forward`` gives the logits of classifier(purifier(x)) (what a
  detector-oblivious attacker sees); :meth:`DetectingClassifier.decide` gives the logits, every
  detector's score and which inputs are rejected.
- :class:`RejectionOutput`: the defense's answer as K + 1 logits, the last one "rejected", for
  the evaluation's classification loop (N-evaluation included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..purifiers.base import DefendedClassifier, EvalWrapper, Purifier
from ..utils import batches
from .base import Detector, Views


class DetectorSet(nn.Module):
    """The detectors of one defense, each with a label; an input is rejected if any fires.

    Args:
        detectors: the detectors.
        labels: their names in reports (default: ``kind`` plus options, e.g. ``reconstruction-p2``);
            unique.

    Raises:
        ConfigError: no detectors, or repeated labels.
    """

    def __init__(self, detectors: Sequence[Detector], labels: Sequence[str] | None = None) -> None:
        super().__init__()
        if not detectors:
            raise ConfigError("a detector set needs at least one detector")
        labels = list(labels) if labels is not None else [default_label(d) for d in detectors]
        if len(set(labels)) != len(labels) or len(labels) != len(detectors):
            raise ConfigError(f"detector labels must be unique, one per detector; got {labels}")
        self.detectors = nn.ModuleList(detectors)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.detectors)

    def scores(self, views: Views) -> torch.Tensor:
        """Every detector's scores, (D, N)."""
        return torch.stack([d.score(views) for d in self.detectors])

    def thresholds(self) -> torch.Tensor:
        """(D,) thresholds (NaN where not set)."""
        return torch.stack([d.threshold for d in self.detectors])

    def fired(self, scores: torch.Tensor) -> torch.Tensor:
        """(D, N) bool: which detector fires on which input."""
        return torch.stack([d.fires(s) for d, s in zip(self.detectors, scores)])

    def rejected(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) bool: rejected by at least one detector."""
        return self.fired(scores).any(0)

    def normalized(self, scores: torch.Tensor) -> torch.Tensor:
        """(D, N): each score over its threshold; an input is accepted where all are below 1."""
        return scores / self.thresholds().clamp_min(1e-12).view(-1, 1)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, classifier: nn.Module | None, purifier: Purifier | None,
                  false_positive_rates: Sequence[float], batch_size: int = 500
                  ) -> list[dict[str, Any]]:
        """Fix every threshold on clean held-out images x (N, C, H, W) in [0, 1] (MagNet: images
        the autoencoders never trained on), one false-positive rate per detector.

        Returns:
            Per detector: ``label``, ``detector`` (its description), ``threshold``,
            ``false_positive_rate`` and ``calibration_images``.

        Raises:
            ConfigError: one rate per detector is needed; see also
                :func:`aepurify.detectors.base.magnet_threshold`.
        """
        if len(false_positive_rates) != len(self.detectors):
            raise ConfigError(f"calibration needs one false-positive rate per detector "
                              f"({len(self.detectors)}); got {len(false_positive_rates)}")
        parts = []
        shares = purifier is not None and purifier.reconstruction_is_output
        for sl in batches(x.shape[0], batch_size):
            xb = x[sl]
            purified = purifier(xb) if shares else None  # one draw for all its detectors
            parts.append(self.scores(Views(xb, classifier, purifier, purified)))
        scores = torch.cat(parts, dim=1)
        out = []
        for label, det, s, rate in zip(self.labels, self.detectors, scores, false_positive_rates):
            out.append({"label": label, "detector": det.describe(),
                        "threshold": det.set_threshold(s, rate), "false_positive_rate": rate,
                        "calibration_images": int(x.shape[0])})
        return out

    def spec(self) -> list[dict[str, Any]]:
        """What determines the set's decisions besides the models: label, kind, options,
        false-positive rate and threshold of each detector (for run records and row hashes)."""
        return [{"label": label, "kind": d.kind, "params": d.params(),
                 "false_positive_rate": float(d.false_positive_rate),
                 "threshold": float(d.threshold)}
                for label, d in zip(self.labels, self.detectors)]


def default_label(detector: Detector) -> str:
    """``reconstruction-l2``, ``divergence-t10``, or the score function's name."""
    if detector.kind == "reconstruction":
        return f"reconstruction-l{detector.params()['p']:g}"
    if detector.kind == "divergence":
        return f"divergence-t{detector.params()['temperature']:g}"
    return getattr(detector, "name", detector.kind)


@dataclass
class Decision:
    """A defense's answer for a batch.

    Attributes:
        logits: (N, K) of classifier(purifier(x)).
        scores: (D, N) detector scores.
        fired: (D, N) bool, which detector fires on which input.
        rejected: (N,) bool, rejected by at least one detector.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    fired: torch.Tensor
    rejected: torch.Tensor


class DetectingClassifier(DefendedClassifier):
    """Purifier, classifier and detectors as one defense (MagNet's reformer and detectors).

    ``forward`` is the defended classifier's logits, classifier(purifier(x)), ignoring the
    detectors: what every detector-oblivious threat model attacks. :meth:`decide` adds the
    detectors' verdict; the detectors read the purifier's output where it is their
    reconstruction (one pass, one random draw).

    Args:
        classifier: maps (N, C, H, W) in [0, 1] to logits (N, K).
        purifier: a :class:`~aepurify.purifiers.Purifier`.
        detectors: calibrated detectors.

    Shapes: forward (N, C, H, W) in [0, 1] -> logits (N, K).

    Raises:
        ConfigError: (decide) a detector without a threshold.
    """

    def __init__(self, classifier: nn.Module, purifier: Purifier, detectors: DetectorSet) -> None:
        super().__init__(classifier, purifier)
        self.detectors = detectors
        self.eval()

    def views(self, x: torch.Tensor, purified: torch.Tensor | None = None,
              logits: torch.Tensor | None = None) -> Views:
        """The detectors' :class:`Views` of x, reusing the purified images and their logits."""
        return Views(x, self.classifier, self.purifier, purified, logits)

    def decide(self, x: torch.Tensor) -> Decision:
        """The logits, the detectors' scores and which inputs are rejected, for x (N, C, H, W)
        in [0, 1]."""
        purified = self.purifier(x)
        logits = self.classifier(purified)
        scores = self.detectors.scores(self.views(x, purified, logits))
        fired = self.detectors.fired(scores)
        return Decision(logits, scores, fired, fired.any(0))


class RejectionOutput(EvalWrapper):
    """The answer of a :class:`DetectingClassifier` as K + 1 logits: the K classes, then
    "rejected", which wins the argmax exactly where a detector fires (so predicted class K means
    rejected). Keeps, per call, which detector fired on which input (``log``: (D, n) bool
    tensors on the CPU, in call order) and K (``num_classes``, after the first call).

    Shapes: (N, C, H, W) in [0, 1] -> (N, K + 1).
    """

    def __init__(self, defense: DetectingClassifier) -> None:
        super().__init__()
        self.defense = defense
        self.log: list[torch.Tensor] = []
        self.num_classes: int | None = None
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.defense.decide(x)
        self.num_classes = int(d.logits.shape[1])
        self.log.append(d.fired.cpu())
        high = d.logits.amax(1, keepdim=True) + 1
        low = d.logits.amin(1, keepdim=True) - 1
        return torch.cat([d.logits, torch.where(d.rejected.view(-1, 1), high, low)], dim=1)
