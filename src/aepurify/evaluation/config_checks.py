"""Checks of a validated config against the registries' signatures, made before any work: every
``params`` entry names parameters its factory takes, with values of the annotated types, so a
typo such as ``stepz`` or ``quality: "high"`` costs one line, not a run that fails after its
models trained (an ``adaptive`` attack's against the purifier's own adaptive attack: S-BIM's
options for APuDAE; a ``detector-aware`` attack's against orthogonal PGD's; a detector's and its
autoencoder's against theirs); an entry point's module is imported and its ``kwargs`` checked
the same way; and an L-inf budget above 1 is warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..attacks import ATTACKS, parse_threat_model
from ..attacks.detector_aware import check_detector_aware_params
from ..detectors import DETECTOR_ARGS, DETECTORS
from ..entry_points import check_entry_point
from ..errors import ConfigError
from ..models import CLASSIFIERS
from ..purifiers import PURIFIERS, purifier_class
from .config import AttackEntry, ExperimentConfig

log = logging.getLogger(__name__)

# What the runner passes to every attack factory itself; an attack's params may not repeat them.
ATTACK_ARGS = ("model", "eps", "norm")
# What run_analyses passes to every analysis itself.
ANALYSIS_ARGS = ("exp", "rows", "out_dir")


def check_params(config: ExperimentConfig) -> None:
    """Check every ``params`` entry (classifiers, purifiers, attacks, analyses) by name and type
    against its factory (:meth:`aepurify.registry.Registry.check_params`).

    Raises:
        ConfigError: the first problem, naming the entry (``attacks[0]: ...``).
    """
    from .analyses import ANALYSES

    classifiers = [(f"classifiers[{i}]" if len(config.classifiers) > 1 else "classifier", c)
                   for i, c in enumerate(config.classifiers)]
    if config.transfer_source is not None:
        classifiers.append(("transfer_source", config.transfer_source))
    checks = [(f"{where}.params", CLASSIFIERS, c.arch, c.params, ())
              for where, c in classifiers if c.arch is not None]
    checks += [(f"purifiers[{i}]", PURIFIERS, p.name, p.params, ())
               for i, p in enumerate(config.purifiers) if p.name is not None]
    for i, p in enumerate(config.purifiers):
        for j, d in enumerate(p.detectors):
            checks.append((f"purifiers[{i}].detectors[{j}]", DETECTORS, d.name, d.params,
                           DETECTOR_ARGS))
            if d.autoencoder is not None:
                checks.append((f"purifiers[{i}].detectors[{j}].autoencoder", PURIFIERS,
                               d.autoencoder.name, d.autoencoder.params, ()))
    entry_points = [(f"{where}.entry_point", "classifier", c.entry_point, c.kwargs)
                    for where, c in classifiers if c.entry_point is not None]
    entry_points += [(f"purifiers[{i}].entry_point", "purifier", p.entry_point, p.kwargs)
                     for i, p in enumerate(config.purifiers) if p.entry_point is not None]
    for where, kind, spec, kwargs in entry_points:  # imports the user's module: names, kwargs
        try:
            check_entry_point(spec, kwargs, kind)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    checks += [(f"attacks[{i}]", ATTACKS, a.name, a.params, ATTACK_ARGS)
               for i, a in enumerate(config.attacks) if _runs_generic(config, a)]
    checks += [(f"analyses[{i}]", ANALYSES, a.name, a.params, ANALYSIS_ARGS)
               for i, a in enumerate(config.analyses)]
    for where, registry, name, params, supplied in checks:
        try:
            registry.check_params(name, params, supplied=supplied)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    for i, attack in enumerate(config.attacks):
        for label, check in _adaptive_checks(config, attack):
            try:
                check(attack.params)
            except ConfigError as exc:
                raise ConfigError(f"attacks[{i}] (adaptive, {label}): {exc}") from None
        if _runs_under(config, attack, "detector-aware"):
            try:
                check_detector_aware_params(attack.params)
            except ConfigError as exc:
                raise ConfigError(f"attacks[{i}] (detector-aware): {exc}") from None


def _adaptive_checks(config: ExperimentConfig, attack: AttackEntry
                     ) -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    """(purifier label, its ``check_adaptive_params``) for every registry purifier that runs
    ``attack`` under ``adaptive`` and checks the params of its own adaptive attack (APuDAE:
    S-BIM's options)."""
    out = []
    for entry in config.purifiers:
        label = entry.row_label
        if entry.name is None or (attack.purifiers is not None and label not in attack.purifiers):
            continue
        tms = attack.threat_models or entry.threat_models or config.threat_models
        check = getattr(purifier_class(entry.name), "check_adaptive_params", None)
        if check is not None and any(parse_threat_model(t)[0] == "adaptive" for t in tms):
            out.append((label, check))
    return out


# Threat models whose attack is not the registered one: the purifier's own (adaptive) or
# orthogonal PGD (detector-aware); each checks the params against its own options.
OWN_ATTACKS = ("adaptive", "detector-aware")


def _runs_generic(config: ExperimentConfig, attack: AttackEntry) -> bool:
    """Whether ``attack`` runs as the registered attack for some purifier: under any threat
    model but ``adaptive`` (the purifier's own adaptive attack takes the params: S-BIM's
    ``margin_on``) and ``detector-aware`` (orthogonal PGD's ``method``); the undefended
    classifier meets every attack that names it, gray-box."""
    entries = {p.row_label: p for p in config.purifiers}
    labels = [*entries, *(["none"] if config.include_undefended else [])]
    for label in labels:
        if attack.purifiers is not None and label not in attack.purifiers:
            continue
        if label == "none":
            return True
        tms = attack.threat_models or entries[label].threat_models or config.threat_models
        if any(parse_threat_model(t)[0] not in OWN_ATTACKS for t in tms):
            return True
    return False


def _runs_under(config: ExperimentConfig, attack: AttackEntry, base: str) -> bool:
    """Whether ``attack`` meets some purifier entry under threat model ``base``."""
    for entry in config.purifiers:
        if attack.purifiers is not None and entry.row_label not in attack.purifiers:
            continue
        tms = attack.threat_models or entry.threat_models or config.threat_models
        if any(parse_threat_model(t)[0] == base for t in tms):
            return True
    return False


def warn_large_linf(config: ExperimentConfig, source: str) -> None:
    """Warn (one line per attack) about an L-inf budget above 1: it spans the whole [0, 1]
    pixel range, legal (the sanity check's large_eps does it on purpose) but most often a
    budget on the 0..255 scale."""
    for i, a in enumerate(config.attacks):
        large = [e for e in a.eps if a.norm == "linf" and e > 1]
        if large:
            log.warning("%s: attacks[%d] (%s): L-inf epsilon %g is above 1, the whole [0, 1] "
                        "pixel range, so any image is reachable (did you mean %g/255?)",
                        source, i, a.row_label, large[0], large[0])
