"""Failed gradient-masking checks that a known mechanism explains: findings, not bugs.

A failed check says the evaluation may overstate robustness; sometimes the rows themselves show
why it failed and that the worst case is not misled. :func:`seeing_vs_blind` lists the
comparisons of the ``white-box-vs-gray-box`` check; :func:`single_step_finding` explains its
failure when only single-step attacks are the weaker ones:

- **single-step attacks through a purifier that masks gradients.** FGSM takes one step along
  the gradient at x. Through a purifier whose gradient at x points the wrong way (JPEG's or
  bit-depth reduction's BPDA surrogate, an autoencoder trained to undo small perturbations),
  that one step lands worse than the same step crafted on the bare classifier (gray-box),
  while an iterative attack under the same threat model, which corrects its course, gets
  through: gradient masking of the kind Athalye et al. (ICML 2018) describe, seen only by the
  single-step attack. It is explained when every comparison past the tolerance is a
  single-step attack and, at that budget, an iterative attack under the same purifier-aware
  threat model reaches an accuracy at or below the gray-box row it lost to (within the
  tolerance). The per-example worst case keeps the gray-box row either way, so the adaptive
  robust accuracy is not overstated.

No number is built in: the rule reads the rows, so it holds for any model and any run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attacks import gradient_free, single_step
from .store import ResultRow, eps_key

PURIFIER_GRADIENT_BASES = ("white-box", "bpda", "adaptive")


@dataclass(frozen=True)
class Comparison:
    """An attack under a threat model that sees the purifier against the same attack crafted
    without it, on the same first n images.

    Attributes:
        seeing: the purifier-aware row (white-box, bpda, adaptive; with +eot or +fixed).
        blind: the gray-box or transfer row.
        a_seeing, a_blind: their accuracies on the first n images.
        n: images compared.
    """

    seeing: ResultRow
    blind: ResultRow
    a_seeing: float
    a_blind: float
    n: int

    @property
    def gap(self) -> float:
        """How much weaker (higher accuracy) the purifier-aware attack is."""
        return self.a_seeing - self.a_blind


def _accuracy(row: ResultRow, n: int) -> float:
    return float(row.correct[:n].mean())


def seeing_vs_blind(rows: list[ResultRow]) -> list[Comparison]:
    """Per (attack label, norm, eps): the strongest purifier-aware row against each gray-box
    and transfer row of one defense (pass rows that attacked every example)."""
    cells: dict[tuple, dict[str, ResultRow]] = {}
    for r in rows:
        cells.setdefault((r.attack, r.norm, eps_key(r.eps)), {})[r.threat_model] = r
    out = []
    for tms in cells.values():
        seeing = [r for tm, r in tms.items() if tm.split("+")[0] in PURIFIER_GRADIENT_BASES]
        blind = [r for tm, r in tms.items() if tm in ("gray-box", "transfer")]
        if not seeing:
            continue
        best = min(seeing, key=lambda r: r.accuracy)
        for other in blind:
            n = min(best.n, other.n)
            out.append(Comparison(best, other, _accuracy(best, n), _accuracy(other, n), n))
    return out


def is_single_step(row: ResultRow) -> bool:
    """Whether a row's attack takes one gradient step (its registry name where the row records
    it, else its label)."""
    name = row.details.get("attack") or row.attack
    return single_step(str(name), row.details.get("attack_params") or {})


def _iterative_reach(rows: list[ResultRow], c: Comparison, tol: float
                     ) -> tuple[ResultRow, float] | None:
    """The strongest iterative gradient attack under ``c.seeing``'s threat model at its norm
    and budget, if it reaches ``c.a_blind`` (within ``tol``) on their common images."""
    candidates = [r for r in rows if r.threat_model == c.seeing.threat_model
                  and r.norm == c.seeing.norm and eps_key(r.eps) == eps_key(c.seeing.eps)
                  and not is_single_step(r)
                  and not gradient_free(str(r.details.get("attack") or r.attack))]
    best = None
    for r in candidates:
        n = min(r.n, c.blind.n)
        a_it, a_blind = _accuracy(r, n), _accuracy(c.blind, n)
        if a_it <= a_blind + tol and (best is None or a_it < best[1]):
            best = (r, a_it)
    return best


def single_step_finding(rows: list[ResultRow], tol: float) -> str:
    """The explanation of a failed ``white-box-vs-gray-box`` check when only single-step
    attacks are weaker through the purifier and iterative ones are not (module text); ""
    when the rows do not show that.

    Args:
        rows: one defense's rows that attacked every example.
        tol: the check's tolerance.
    """
    over = [c for c in seeing_vs_blind(rows) if c.gap > tol]
    if not over or not all(is_single_step(c.seeing) for c in over):
        return ""
    reached = [_iterative_reach(rows, c, tol) for c in over]
    if any(r is None for r in reached):
        return ""
    worst = max(range(len(over)), key=lambda i: over[i].gap)
    c, (it, a_it) = over[worst], reached[worst]  # type: ignore[misc]
    attacks = sorted({c.seeing.attack for c in over})
    return (f"only single-step attacks ({', '.join(attacks)}) are weaker through the purifier "
            f"({len(over)} comparison(s)); iterative ones are not: at eps {c.seeing.eps:g} "
            f"{it.threat_model} {it.attack} leaves {a_it:.3f} against {c.blind.threat_model} "
            f"{c.blind.attack} {c.a_blind:.3f}. One gradient step at x is misled by the "
            "purifier's gradients (gradient masking that iterative attacks get around); the "
            "per-example worst case keeps the stronger row, so robust accuracy is not "
            "overstated")
