"""Gradient attacks of the FGSM / PGD family, from torchattacks.

- ``fgsm``: Goodfellow et al. 2015. L-inf: one signed-gradient step of size eps. L2: the fast
  gradient method, one step of L2 length eps along the gradient (torchattacks PGDL2 with one
  step and no random start).
- ``pgd``: Madry et al. 2018, projected gradient descent with a uniform random start. Defaults:
  20 steps of size 2.5 * eps / steps (Madry's rule of thumb).
"""

from __future__ import annotations

import torchattacks
from torch import nn

from .base import ATTACKS, Attack, require_norm


@ATTACKS.register("fgsm")
def fgsm(model: nn.Module, eps: float, norm: str = "linf") -> Attack:
    """FGSM (L-inf) / FGM (L2) at budget ``eps`` on the [0, 1] scale."""
    require_norm("fgsm", norm, ("linf", "l2"))
    if norm == "linf":
        return torchattacks.FGSM(model, eps=eps)
    return torchattacks.PGDL2(model, eps=eps, alpha=eps, steps=1, random_start=False)


@ATTACKS.register("pgd")
def pgd(model: nn.Module, eps: float, norm: str = "linf", steps: int = 20,
        alpha: float | None = None, random_start: bool = True) -> Attack:
    """PGD with ``steps`` iterations of size ``alpha`` (default 2.5 * eps / steps)."""
    require_norm("pgd", norm, ("linf", "l2"))
    step = alpha if alpha is not None else 2.5 * eps / max(steps, 1)
    if norm == "linf":
        return torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=random_start)
    return torchattacks.PGDL2(model, eps=eps, alpha=step, steps=steps, random_start=random_start)
