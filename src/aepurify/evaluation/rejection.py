"""The verdict of a row of a defense that rejects (MagNet's rule, Meng and Chen 2017;
docs/evaluation.md, "Defenses that reject"):

- a clean image is correct only if every detector accepts it and it is classified correctly;
- an adversarial image is correct if a detector rejects it, or if it is accepted and classified
  correctly.

Each evaluation's answer is a class or "rejected" (:class:`~aepurify.detectors.RejectionOutput`);
rejected becomes the true class on an adversarial row and a wrong class on a clean row, and the
usual rules follow (once for a deterministic defense; all-of-n, majority vote and single draw
over N evaluations for a random one). How often each detector fired, and the accuracy on the
accepted inputs, go into the row's details (``detection``), which ``detection.csv`` and the
report read.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..attacks import NEvaluation, n_evaluate
from ..detectors import DetectingClassifier, RejectionOutput
from ..utils import batches, seed_everything
from .verdicts import Verdict


@dataclass(frozen=True)
class DetectionCounts:
    """Per example, over the ``n_eval`` evaluations of one row.

    Attributes:
        labels: the detectors' labels.
        n_eval: evaluations per example.
        rejected: (N,) int, evaluations that rejected the example.
        accepted_right: (N,) int, evaluations that accepted it and classified it correctly.
        fired: (D, N) int, evaluations in which each detector fired on it.
    """

    labels: tuple[str, ...]
    n_eval: int
    rejected: np.ndarray
    accepted_right: np.ndarray
    fired: np.ndarray

    def where(self, mask: np.ndarray, other: DetectionCounts) -> DetectionCounts:
        """Per example: ``other``'s counts where ``mask`` (N,) is set, these elsewhere (the
        worst restart of an attack, as its images are kept)."""
        return DetectionCounts(self.labels, self.n_eval,
                               np.where(mask, other.rejected, self.rejected),
                               np.where(mask, other.accepted_right, self.accepted_right),
                               np.where(mask[None, :], other.fired, self.fired))

    def details(self, adversarial: bool) -> dict[str, Any]:
        """What a row records under ``detection``: rates over all evaluations (example x
        draw), the accuracy on accepted inputs (None if all were rejected), each detector's
        rate, and the per-example rejection counts (base64 of uint8)."""
        total = max(self.n_eval * int(self.rejected.shape[0]), 1)
        accepted = total - int(self.rejected.sum())
        return {"detection": {
            "adversarial": adversarial, "detectors": list(self.labels), "n_eval": self.n_eval,
            "rejection_rate": float(self.rejected.sum()) / total,
            "accepted_accuracy": float(self.accepted_right.sum()) / accepted if accepted else None,
            "per_detector": {lab: float(f.sum()) / total
                             for lab, f in zip(self.labels, self.fired)},
            "rejected": base64.b64encode(np.minimum(self.rejected, 255).astype(np.uint8)
                                         .tobytes()).decode()}}


def rejected_counts(details: dict[str, Any], n: int) -> np.ndarray | None:
    """The per-example rejection counts (n,) a row recorded (None for a row without detectors)."""
    packed = (details.get("detection") or {}).get("rejected")
    if packed is None:
        return None
    return np.frombuffer(base64.b64decode(packed), dtype=np.uint8)[:n].astype(np.int64)


@torch.no_grad()
def judge_rejecting(defense: DetectingClassifier, x: torch.Tensor, y: torch.Tensor, *,
                    adversarial: bool, n_eval: int, seed: int, batch_size: int
                    ) -> tuple[np.ndarray, Verdict | None, DetectionCounts]:
    """Classify images x (N, C, H, W) in [0, 1] with labels y (N,) by a defense that rejects,
    MagNet's way (see the module docstring); ``n_eval`` evaluations with fresh draws for a
    random purifier (seeded from ``seed``), one otherwise.

    Returns:
        Per example correct (N,) (all-of-n for a random purifier), the N-evaluation verdict (None
        for a deterministic purifier) and the detection counts.
    """
    out = RejectionOutput(defense).eval()
    stochastic = bool(defense.purifier.stochastic)
    if stochastic:
        preds = n_evaluate(out, x, y, n_eval=n_eval, seed=seed, batch_size=batch_size,
                           desc=f"N-evaluation x{n_eval}").predictions
    else:
        n_eval = 1
        seed_everything(seed)
        preds = torch.cat([out(x[sl]).argmax(1).cpu()
                           for sl in batches(x.shape[0], batch_size)]).numpy()[None, :]
    labels = y.detach().cpu().numpy().astype(np.int64)
    k = out.num_classes
    rejected = preds == k
    effective = np.where(rejected, labels[None, :] if adversarial else k, preds)
    ev = NEvaluation(effective, labels)
    fired = torch.cat(out.log, dim=1).view(len(defense.detectors), n_eval, -1).sum(1).numpy()
    counts = DetectionCounts(tuple(defense.detectors.labels), n_eval, rejected.sum(0),
                             ((preds == labels[None, :]) & ~rejected).sum(0), fired)
    verdict = None
    if stochastic:
        verdict = Verdict(n_eval, ev.robust("all_of_n"), ev.robust("majority_vote"),
                          ev.robust("single_draw"))
    return ev.robust("all_of_n"), verdict, counts
