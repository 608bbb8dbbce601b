"""The attack suites of the audit's three versions, as the run stage's cells.

| version | under the strongest gradient threat model (and every other the plan picks) | besides |
|---|---|---|
| ``quick`` | PGD-20, APGD-CE (100 steps) | - |
| ``standard`` | + APGD-T (9 target classes; deterministic purifier) or APGD-DLR (random purifier, as AutoAttack's ``rand`` version), the sanity PGD-10 / PGD-100 | Square (5,000 queries) under ``black-box``; PGD-20 and APGD-CE under ``gray-box`` for reference (also on the undefended classifier) |
| ``thorough`` | + PGD-100 with 2 restarts, APGD-CE with 5 restarts, PGD-10 with 5 restarts, ``+fixed`` for a random purifier | the large-eps check (PGD-100 at L-inf 1 / L2 60) |

With ``detector=`` (a defense that rejects) every version adds orthogonal PGD under the
``detector-aware`` threat model (Bryniarski et al., ICLR 2022): 20 steps in ``quick``, 100 in
``standard``, and in ``thorough`` 100 steps with 3 restarts from random starts.

EOT draws per gradient for a random purifier: the purifier's own default in ``quick``, 20 in
``standard`` (AutoAttack's ``rand`` version), 40 in ``thorough``. The attacks are AutoAttack's
components from torchattacks with AutoAttack's settings (Croce and Hein, ICML 2020); the sanity
attacks are those of :mod:`aepurify.evaluation.sanity` (Carlini et al. 2019).

Attack only what still stands (AutoAttack's order): the rows the checks compare run on every
example (PGD-20 under every threat model, the gray-box rows, the sanity PGDs), first; then the
AutoAttack components (APGD-CE, APGD-T or APGD-DLR, PGD-100x2, Square last) each attack only
the examples every earlier row of the audited defense left correct (for a random purifier:
correct in all n evaluations), so their rows hold the robust accuracy after them, cumulatively
(:func:`aepurify.evaluation.cells.attack_what_stands`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..attacks import check_attack, resolve_threat_model
from ..errors import ConfigError, NotApplicableError
from ..evaluation.cells import AttackSpec, Cell, DefenseKeys, attack_what_stands, order_cells
from ..evaluation.config import SanitySettings
from ..evaluation.store import CLEAN, SANITY_PREFIX, eps_key
from ..purifiers import Purifier

VERSIONS = ("quick", "standard", "thorough")
EOT_SAMPLES = {"standard": 20, "thorough": 40}     # quick: the purifier's own default
SANITY_STEPS = (10, 100)
SANITY_RESTARTS = 5
SQUARE_QUERIES = 5000
LARGE_EPS = {"linf": 1.0, "l2": 60.0}


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a version and where it runs.

    Attributes:
        spec: the attack as the run stage reads it.
        under: ``gradient`` (every gradient threat model the plan picked), ``strongest`` (the
            first of them), ``gray-box``, ``black-box`` or ``detector-aware``.
        large_eps: also run at the large-eps check's budget.
        follows: attacks only what every earlier row left correct (its gray-box rows, which
            the gray-box figure and the checks read, and the large-eps row stay whole).
    """

    spec: AttackSpec
    under: str
    large_eps: bool = False
    follows: bool = False


def check_version(version: str) -> str:
    """Raise ConfigError unless ``version`` is quick, standard or thorough."""
    if version not in VERSIONS:
        raise ConfigError(f"unknown audit version {version!r}; use one of {', '.join(VERSIONS)}")
    return version


def suite(version: str, norm: str, stochastic: bool,
          detector_aware: bool = False) -> list[SuiteAttack]:
    """The attacks of ``version`` (see the module docstring), in run order; ``detector_aware``
    adds orthogonal PGD for a defense that rejects."""
    check_version(version)
    out: list[SuiteAttack] = []

    def add(name: str, label: str, under: str, params: dict[str, Any] | None = None,
            restarts: int = 1, large_eps: bool = False, follows: bool = False) -> None:
        out.append(SuiteAttack(AttackSpec(name, label, norm, params or {}, restarts, len(out)),
                               under, large_eps, follows))

    thorough, quick = version == "thorough", version == "quick"
    few, many = SANITY_STEPS
    # whole rows first: what the checks compare, and the first attack of AutoAttack's order
    add("pgd", "pgd", "gradient", {"steps": 20})
    if detector_aware:  # whole: the detector-aware-vs-oblivious check compares it with pgd
        add("pgd", "orthogonal-pgd", "detector-aware",
            {"steps": 20 if quick else 100, "random_start": thorough},
            restarts=3 if thorough else 1)
    if not quick:
        add("pgd", f"{SANITY_PREFIX}pgd-{few}", "strongest", {"steps": few})
        add("pgd", f"{SANITY_PREFIX}pgd-{many}", "strongest", {"steps": many}, large_eps=thorough)
    if thorough:
        add("pgd", f"{SANITY_PREFIX}pgd-{few}x{SANITY_RESTARTS}", "strongest", {"steps": few},
            restarts=SANITY_RESTARTS)
    # then each attack only on what still stands, Square (gradient-free) last, as AutoAttack
    add("apgd-ce", "apgd-ce", "gradient", {"n_restarts": 5} if thorough else {}, follows=True)
    if quick:
        return out
    if stochastic:
        add("apgd-dlr", "apgd-dlr", "strongest", follows=True)
    else:
        add("apgd-t", "apgd-t", "strongest", {"n_target_classes": 9}, follows=True)
    if thorough:
        add("pgd", "pgd-100x2", "gradient", {"steps": 100}, restarts=2, follows=True)
    add("square", "square", "black-box", {"n_queries": SQUARE_QUERIES}, follows=True)
    return out


def sanity_settings(version: str, norm: str, eps: float, n: int) -> SanitySettings:
    """The gradient-masking checks' settings for the sanity rows of :func:`suite`."""
    return SanitySettings(enabled=version != "quick", norm=norm, eps=eps,
                          large_eps=LARGE_EPS[norm], n_test=n, steps=list(SANITY_STEPS),
                          restarts=SANITY_RESTARTS, square_queries=SQUARE_QUERIES,
                          min_eot_samples=EOT_SAMPLES["standard"])


# checks a version does not run (their rows are not in its suite; quick's EOT draws are the
# purifier's own, fewer than the check asks for, by the version's choice)
NOT_IN = {"quick": ("large-eps", "more-iterations", "more-restarts", "square-vs-gradient",
                    "eot-samples"),
          "standard": ("large-eps", "more-restarts"), "thorough": ()}


def not_run_reason(version: str, check: str) -> str | None:
    """Why ``version`` does not run the sanity check ``check`` (None when it does; a check
    whose rows a version has anyway, such as white-box-vs-bpda, runs)."""
    if check not in NOT_IN[version]:
        return None
    more = "standard" if version == "quick" and check != "large-eps" and \
        check != "more-restarts" else "thorough"
    return f"not part of the {version} version (version={more!r} runs it)"


@dataclass
class AuditPlan:
    """The cells of an audit and the threat models it skipped.

    Attributes:
        cells: in run order.
        threat_models: the resolved threat models of the audited purifier's attack rows.
        skipped: ``{"purifier", "threat_model", "reason"}`` of combinations that do not apply.
    """

    cells: list[Cell] = field(default_factory=list)
    threat_models: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def plan_cells(version: str, norm: str, eps: float, n: int, keys: DefenseKeys,
               purifier: Purifier, gradient_tms: list[str],
               reference: DefenseKeys | None = None, what_stands: bool = True,
               detector_aware: str | None = None) -> AuditPlan:
    """The cells of one audit.

    Args:
        version: quick, standard or thorough.
        norm, eps: the budget (eps on the [0, 1] scale, in ``norm``).
        n: images.
        keys: keys of the audited defense (purifier ``none`` for the undefended classifier).
        purifier: the audited purifier (properties known).
        gradient_tms: the gradient threat models to run, strongest first (``gray-box`` for the
            undefended classifier).
        reference: keys of the undefended classifier, whose clean row and gray-box rows (the
            same examples as the audited defense's gray-box rows) are added for reference.
        what_stands: the attacks marked ``follows`` attack only what every earlier row left
            correct (AutoAttack's order); False: every attack runs on every example.
        detector_aware: the detector-aware threat model to run (``detector-aware``, with
            ``+eot`` for a random purifier) for a defense that rejects; None: none.
    """
    eot = EOT_SAMPLES.get(version)
    plan = AuditPlan()
    following: set[int] = set()  # ids of the cells that attack only what still stands
    plan.cells.append(keys.clean_cell(n))
    if reference is not None:
        plan.cells.append(reference.clean_cell(n))
    undefended = keys.purifier == CLEAN
    for item in suite(version, norm, bool(purifier.stochastic), detector_aware is not None):
        if undefended:
            names = ["black-box" if item.under == "black-box" else "gray-box"]
        else:
            names = {"gradient": gradient_tms, "strongest": gradient_tms[:1],
                     "gray-box": ["gray-box"], "black-box": ["black-box"],
                     "detector-aware": [detector_aware]}[item.under]
            if item.under == "gradient" and version != "quick":
                names = [*names, "gray-box"]
        budgets = [eps, LARGE_EPS[norm]] if item.large_eps else [eps]
        for name in names:
            try:
                tm = resolve_threat_model(name, purifier, eot)
                check_attack(tm, item.spec.name, norm, purifier)
            except NotApplicableError as exc:
                plan.skipped.append({"purifier": keys.purifier, "threat_model": name,
                                     "reason": str(exc)})
                continue
            surrogate = purifier.surrogate_name() if tm.base == "bpda" else None
            for budget in budgets:
                cell = keys.attack_cell(tm, item.spec, budget, n, surrogate=surrogate)
                plan.cells.append(cell)
                if what_stands and item.follows and (tm.base != "gray-box" or undefended) \
                        and eps_key(budget) == eps_key(eps):
                    following.add(id(cell))
            if tm.name not in plan.threat_models:
                plan.threat_models.append(tm.name)
            if reference is not None and tm.base == "gray-box":
                for budget in budgets:
                    plan.cells.append(reference.attack_cell(tm, item.spec, budget, n))
    plan.cells = attack_what_stands(order_cells(plan.cells), lambda c: id(c) in following)
    return plan
