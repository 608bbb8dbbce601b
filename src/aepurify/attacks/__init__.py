"""Attacks and threat models.

    >>> from aepurify.attacks import build_attack, resolve_threat_model, attack_module
    >>> tm = resolve_threat_model("bpda", defended.purifier)
    >>> atk = build_attack("pgd", attack_module(tm, defended), eps=0.3, norm="linf")
    >>> x_adv = atk(x, y)             # then evaluate defended(x_adv)
"""

from . import gradient  # noqa: F401  (registers fgsm, pgd)
from .base import ATTACKS, NORMS, Attack, build_attack
from .threat_models import (BASES, EOT, BPDAClassifier, ThreatModel, attack_module, bpda_purify,
                            parse_threat_model, resolve_threat_model)

__all__ = ["ATTACKS", "NORMS", "Attack", "build_attack", "BASES", "EOT", "BPDAClassifier",
           "ThreatModel", "attack_module", "bpda_purify", "parse_threat_model",
           "resolve_threat_model"]
