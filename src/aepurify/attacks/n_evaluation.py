"""N-evaluation: judge adversarial examples on a random defense over several draws (docs/methods.md,
"Judging random defenses").

A random purifier evaluated once per example overstates robustness: a lucky draw that
classifies correctly counts as robust (AutoAttack PR #105). DiffHammer (NeurIPS 2024) evaluates
each example N times (default 10) and counts the attack successful if any evaluation
misclassifies it; DiffBreak (NeurIPS 2025) reports majority-vote accuracy beside single-draw
accuracy. :func:`n_evaluate` gives all three side by side; the adaptive verdict uses all-of-N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.wrapped import check_labels
from ..purifiers.randomness import seeded_rng
from ..utils import batches, derive_seed, progress

N_EVAL_STOCHASTIC = 10  # DiffHammer's default N


def default_n_eval(stochastic: bool) -> int:
    """Evaluations per adversarial example: 10 for a random defense, 1 for a deterministic one."""
    return N_EVAL_STOCHASTIC if stochastic else 1


@dataclass(frozen=True)
class NEvaluation:
    """Predictions of a defended classifier on N examples over ``n_eval`` draws.

    Attributes:
        predictions: (n_eval, N) int64 predicted classes, one row per draw.
        labels: (N,) int64 true classes.

    Accuracies are fractions in [0, 1] of the N examples:
    ``single_draw`` (the first draw: what one evaluation reports), ``majority_vote`` (the true
    class gets strictly more votes than any other class; a tie is not robust) and ``all_of_n``
    (every draw correct: DiffHammer's N-evaluation, the adaptive verdict).
    """

    predictions: np.ndarray
    labels: np.ndarray

    @property
    def n_eval(self) -> int:
        return int(self.predictions.shape[0])

    @property
    def correct(self) -> np.ndarray:
        """(n_eval, N) bool: draw r classified example i correctly."""
        return self.predictions == self.labels[None, :]

    @property
    def counts(self) -> np.ndarray:
        """(N,) int: how many of the n_eval draws classified each example correctly."""
        return self.correct.sum(0)

    def robust(self, rule: str = "all_of_n") -> np.ndarray:
        """(N,) bool per example under ``rule``: ``single_draw``, ``majority_vote`` or
        ``all_of_n``.

        Raises:
            ConfigError: another rule.
        """
        if rule == "single_draw":
            return self.correct[0]
        if rule == "all_of_n":
            return self.counts == self.n_eval
        if rule == "majority_vote":
            k = int(max(self.predictions.max(initial=0), self.labels.max(initial=0))) + 1
            votes = np.zeros((self.labels.shape[0], k), dtype=np.int64)
            for row in self.predictions:
                np.add.at(votes, (np.arange(row.shape[0]), row), 1)
            mine = self.counts
            votes[np.arange(self.labels.shape[0]), self.labels] = -1
            return mine > votes.max(1, initial=0)
        raise ConfigError(f"unknown N-evaluation rule {rule!r}; use single_draw, majority_vote "
                          "or all_of_n")

    @property
    def single_draw_accuracy(self) -> float:
        return float(self.robust("single_draw").mean()) if self.labels.size else float("nan")

    @property
    def majority_vote_accuracy(self) -> float:
        return float(self.robust("majority_vote").mean()) if self.labels.size else float("nan")

    @property
    def all_of_n_accuracy(self) -> float:
        return float(self.robust("all_of_n").mean()) if self.labels.size else float("nan")

    def summary(self) -> dict[str, float | int]:
        """``n``, ``n_eval`` and the three accuracies, for a result row."""
        return {"n": int(self.labels.shape[0]), "n_eval": self.n_eval,
                "single_draw": self.single_draw_accuracy,
                "majority_vote": self.majority_vote_accuracy,
                "all_of_n": self.all_of_n_accuracy}


def n_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_eval: int | None = None,
               stochastic: bool | None = None, seed: int = 0, batch_size: int = 256,
               desc: str = "N-evaluation") -> NEvaluation:
    """Classify each example ``n_eval`` times with fresh draws of the defense's randomness.

    Draw r runs with the global generators (torch on x's device, NumPy, Python) seeded by
    ``derive_seed(seed, "n-eval", r)``, restored afterwards: the result is reproducible and
    does not depend on the caller's random state (it does depend on ``batch_size``, which
    shapes the draws). Runs without gradients; put the model in eval mode first.

    Args:
        model: the defended classifier, (N, C, H, W) in [0, 1] -> logits (N, K), on x's device.
        x: adversarial (or clean) examples (N, C, H, W) in [0, 1].
        y: true classes (N,), integers in [0, K).
        n_eval: evaluations per example; None: :func:`default_n_eval` of ``stochastic``.
        stochastic: whether the defense is random; None: read ``model.purifier.stochastic``.
        seed: base seed of the draws.
        batch_size: images per forward pass.

    Returns:
        :class:`NEvaluation` with (n_eval, N) predictions.

    Raises:
        ConfigError: n_eval or batch_size below 1, or neither n_eval nor stochastic known.
        InputError: y not (N,) integer labels for x's N images, or a label outside [0, K).
    """
    if n_eval is None:
        if stochastic is None:
            stochastic = getattr(getattr(model, "purifier", None), "stochastic", None)
        if stochastic is None:
            raise ConfigError("n_evaluate needs n_eval, or stochastic=True/False when the model "
                              "has no purifier that declares it")
        n_eval = default_n_eval(bool(stochastic))
    if n_eval < 1 or batch_size < 1:
        raise ConfigError(f"n_eval and batch_size must be >= 1; got {n_eval}, {batch_size}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        check_labels(y, 2, x.shape[0])  # the count is known now; the range after one pass
    preds = torch.empty((n_eval, x.shape[0]), dtype=torch.int64)
    with torch.no_grad():
        for r in progress(range(n_eval), desc, total=n_eval, unit="draw"):
            with seeded_rng(derive_seed(seed, "n-eval", r), x.device):
                for sl in batches(x.shape[0], batch_size):
                    logits = model(x[sl])
                    if r == 0 and sl.start == 0:
                        check_labels(y, int(logits.shape[1]), x.shape[0])
                    preds[r, sl] = logits.argmax(1).cpu()
    return NEvaluation(preds.numpy(), y.detach().cpu().to(torch.int64).numpy())
