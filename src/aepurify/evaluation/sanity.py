"""Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness",
section 5), run on the finished rows of a grid.

| check | passes when | a failure suggests |
|---|---|---|
| ``large-eps`` | PGD at a huge budget brings accuracy to about 0 | the attack cannot reach the classifier: masked or broken gradients |
| ``more-iterations`` | more PGD iterations do not raise accuracy | the attack is not converging: noisy or masked gradients |
| ``more-restarts`` | restarts do not raise accuracy (true by construction: worst case) | a bookkeeping error |
| ``square-vs-gradient`` | the gradient-free Square attack breaks no more than ``tolerance`` of the examples that every gradient attack left correct (AutoAttack's ``checks.py``) | gradient masking: the gradients lie |
| ``white-box-vs-gray-box`` | attacks that see the purifier are not weaker than gray-box or transfer attacks (not run for a defense that rejects: an attack through the purifier that ignores the detectors is expected to be caught) | the purifier's gradients (or surrogate) mislead the attacker |
| ``white-box-vs-bpda`` | the exact gradient (white-box) is not weaker than BPDA's surrogate gradient on the same attack (only where both ran) | shattered gradients: the purifier's exact gradient is masked (Athalye et al. 2018) |
| ``eot-samples`` | a random purifier was attacked with EOT over at least ``min_eot_samples`` draws | its robust accuracy is not adaptive yet |
| ``detector-aware-vs-oblivious`` | on a defense that rejects, the detector-aware attack is not weaker than any detector-oblivious attack at the same budget (rejection counted as correct in both) | the detector-aware attack is not converging or its loss is wrong: the detection claim is not tested yet |

Comparisons use the same images (the first n of both rows) and a tolerance; the row-against-row
comparisons read only rows that attacked every example (not those that attacked only what
earlier attacks left, :func:`aepurify.evaluation.cells.attack_what_stands`). A failed check is
written to ``sanity.csv`` and shown in the report with its numbers; a check that could not run
says why. A failure that a known mechanism explains (:mod:`aepurify.evaluation.findings`: a
single-step attack misled by the purifier's gradients, EOT draws fewer than asked by the
run's own settings) carries that explanation as its ``finding``: a property of the defense or
of the run's settings, not a bug.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .findings import seeing_vs_blind, single_step_finding
from .formats import write_records_csv
from .store import CLEAN, SANITY_PREFIX, ResultRow, eps_key

if TYPE_CHECKING:
    from .config import SanitySettings

SANITY_COLUMNS = ("check", "dataset", "classifier", "purifier", "passed", "detail", "finding")


@dataclass
class SanityResult:
    """One check for one defended classifier.

    Attributes:
        passed: True, False, or None when the check could not run (``detail`` says why).
        detail: the numbers behind the verdict.
        finding: for a failed check that a known mechanism explains, that explanation (what
            the failure says about the defense or the run's settings); empty otherwise.
    """

    check: str
    dataset: str
    classifier: str
    purifier: str
    passed: bool | None
    detail: str
    finding: str = ""

    @property
    def unexplained(self) -> bool:
        """Failed, and no known mechanism explains it: read it as a possible bug."""
        return self.passed is False and not self.finding


def _acc(row: ResultRow, n: int) -> float:
    return float(row.correct[:n].mean())


def _pair(a: ResultRow, b: ResultRow) -> tuple[float, float, int]:
    n = min(a.n, b.n)
    return _acc(a, n), _acc(b, n), n


def sanity_budgets(rows: list[ResultRow], settings: SanitySettings) -> tuple[float, float] | None:
    """The (eps, large eps) the sanity attacks ran at, read from their rows: the few-step PGD
    and Square rows run at eps only, the many-step PGD at eps and at the large budget. None
    when there are no sanity rows."""
    few, many = settings.steps[0], settings.steps[-1]
    at_eps = {f"{SANITY_PREFIX}pgd-{few}", f"{SANITY_PREFIX}pgd-{few}x{settings.restarts}",
              f"{SANITY_PREFIX}square-{settings.square_queries}"}
    eps = next((r.eps for r in rows if r.attack in at_eps), None)
    if eps is None:
        return None
    many_eps = sorted({eps_key(r.eps) for r in rows if r.attack == f"{SANITY_PREFIX}pgd-{many}"})
    return eps, next((e for e in many_eps if e != eps_key(eps)), eps)


def run_checks(rows: list[ResultRow], settings: SanitySettings,
               stochastic: dict[str, bool]) -> list[SanityResult]:
    """All checks for every (classifier, purifier) of the rows.

    Reads rows only: the sanity attacks' budgets come from their rows (see
    :func:`sanity_budgets`), the rest from ``settings``.

    Args:
        rows: the finished rows of the grid (sanity rows included when enabled).
        settings: tolerances, step counts and queries of the sanity attacks.
        stochastic: purifier label -> declared stochastic.
    """
    s = settings
    tol = s.tolerance
    by_defense: dict[tuple[str, str, str], list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.attack != CLEAN:
            by_defense[(r.dataset, r.classifier, r.purifier)].append(r)
    out: list[SanityResult] = []
    few, many = s.steps[0], s.steps[-1]
    budgets = sanity_budgets(rows, s) if s.enabled else None
    for (dataset, clf, pur), group in by_defense.items():
        def result(check: str, passed: bool | None, detail: str, finding: str = "") -> None:
            out.append(SanityResult(check, dataset, clf, pur, passed, detail, finding))

        def find(label: str, eps: float) -> ResultRow | None:
            return next((r for r in group if r.attack == label and
                         eps_key(r.eps) == eps_key(eps)), None)

        if s.enabled:
            eps, large = budgets or (float("nan"), float("nan"))  # no rows: the checks say so
            big = find(f"{SANITY_PREFIX}pgd-{many}", large)
            if big is None:
                result("large-eps", None, "no row: the sanity threat model does not apply")
            else:
                acc = _acc(big, big.n)
                result("large-eps", acc <= s.large_eps_max_accuracy,
                       f"accuracy {acc:.3f} under {big.threat_model} PGD-{many} at {s.norm} eps "
                       f"{large:g} (must be <= {s.large_eps_max_accuracy:g}; n={big.n})")
            lo, hi = find(f"{SANITY_PREFIX}pgd-{few}", eps), find(f"{SANITY_PREFIX}pgd-{many}", eps)
            if lo is None or hi is None:
                result("more-iterations", None, "no rows: the sanity threat model does not apply")
            else:
                a_lo, a_hi, n = _pair(lo, hi)
                result("more-iterations", a_hi <= a_lo + tol,
                       f"PGD-{few} {a_lo:.3f}, PGD-{many} {a_hi:.3f} at eps {eps:g} "
                       f"({lo.threat_model}; n={n}, tolerance {tol:g})")
            rs = find(f"{SANITY_PREFIX}pgd-{few}x{s.restarts}", eps)
            if lo is None or rs is None:
                result("more-restarts", None, "no rows: the sanity threat model does not apply")
            else:
                a_lo, a_rs, n = _pair(lo, rs)
                result("more-restarts", a_rs <= a_lo + tol,
                       f"PGD-{few} {a_lo:.3f}, {s.restarts} restarts {a_rs:.3f} (n={n})")
            _square_vs_gradient(group, s, eps, tol, result)
        whole = [r for r in group if not r.details.get("after")]
        if pur != CLEAN and any("detection" in r.details for r in group):
            # attacks through the purifier that ignore the detectors are expected to be
            # caught: the detector-aware check below is the comparison that holds
            result("white-box-vs-gray-box", None, "a defense that rejects: detector-oblivious "
                   "attacks through the purifier get caught by its detectors; see "
                   "detector-aware-vs-oblivious")
        elif pur != CLEAN:
            _white_vs_gray(whole, tol, result)
        if pur != CLEAN:
            _white_vs_bpda(whole, tol, result)
            _aware_vs_oblivious(whole, tol, result)
            if stochastic.get(pur):
                most = most_eot_draws(group)
                result("eot-samples", most >= s.min_eot_samples,
                       f"most EOT draws in any row: {most} (needs >= {s.min_eot_samples} for a "
                       "random purifier)", _fewer_draws_finding(most, s.min_eot_samples))
    return out


def _fewer_draws_finding(most: int, needed: int) -> str:
    """Why eot-samples failed when some EOT attack ran: the run's own settings asked for fewer
    draws (a time budget), so its EOT rows bound robust accuracy from above; "" when none ran
    (the purifier's randomness was never averaged: unexplained) or the check passed."""
    if most == 0 or most >= needed:
        return ""
    return (f"the run's settings attack this random purifier with {most} EOT draws, fewer than "
            f"{needed} (to keep the run short): its EOT rows bound robust accuracy from above "
            f"rather than measure it; eot_samples >= {needed} makes them adaptive")


def most_eot_draws(group: list[ResultRow]) -> int:
    """The most EOT draws any row of a defense averaged its gradients over: a ``+eot`` threat
    model's samples, an APGD's ``eot_iter``, AutoAttack's ``rand`` version (20)."""
    most = max((r.details.get("eot_samples") or 0 for r in group
                if r.threat_model.endswith("+eot")), default=0)
    for r in group:
        params = r.details.get("attack_params", {})
        most = max(most, int(params.get("eot_iter", 0)))
        if params.get("version") == "rand":
            most = max(most, 20)
    return most


def _square_vs_gradient(group: list[ResultRow], s: SanitySettings, eps: float, tol: float,
                        result: Any) -> None:
    """AutoAttack's check (``checks.py``): the gradient-free Square attack must not break more
    than ``tol`` of the examples that every gradient attack at ``eps`` left correct. Compared
    per example, so it reads rows that attacked every example and rows that attacked only what
    earlier ones left alike (Square last in AutoAttack's order)."""
    at_eps = [r for r in group if eps_key(r.eps) == eps_key(eps)]
    sq = next((r for r in at_eps if r.attack == f"{SANITY_PREFIX}square-{s.square_queries}"),
              None)
    what = f"Square ({s.square_queries} queries, {sq.threat_model})" if sq else ""
    if sq is None:  # else any gradient-free row at eps (black-box admits no other)
        sq = next((r for r in at_eps if r.threat_model.split("+")[0] == "black-box"), None)
        what = f"{sq.attack} ({sq.threat_model})" if sq else ""
    grads = [r for r in at_eps if r.threat_model.split("+")[0] != "black-box"]
    if sq is None or not grads:
        result("square-vs-gradient", None, "no Square or gradient rows at the sanity budget")
        return
    n = min(r.n for r in (sq, *grads))
    left = np.ones(n, dtype=bool)
    for r in grads:
        left &= r.correct[:n]
    after = left & sq.correct[:n]
    gain = float(left.mean() - after.mean())
    result("square-vs-gradient", gain <= tol,
           f"{what} breaks {gain:.3f} of the examples every gradient attack left correct: "
           f"robust accuracy {left.mean():.3f} after the {len(grads)} gradient rows at eps "
           f"{eps:g}, {after.mean():.3f} with Square (n={n}, tolerance {tol:g})")


def _worst_excess(groups: list[tuple[str, list[ResultRow], list[ResultRow]]]
                  ) -> tuple[float, str, int]:
    """Over (where, attacks that should be stronger, attacks they must not be weaker than):
    the largest accuracy excess of the strongest row of the first list over any row of the
    second (each pair on the images both ran), where it happened, and how many pairs were
    compared."""
    worst_gap, worst_detail, compared = -1.0, "", 0
    for where, strong, weak in groups:
        if not strong or not weak:
            continue
        best = min(strong, key=lambda r: r.accuracy)
        for other in weak:
            a_best, a_other, n = _pair(best, other)
            compared += 1
            if a_best - a_other > worst_gap:
                worst_gap = a_best - a_other
                worst_detail = (f"{where}: {best.threat_model} {best.attack} {a_best:.3f} vs "
                                f"{other.threat_model} {other.attack} {a_other:.3f} (n={n})")
    return worst_gap, worst_detail, compared


def _white_vs_gray(group: list[ResultRow], tol: float, result: Any) -> None:
    """Attacks that see the purifier must not be weaker than gray-box / transfer ones; a
    failure only single-step attacks show is explained (:func:`single_step_finding`)."""
    comparisons = seeing_vs_blind(group)
    if not comparisons:
        result("white-box-vs-gray-box", None, "no attack ran under both a purifier-aware and a "
                                              "gray-box/transfer threat model")
        return
    worst = max(comparisons, key=lambda c: c.gap)
    passed = worst.gap <= tol
    result("white-box-vs-gray-box", passed,
           f"largest excess of a purifier-aware attack over gray-box/transfer: {worst.gap:+.3f} "
           f"at {worst.seeing.attack} {worst.seeing.norm} eps {worst.seeing.eps:g}: "
           f"{worst.seeing.threat_model} {worst.a_seeing:.3f} vs {worst.blind.threat_model} "
           f"{worst.a_blind:.3f} (n={worst.n}) ({len(comparisons)} comparisons, tolerance "
           f"{tol:g})", "" if passed else single_step_finding(group, tol))


def _white_vs_bpda(group: list[ResultRow], tol: float, result: Any) -> None:
    """The exact gradient must not be a weaker attack than BPDA's surrogate gradient: compared
    per (attack, norm, eps) between white-box and bpda (and white-box+eot and bpda+eot); no
    result where the purifier never met both."""
    cells: dict[tuple[str, str, float, bool], dict[str, ResultRow]] = defaultdict(dict)
    for r in group:
        base, eot = r.threat_model.split("+")[0], r.threat_model.endswith("+eot")
        if base in ("white-box", "bpda"):
            cells[(r.attack, r.norm, eps_key(r.eps), eot)][base] = r
    worst_gap, worst_detail, compared = _worst_excess([
        (f"{attack} {norm} eps {eps:g}", [tms["white-box"]], [tms["bpda"]])
        for (attack, norm, eps, _), tms in cells.items() if len(tms) == 2])
    if compared:
        result("white-box-vs-bpda", worst_gap <= tol,
               f"largest excess of the exact-gradient attack over BPDA: {worst_gap:+.3f} at "
               f"{worst_detail} ({compared} comparisons, tolerance {tol:g})")


def _aware_vs_oblivious(group: list[ResultRow], tol: float, result: Any) -> None:
    """On a defense that rejects, the detector-aware attack must not be weaker than the
    detector-oblivious attacks (gray-box, white-box, ...): compared per (norm, eps) between the
    strongest detector-aware row and every other row at that budget; no result where no
    detector-aware row ran."""
    budgets: dict[tuple[str, float], list[ResultRow]] = defaultdict(list)
    for r in group:
        budgets[(r.norm, eps_key(r.eps))].append(r)

    def aware(r: ResultRow) -> bool:
        return r.threat_model.split("+")[0] == "detector-aware"

    worst_gap, worst_detail, compared = _worst_excess([
        (f"{norm} eps {eps:g}", [r for r in rows if aware(r)], [r for r in rows if not aware(r)])
        for (norm, eps), rows in budgets.items()])
    if compared:
        result("detector-aware-vs-oblivious", worst_gap <= tol,
               f"largest excess of the detector-aware attack over a detector-oblivious one: "
               f"{worst_gap:+.3f} at {worst_detail} ({compared} comparisons, tolerance {tol:g})")


def write_sanity_csv(results: list[SanityResult], path: Path) -> Path:
    """``sanity.csv`` with the columns of :data:`SANITY_COLUMNS` (passed: true/false/empty;
    finding: the explanation of a failed check, where a known mechanism gives one)."""
    def convert(rec: dict[str, Any]) -> dict[str, Any]:
        rec["passed"] = "" if rec["passed"] is None else str(rec["passed"]).lower()
        return rec

    return write_records_csv(results, SANITY_COLUMNS, path, convert)
