"""Stage 1 for a config: plan the cells of its grid (classifiers x purifiers x threat models x
attacks x epsilons), in run order, and the combinations that do not apply, with the reason.

Planning reads the config, the ready purifiers (to resolve threat models: declared
differentiable, stochastic, an adaptive attack) and the models' keys; it computes nothing, and
the same inputs always give the same cells in the same order (so ranks of a distributed run can
split them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..attacks import check_attack, default_n_eval, resolve_threat_model
from ..errors import NotApplicableError
from ..purifiers import Purifier
from ..training import Trained
from .cells import AttackSpec, Cell, DefenseKeys, order_cells
from .config import AttackEntry, ExperimentConfig, PurifierEntry
from .store import CLEAN, SANITY_PREFIX


@dataclass
class Plan:
    """The cells to compute, in run order, and the combinations skipped.

    Attributes:
        cells: the planned rows.
        skipped: ``{"purifier", "threat_model", "reason"}`` of each combination that does not
            apply (a non-differentiable purifier under white-box, ...).
    """

    cells: list[Cell] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def attack_spec(entry: AttackEntry, index: int) -> AttackSpec:
    """The run stage's view of a config's attack entry (its ``index`` in ``all_attacks()``)."""
    return AttackSpec(entry.name, entry.row_label, entry.norm, entry.params, entry.restarts,
                      index)


def _threat_models(config: ExperimentConfig, attack: AttackEntry, label: str,
                   entry: PurifierEntry | None) -> list[str]:
    """The most specific list wins: the attack's, else the purifier's, else the config's.
    Without a purifier every gradient threat model is the same attack as gray-box."""
    def transfer(names: list[str]) -> list[str]:
        return [t for t in names if t.split("+")[0] == "transfer"]

    if label == CLEAN:
        if not attack.threat_models:
            return ["gray-box"] + transfer(config.all_threat_models())
        kept = ["gray-box"] if any(t.split("+")[0] != "transfer"
                                   for t in attack.threat_models) else []
        return kept + transfer(attack.threat_models)
    if attack.threat_models:
        return attack.threat_models
    return entry.threat_models if entry and entry.threat_models else config.threat_models


def n_eval_of(purifier: Purifier, *settings: int | None) -> int:
    """Evaluations of every example (N-evaluation): the first setting given (a purifier
    entry's, then the config's), else 10, for a random purifier; 1 for a deterministic one."""
    if not purifier.stochastic:
        return 1
    return next((n for n in settings if n is not None), default_n_eval(True))


def plan_grid(config: ExperimentConfig, classifiers: dict[str, Trained],
              purifiers: dict[tuple[str, str], Trained], source: Trained | None,
              n_test: int, precision: str = "fp32",
              detector_keys: dict[tuple[str, str], str] | None = None) -> Plan:
    """The cells of ``config``'s grid, in run order, and the combinations skipped.

    Args:
        config: the validated config.
        classifiers: classifier label -> ready classifier (its ``key`` goes into row hashes).
        purifiers: (classifier label, purifier label) -> ready purifier (``none``: undefended).
        source: the transfer source classifier, if any.
        n_test: test images available; attacks with their own ``n_test`` use fewer.
        precision: the resolved precision of attack gradients (part of every row's hash).
        detector_keys: (classifier label, purifier label) -> hash of the defense's calibrated
            detectors, for the defenses that reject (the ``detector-aware`` threat model
            applies to those only).

    Raises:
        ConfigError: two cells would share a row key.
    """
    entries: dict[str, PurifierEntry] = {p.row_label: p for p in config.purifiers}
    attacks = config.all_attacks()
    detector_keys = detector_keys or {}
    plan = Plan()
    for (clf_label, label), trained in purifiers.items():
        purifier: Purifier = trained.module  # type: ignore[assignment]
        entry = entries.get(label)
        detectors = detector_keys.get((clf_label, label))
        keys = DefenseKeys(config.dataset, config.seed, clf_label, classifiers[clf_label].key,
                           label, trained.key, bool(purifier.stochastic),
                           n_eval_of(purifier, entry.n_eval if entry else None, config.n_eval),
                           precision, detectors_key=detectors)
        plan.cells.append(keys.clean_cell(n_test))
        samples = entry.eot_samples if entry and entry.eot_samples else config.eot_samples
        for index, attack in enumerate(attacks):
            if attack.purifiers is not None and label not in attack.purifiers:
                continue
            n = min(attack.n_test or n_test, n_test)
            if (attack.row_label.startswith(SANITY_PREFIX) and purifier.stochastic
                    and config.sanity.n_test_random is not None):
                # every gradient of a random purifier costs eot_samples passes
                n = min(n, config.sanity.n_test_random)
            spec = attack_spec(attack, index)
            for tm_text in _threat_models(config, attack, label, entry):
                try:
                    tm = resolve_threat_model(tm_text, purifier, samples)
                    check_attack(tm, attack.name, attack.norm, purifier)
                    if tm.base == "detector-aware" and detectors is None:
                        raise NotApplicableError(f"{label} has no detectors; detector-aware "
                                                 "applies to a defense that rejects")
                except NotApplicableError as exc:
                    reason = {"purifier": label, "threat_model": tm_text, "reason": str(exc)}
                    if reason not in plan.skipped:
                        plan.skipped.append(reason)
                    continue
                surrogate = purifier.surrogate_name() if tm.base == "bpda" or (
                    tm.base == "detector-aware" and not purifier.differentiable) else None
                for eps in attack.eps:
                    plan.cells.append(keys.attack_cell(
                        tm, spec, eps, n, surrogate=surrogate,
                        source_key=source.key if source is not None else None))
    plan.cells = order_cells(plan.cells)
    return plan
