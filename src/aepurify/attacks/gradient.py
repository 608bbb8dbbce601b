"""Gradient attacks of the FGSM family, from torchattacks. Budgets on the [0, 1] pixel scale.

- ``fgsm``: Goodfellow et al. 2015. L-inf: one signed-gradient step of size eps. L2: the fast
  gradient method, one step of L2 length eps along the gradient.
- ``rfgsm``: Tramer et al. 2018, a random signed step of size ``alpha`` then an FGSM step of
  ``eps - alpha`` (alpha 2/255 as in APuDAE's code by default, capped at eps / 2). L-inf.
  torchattacks' RFGSM takes gradient steps of ``alpha`` instead, so this composes its FGSM.
- ``bim`` (I-FGSM): Kurakin et al. 2017, ``steps`` signed steps of ``alpha`` (default
  eps / steps: the patch-VAE paper's 10 steps of eps/10), no random start. L2: the same with L2
  steps.
- ``pgd``: Madry et al. 2018, random start, ``steps`` steps of ``alpha`` (default
  2.5 * eps / steps). L-inf and L2.
- ``mifgsm``: Dong et al. 2018, momentum iterative FGSM (decay 1.0). L-inf.

All accept ``targeted: random | least-likely`` where torchattacks has a targeted mode.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

from .base import ATTACKS, SINGLE_STEP, Attack, require_norm, set_targeted

SINGLE_STEP.update({"fgsm", "rfgsm"})


@ATTACKS.register("fgsm")
def fgsm(model: nn.Module, eps: float, norm: str = "linf", targeted: str | None = None) -> Attack:
    """FGSM (L-inf) / FGM (L2) at budget ``eps``."""
    require_norm("fgsm", norm, ("linf", "l2"))
    if norm == "linf":
        return set_targeted(torchattacks.FGSM(model, eps=eps), "fgsm", targeted)
    return set_targeted(torchattacks.PGDL2(model, eps=eps, alpha=eps, steps=1,
                                           random_start=False), "fgsm", targeted)


class RandomFGSM:
    """R-FGSM (Tramer et al., ICLR 2018): x' = clip(x + alpha * sign(N(0, I))), then FGSM of size
    eps - alpha from x'. The result stays within eps of x in L-inf.

    Shapes: (x (N, C, H, W) in [0, 1], y (N,)) -> x_adv, same shape, in [0, 1].
    """

    def __init__(self, model: nn.Module, eps: float, alpha: float) -> None:
        self.alpha = min(alpha, eps / 2)
        self.fgsm = torchattacks.FGSM(model, eps=eps - self.alpha)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = (x + self.alpha * torch.randn_like(x).sign()).clamp(0, 1)
        return self.fgsm(start, y)


@ATTACKS.register("rfgsm")
def rfgsm(model: nn.Module, eps: float, norm: str = "linf", alpha: float = 2 / 255,
          targeted: str | None = None) -> Attack:
    """R-FGSM: a random step of ``alpha`` (capped at eps / 2), then FGSM of eps - alpha."""
    require_norm("rfgsm", norm, ("linf",))
    attack = RandomFGSM(model, eps, alpha)
    set_targeted(attack.fgsm, "rfgsm", targeted)
    return attack


@ATTACKS.register("bim")
def bim(model: nn.Module, eps: float, norm: str = "linf", steps: int = 10,
        alpha: float | None = None, targeted: str | None = None) -> Attack:
    """BIM / I-FGSM: ``steps`` steps of ``alpha`` (default eps / steps), no random start."""
    require_norm("bim", norm, ("linf", "l2"))
    step = alpha if alpha is not None else eps / max(steps, 1)
    if norm == "linf":
        return set_targeted(torchattacks.BIM(model, eps=eps, alpha=step, steps=steps), "bim",
                            targeted)
    return set_targeted(torchattacks.PGDL2(model, eps=eps, alpha=step, steps=steps,
                                           random_start=False), "bim", targeted)


@ATTACKS.register("pgd")
def pgd(model: nn.Module, eps: float, norm: str = "linf", steps: int = 20,
        alpha: float | None = None, random_start: bool = True,
        targeted: str | None = None) -> Attack:
    """PGD with ``steps`` iterations of size ``alpha`` (default 2.5 * eps / steps)."""
    require_norm("pgd", norm, ("linf", "l2"))
    step = alpha if alpha is not None else 2.5 * eps / max(steps, 1)
    if norm == "linf":
        atk = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=random_start)
    else:
        atk = torchattacks.PGDL2(model, eps=eps, alpha=step, steps=steps,
                                 random_start=random_start)
    return set_targeted(atk, "pgd", targeted)


@ATTACKS.register("mifgsm")
def mifgsm(model: nn.Module, eps: float, norm: str = "linf", steps: int = 10,
           alpha: float | None = None, decay: float = 1.0, targeted: str | None = None) -> Attack:
    """MI-FGSM: ``steps`` momentum steps of ``alpha`` (default eps / steps)."""
    require_norm("mifgsm", norm, ("linf",))
    step = alpha if alpha is not None else eps / max(steps, 1)
    return set_targeted(torchattacks.MIFGSM(model, eps=eps, alpha=step, steps=steps, decay=decay),
                        "mifgsm", targeted)
