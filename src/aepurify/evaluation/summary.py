"""The adaptive protocol: per-example worst case over every attack and threat model.

Purifier defenses look strong under gray-box attacks and fall under adaptive ones (Athalye,
Carlini and Wagner 2018; Tramer et al. 2020). For each (classifier, purifier, norm, eps) this
module combines the finished rows image by image:

- ``graybox_robust``: the fraction of images that survive every gray-box attack;
- ``adaptive_robust``: the fraction that survive every attack under every threat model (gray-box,
  transfer, white-box, bpda, eot, black-box, the purifier's own adaptive attacks).

Both are computed on the same images (the first ``n``, where ``n`` is the smallest row size in
the group), so ``adaptive_robust <= graybox_robust`` holds by construction: an image counts as
robust only if it survives the worst attack it met. Sanity rows at the config's budgets count
(they are attacks like any other); the sanity check's huge budget gets no summary line.

For a defense that rejects (detectors), every row already counts rejection MagNet's way (a
rejected adversarial image is correct, a rejected clean image an error), and
``clean_rejection_rate`` gives the fraction of clean evaluations its detectors rejected on the
same images, beside the robust accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .formats import write_records_csv
from .rejection import rejected_counts
from .store import CLEAN, SANITY_PREFIX, ResultRow, eps_key
from .verdicts import rule_correct

SUMMARY_COLUMNS = ("dataset", "classifier", "purifier", "norm", "eps", "n", "clean",
                   "graybox_robust", "adaptive_robust", "worst_attack", "worst_accuracy",
                   "attacks", "n_eval", "adaptive_majority_vote", "adaptive_single_draw",
                   "clean_rejection_rate")


@dataclass
class SummaryRow:
    """One (classifier, purifier, norm, eps) of the adaptive protocol.

    Attributes:
        n: images combined (the first n test images).
        clean: clean accuracy on those images.
        graybox_robust: per-example worst case over the gray-box rows (NaN if none).
        adaptive_robust: per-example worst case over every row.
        worst_attack: the single row (``threat model / attack``) with the lowest accuracy, among
            the rows that attacked every example.
        worst_accuracy: that row's accuracy on the n images.
        attacks: how many rows were combined.
        n_eval: evaluations per example of a random purifier's rows (N-evaluation; 1 for a
            deterministic one). ``clean``, ``graybox_robust`` and ``adaptive_robust`` count an
            example of a random purifier only if all n_eval evaluations are correct.
        adaptive_majority_vote, adaptive_single_draw: the adaptive robust accuracy under the
            majority-vote and single-draw rules (NaN for a deterministic purifier).
        clean_rejection_rate: for a defense with detectors, the fraction of the clean
            evaluations of the n images that a detector rejected (NaN for one without).
    """

    dataset: str
    classifier: str
    purifier: str
    norm: str
    eps: float
    n: int
    clean: float
    graybox_robust: float
    adaptive_robust: float
    worst_attack: str
    worst_accuracy: float
    attacks: int
    n_eval: int = 1
    adaptive_majority_vote: float = float("nan")
    adaptive_single_draw: float = float("nan")
    clean_rejection_rate: float = float("nan")


def summarize(rows: list[ResultRow]) -> list[SummaryRow]:
    """The adaptive-protocol summary of finished rows, one entry per (classifier, purifier,
    norm, eps) that has attack rows."""
    clean: dict[tuple[str, str], ResultRow] = {}
    groups: dict[tuple, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.attack == CLEAN:
            clean[(r.classifier, r.purifier)] = r
        else:
            groups[(r.dataset, r.classifier, r.purifier, r.norm, eps_key(r.eps))].append(r)
    out = []
    for (dataset, clf, pur, norm, eps), group in groups.items():
        if all(r.attack.startswith(SANITY_PREFIX) for r in group):
            continue  # a sanity-only budget (the huge one): a check, not a robustness claim
        n = min(r.n for r in group)
        clean_row = clean.get((clf, pur))
        if clean_row is not None:
            n = min(n, clean_row.n)
        survive_all = np.ones(n, dtype=bool)
        survive_gray = np.ones(n, dtype=bool)
        has_gray = False
        # the strongest single attack among the rows that attacked every example (a row that
        # attacked only what earlier ones left holds a cumulative figure, not its own)
        worst = min([r for r in group if not r.details.get("after")] or group,
                    key=lambda r: r.correct[:n].mean())
        for r in group:
            survive_all &= r.correct[:n]
            if r.threat_model == "gray-box":
                survive_gray &= r.correct[:n]
                has_gray = True
        n_eval = max(int(r.details.get("n_eval") or 1) for r in group)
        out.append(SummaryRow(
            dataset=dataset, classifier=clf, purifier=pur, norm=norm, eps=eps, n=n,
            clean=float(clean_row.correct[:n].mean()) if clean_row is not None else float("nan"),
            graybox_robust=float(survive_gray.mean()) if has_gray else float("nan"),
            adaptive_robust=float(survive_all.mean()),
            worst_attack=f"{worst.threat_model} / {worst.attack}",
            worst_accuracy=float(worst.correct[:n].mean()), attacks=len(group),
            n_eval=n_eval,
            adaptive_majority_vote=_worst_case(group, n, "majority_vote", n_eval),
            adaptive_single_draw=_worst_case(group, n, "single_draw", n_eval),
            clean_rejection_rate=clean_rejection(clean_row, n)))
    return out


def clean_rejection(clean_row: ResultRow | None, n: int) -> float:
    """The fraction of the clean evaluations of the first n images that a detector rejected
    (NaN for a defense without detectors)."""
    counts = rejected_counts(clean_row.details, n) if clean_row is not None else None
    if counts is None or not len(counts):
        return float("nan")
    n_eval = int(clean_row.details["detection"].get("n_eval") or 1)  # type: ignore[union-attr]
    return float(counts.sum()) / (n_eval * len(counts))


def _worst_case(group: list[ResultRow], n: int, rule: str, n_eval: int) -> float:
    """Adaptive robust accuracy of a random purifier's rows under another N-evaluation rule
    (NaN for rows evaluated once, or when a row did not keep that rule)."""
    if n_eval == 1:
        return float("nan")
    survive = np.ones(n, dtype=bool)
    for r in group:
        correct = rule_correct(r.correct, r.details, rule)
        if correct is None:
            return float("nan")
        survive &= correct[:n]
    return float(survive.mean())


def write_summary_csv(summary: list[SummaryRow], path: Path) -> Path:
    """``summary.csv`` with the columns of :data:`SUMMARY_COLUMNS`."""
    def convert(rec: dict[str, Any]) -> dict[str, Any]:
        for k in ("clean", "graybox_robust", "adaptive_robust", "worst_accuracy",
                  "adaptive_majority_vote", "adaptive_single_draw", "clean_rejection_rate"):
            rec[k] = "" if np.isnan(rec[k]) else round(rec[k], 6)
        return rec

    return write_records_csv(summary, SUMMARY_COLUMNS, path, convert)
