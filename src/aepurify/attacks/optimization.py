"""Minimal-perturbation attacks scored at a budget: CW-L2 from torchattacks.

CW-L2 (Carlini and Wagner, S&P 2017) looks for the smallest L2 perturbation that fools the model
rather than staying inside a budget. For robust accuracy at ``eps`` an example whose adversarial
perturbation is larger than ``eps`` counts as not broken
(:class:`~aepurify.attacks.base.WithinBudget`). DeepFool lives in ``art_engine.py``.
"""

from __future__ import annotations

import torchattacks
from torch import nn

from .base import ATTACKS, Attack, WithinBudget, require_norm, set_targeted


@ATTACKS.register("cw")
def cw(model: nn.Module, eps: float, norm: str = "l2", c: float = 1.0, kappa: float = 0.0,
       steps: int = 100, lr: float = 0.01, targeted: str | None = None) -> Attack:
    """CW-L2 with confidence ``kappa`` and trade-off ``c``, ``steps`` Adam steps of ``lr``;
    adversarial examples beyond the L2 budget ``eps`` count as failures."""
    require_norm("cw", norm, ("l2",))
    atk = set_targeted(torchattacks.CW(model, c=c, kappa=kappa, steps=steps, lr=lr), "cw",
                       targeted)
    return WithinBudget(atk, eps, norm)
