"""Attacks and threat models.

    >>> from aepurify.attacks import build_attack, resolve_threat_model, attack_module
    >>> tm = resolve_threat_model("bpda", defended.purifier)
    >>> atk = build_attack("pgd", attack_module(tm, defended), eps=0.3, norm="linf")
    >>> x_adv = atk(x, y)             # then evaluate defended(x_adv)
"""

from . import art_engine, autoattack, gradient, optimization  # noqa: F401  (register attacks)
from .base import (ATTACKS, CLASSIFIER_ONLY, GRADIENT_FREE, NORMS, SINGLE_STEP, Attack,
                   WithinBudget, attack_arithmetic, build_attack, gradient_free, single_step)
from .fixed_randomness import FixedRandomness
from .n_evaluation import NEvaluation, default_n_eval, n_evaluate
from .planning import PlannedThreatModel, ThreatModelPlan, plan_threat_models
from .threat_models import (BASES, EOT, VARIANTS, BPDAClassifier, ThreatModel, attack_module,
                            bpda_purify, check_attack, parse_threat_model, resolve_threat_model,
                            split_threat_model)

__all__ = ["ATTACKS", "GRADIENT_FREE", "NORMS", "SINGLE_STEP", "Attack", "WithinBudget",
           "build_attack", "gradient_free", "single_step", "attack_arithmetic", "CLASSIFIER_ONLY",
           "BASES", "VARIANTS", "EOT",
           "BPDAClassifier", "FixedRandomness",
           "ThreatModel", "attack_module", "bpda_purify", "check_attack", "parse_threat_model",
           "split_threat_model", "resolve_threat_model", "NEvaluation", "n_evaluate",
           "default_n_eval", "PlannedThreatModel", "ThreatModelPlan", "plan_threat_models"]
