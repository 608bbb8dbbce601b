"""Analysis ``end-to-end``: does a purifier survive an attacker who differentiates through it?

Purification papers often report gray-box numbers (the attacker ignores the purifier) and claim
that the defense cannot simply be attacked end to end; Sivamani (arXiv 1912.04497) says the
feature-loss autoencoder "cannot be trivially trained end-to-end by the attacker". This analysis
puts each purifier's gray-box accuracy beside its accuracy under the end-to-end threat models of
the same run (white-box, bpda, their EOT forms, adaptive) for one attack and epsilon, on the
same test images, and states whether the claim holds:

- r = (worst end-to-end accuracy - undefended gray-box accuracy)
      / (gray-box accuracy - undefended gray-box accuracy),
  the share of the defense's gray-box gain that survives the end-to-end attack;
- ``holds`` if the end-to-end attack costs at most 0.05 of accuracy against gray-box, ``does not
  hold`` if r < 0.5 (the trivial attack removes more than half of the gain), ``partly``
  otherwise.

The numbers come from the run's rows; nothing is re-computed. Rows with fewer images (a
restricted attack entry) are compared with the gray-box result on the same first n images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..utils import parse_eps
from .analyses import ANALYSES, AnalysisResult
from .formats import fmt_eps, md_text
from .store import eps_key

if TYPE_CHECKING:
    from .experiment import Experiment
    from .store import ResultRow

NAME = "end-to-end"
END_TO_END = ("white-box", "bpda", "adaptive")


def _accuracy_on_first(row: ResultRow, n: int) -> float:
    """Accuracy of ``row`` on its first ``n`` images (its stored accuracy if it has no
    per-image record)."""
    correct = np.asarray(row.correct, dtype=bool)
    if len(correct) >= n > 0:
        return float(correct[:n].mean())
    return row.accuracy


def verdict(gray: float, worst: float, undefended: float | None) -> str:
    """``holds``, ``partly`` or ``does not hold`` (rule in the module docstring)."""
    if worst >= gray - 0.05:
        return "holds"
    base = undefended if undefended is not None else 0.0
    gain = gray - base
    if gain <= 0 or (worst - base) / gain < 0.5:
        return "does not hold"
    return "partly"


def end_to_end(exp: Experiment, rows: list[ResultRow], out_dir: Path, attack: str = "pgd",
               eps: float | str = 0.2, norm: str = "linf", purifiers: list[str] | None = None
               ) -> AnalysisResult:
    """Compare gray-box with end-to-end robust accuracy per purifier.

    Args:
        exp: the prepared experiment (unused; part of the analysis signature).
        rows: the run's finished rows.
        out_dir: output folder (nothing is written).
        attack: attack label to compare (the ``attack`` column).
        eps: the budget, on the [0, 1] pixel scale (the paper's 0.2 on MNIST by default; a
            fraction such as ``"8/255"`` is fine).
        norm: ``linf`` or ``l2``.
        purifiers: purifier labels to include (default: every purifier with the rows).

    Returns:
        A report section with one table row per (classifier, purifier) and a verdict.

    Raises:
        ConfigError: an epsilon that is not a number or a fraction.
    """
    try:
        eps = parse_eps(eps)
    except ValueError as exc:
        raise ConfigError(f"end-to-end: {exc}") from None
    def matches(r: ResultRow) -> bool:
        return r.attack == attack and r.norm == norm and eps_key(r.eps) == eps_key(eps)

    selected = [r for r in rows if matches(r)]
    gray = {(r.classifier, r.purifier): r for r in selected if r.threat_model == "gray-box"}
    lines = [f"Robust accuracy under {md_text(attack)} {md_text(norm)} eps {fmt_eps(eps)}: the "
             "attacker ignores the "
             "purifier (gray-box) or differentiates through it (white-box, bpda). Verdict on "
             "\"cannot be trivially trained end-to-end by the attacker\": `holds` if the end-to-"
             "end attack costs at most 0.05 against gray-box, `does not hold` if it removes more "
             "than half of the purifier's gain over the undefended classifier, `partly` "
             "otherwise. Accuracies are on the same first n test images.", "",
             "| classifier | purifier | n | undefended | gray-box | white-box | bpda | worst "
             "end-to-end | verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    data: dict[str, Any] = {}
    for (clf, pur), g in gray.items():
        if pur == "none" or (purifiers is not None and pur not in purifiers):
            continue
        e2e = [r for r in selected if (r.classifier, r.purifier) == (clf, pur)
               and r.threat_model.split("+")[0] in END_TO_END]
        if not e2e:
            continue
        n = min([g.n] + [r.n for r in e2e])
        undefended_row = gray.get((clf, "none"))
        undefended = _accuracy_on_first(undefended_row, n) if undefended_row else None
        gray_acc = _accuracy_on_first(g, n)
        by_tm = {r.threat_model: _accuracy_on_first(r, n) for r in e2e}
        worst_tm = min(by_tm, key=by_tm.get)  # type: ignore[arg-type]
        worst = by_tm[worst_tm]
        said = verdict(gray_acc, worst, undefended)

        def cell(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        lines.append(f"| {md_text(clf)} | {md_text(pur)} | {n} | {cell(undefended)} | "
                     f"{gray_acc:.3f} | {cell(by_tm.get('white-box'))} | "
                     f"{cell(by_tm.get('bpda'))} | {worst:.3f} ({md_text(worst_tm)}) | {said} |")
        data[f"{clf}/{pur}"] = {"n": n, "undefended": undefended, "gray-box": gray_acc,
                                **by_tm, "worst": worst, "worst_threat_model": worst_tm,
                                "verdict": said}
    if not data:
        lines.append(f"| - | - | - | - | - | - | - | - | no purifier has gray-box and end-to-end "
                     f"rows for {md_text(attack)} {md_text(norm)} {fmt_eps(eps)} |")
    return AnalysisResult("End-to-end attack versus gray-box", "\n".join(lines), [], data)


if NAME not in ANALYSES:  # idempotent: a re-import (tests, reloads) must not register twice
    ANALYSES.register(NAME)(end_to_end)
