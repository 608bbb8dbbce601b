"""The verdict of a row of a random purifier: N-evaluation (docs/methods.md, "Judging random defenses").

A random purifier classified once per example overstates robustness (AutoAttack PR #105): a
lucky draw counts as robust. The run stage therefore classifies every example of a random
purifier's rows (clean and attacked) ``n_eval`` times with fresh draws
(:func:`aepurify.attacks.n_evaluate`) and counts it correct only if every evaluation is
(all-of-n, DiffHammer's N-evaluation): that is the row's ``accuracy`` and ``correct``, which the
adaptive protocol combines. Single-draw and majority-vote verdicts (DiffBreak) are kept beside it
in the row's details, per example as packed bits, so the summary can give their per-example
worst case too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attacks import n_evaluate

RULES = ("all_of_n", "majority_vote", "single_draw")


def pack_bits(correct: np.ndarray) -> str:
    """A bool array (n,) as base64 text of its packed bits (n / 6 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The bool array (n,) that :func:`pack_bits` wrote."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


@dataclass(frozen=True)
class Verdict:
    """Per-example verdicts of one row under the three rules.

    Attributes:
        n_eval: evaluations per example.
        all_of_n, majority_vote, single_draw: (n,) bool, correct under each rule.
    """

    n_eval: int
    all_of_n: np.ndarray
    majority_vote: np.ndarray
    single_draw: np.ndarray

    def __and__(self, other: Verdict) -> Verdict:
        """The per-example worst case of two verdicts (restarts of one attack)."""
        return Verdict(self.n_eval, self.all_of_n & other.all_of_n,
                       self.majority_vote & other.majority_vote,
                       self.single_draw & other.single_draw)

    def spread(self, index: np.ndarray, n: int) -> Verdict:
        """This verdict of examples ``index`` (k,) spread over all n examples of a row that
        attacked only them (the others were already broken by all-of-n, so AutoAttack's order
        skipped them): all-of-n false elsewhere; majority vote and single draw true elsewhere,
        as this attack did not break those examples by either rule (an earlier one may not
        have either, so the worst case under those rules is an upper bound)."""
        out = []
        for values, fill in ((self.all_of_n, False), (self.majority_vote, True),
                             (self.single_draw, True)):
            full = np.full(n, fill, dtype=bool)
            full[index] = values
            out.append(full)
        return Verdict(self.n_eval, *out)

    def details(self) -> dict[str, Any]:
        """What a row records: ``n_eval``, the three accuracies, and the single-draw and
        majority-vote verdicts per example (packed; ``correct`` holds all-of-n)."""
        out: dict[str, Any] = {"n_eval": self.n_eval}
        for rule in RULES:
            values = getattr(self, rule)
            out[rule] = float(values.mean()) if values.size else float("nan")
        out["single_draw_correct"] = pack_bits(self.single_draw)
        out["majority_vote_correct"] = pack_bits(self.majority_vote)
        return out


def judge(defended: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_eval: int, seed: int,
          batch_size: int) -> Verdict:
    """Classify images x (N, C, H, W) in [0, 1] with labels y (N,) ``n_eval`` times on a random
    defended classifier (draw r seeded from ``seed``; the caller's random streams untouched)."""
    ev = n_evaluate(defended, x, y, n_eval=n_eval, seed=seed, batch_size=batch_size,
                    desc=f"N-evaluation x{n_eval}")
    return Verdict(n_eval, ev.robust("all_of_n"), ev.robust("majority_vote"),
                   ev.robust("single_draw"))


def rule_correct(correct: np.ndarray, details: dict[str, Any], rule: str) -> np.ndarray | None:
    """A row's per-example verdict under ``rule``: ``correct`` for all-of-n (and for any rule
    of a row evaluated once); None where the row was N-evaluated without keeping that rule."""
    if rule == "all_of_n" or int(details.get("n_eval") or 1) == 1:
        return correct
    packed = details.get(f"{rule}_correct")
    return None if packed is None else unpack_bits(packed, len(correct))
