"""Pick the threat models a purifier needs from its properties, with the reasons as text (issue
12: the audit says what it picked and why).

- exact gradients (differentiable): ``white-box``; otherwise ``bpda`` through the purifier's
  surrogate (identity unless one is declared; Athalye, Carlini and Wagner, ICML 2018). A purifier
  declared differentiable whose probed gradients are unusable (zero, NaN, shattered) gets
  ``bpda`` as well;
- random (stochastic): ``+eot`` (Athalye, Engstrom, Ilyas and Kwok, ICML 2018), evaluated over
  N draws (N-evaluation, DiffHammer, NeurIPS 2024), and on request ``+fixed`` (randomness held
  fixed during the attack, Liu and Wei 2025, arXiv 2505.22839) where its draws can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..purifiers.probe import PropertyReport, PurifierProperties
from .n_evaluation import default_n_eval


@dataclass(frozen=True)
class PlannedThreatModel:
    """A threat model name (as ``resolve_threat_model`` reads it) and why it was picked or
    skipped."""

    name: str
    reason: str


@dataclass(frozen=True)
class ThreatModelPlan:
    """The threat models to run against one purifier.

    Attributes:
        threat_models: the picked ones, the strongest generic gradient threat model first.
        skipped: considered and not picked, with the reason.
        n_eval: evaluations of each adversarial example (N-evaluation): 10 for a random
            purifier, 1 otherwise.
    """

    threat_models: tuple[PlannedThreatModel, ...]
    skipped: tuple[PlannedThreatModel, ...]
    n_eval: int

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.threat_models]

    def lines(self) -> list[str]:
        """One line per picked or skipped threat model, and the N-evaluation count."""
        out = [f"{t.name}: {t.reason}" for t in self.threat_models]
        out += [f"not {t.name}: {t.reason}" for t in self.skipped]
        return out + [f"n_eval: {self.n_eval} evaluation(s) per adversarial example"]


def _why(report: PropertyReport) -> str:
    word = "" if report.value else "not "
    return f"{word}{report.name} ({report.source}: {report.evidence})"


def plan_threat_models(properties: PurifierProperties, *, fixed_randomness: bool = False,
                       n_eval: int | None = None) -> ThreatModelPlan:
    """The gradient threat models that apply to a purifier with ``properties``.

    Args:
        properties: from :func:`aepurify.purifiers.probe_properties`.
        fixed_randomness: also plan ``<base>+fixed`` for a random purifier (the audit's
            ``thorough`` version).
        n_eval: evaluations per adversarial example; None: 10 for a random purifier, else 1.

    Returns:
        A :class:`ThreatModelPlan`; every name resolves with
        :func:`~aepurify.attacks.resolve_threat_model` on the purifier once
        ``properties.fill_unknown(purifier)`` has run.
    """
    diff, stoch = properties.differentiable, properties.stochastic
    if diff.value:
        base, reason = "white-box", f"{_why(diff)}: exact gradients end to end"
    else:
        base, reason = "bpda", (f"{_why(diff)}: forward through the purifier, backward through "
                                f"{properties.surrogate}")
    eot = "+eot" if stoch.value else ""
    if stoch.value:
        reason += f"; {_why(stoch)}: gradients averaged over draws (eot)"
    picked = [PlannedThreatModel(base + eot, reason)]
    skipped = []
    if diff.value and diff.disagrees:
        picked.append(PlannedThreatModel(
            "bpda" + eot, f"declared differentiable, but probed: {diff.evidence}; bpda through "
                          f"{properties.surrogate} as well"))
    if fixed_randomness and stoch.value:
        rep = properties.replayable
        if rep.value:
            picked.append(PlannedThreatModel(
                f"{base}+fixed", "one draw of the randomness held fixed during the attack, "
                                 f"evaluated with fresh draws ({rep.evidence})"))
        else:
            skipped.append(PlannedThreatModel(f"{base}+fixed", rep.evidence))
    elif fixed_randomness:
        skipped.append(PlannedThreatModel(f"{base}+fixed", "deterministic: nothing to fix"))
    n = n_eval if n_eval is not None else default_n_eval(stoch.value)
    return ThreatModelPlan(tuple(picked), tuple(skipped), n)
