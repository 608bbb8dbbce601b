"""The AutoAttack family (Croce and Hein, ICML 2020), from torchattacks.

- ``apgd-ce`` / ``apgd-dlr``: Auto-PGD with cross-entropy or DLR loss (``eot_iter`` > 1 averages
  gradients over draws of a random defense).
- ``apgd-t``: targeted APGD with the DLR loss over the top ``n_target_classes`` classes.
- ``fab``: FAB (Croce and Hein 2020), minimal-perturbation within the budget
  (``multi_targeted`` for FAB-T).
- ``square``: Square Attack (Andriushchenko et al. 2020), gradient-free (queries only).
- ``autoattack``: version ``standard`` (APGD-CE, APGD-T, FAB-T, Square) or ``rand`` (APGD-CE
  and APGD-DLR with 20 EOT draws, for randomised defenses).

Seeds default to 0 (torchattacks would otherwise seed from the clock), so runs reproduce.
"""

from __future__ import annotations

import torchattacks
from torch import nn

from ..errors import ConfigError
from .base import (ATTACKS, GRADIENT_FREE, TORCHATTACKS_NORM, Attack, num_classes_of,
                   require_norm)


def _apgd(model: nn.Module, eps: float, norm: str, loss: str, steps: int, n_restarts: int,
          eot_iter: int, rho: float, seed: int) -> Attack:
    require_norm(f"apgd-{loss}", norm, ("linf", "l2"))
    return torchattacks.APGD(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=steps,
                             n_restarts=n_restarts, seed=seed, loss=loss, eot_iter=eot_iter,
                             rho=rho)


@ATTACKS.register("apgd-ce")
def apgd_ce(model: nn.Module, eps: float, norm: str = "linf", steps: int = 100,
            n_restarts: int = 1, eot_iter: int = 1, rho: float = 0.75, seed: int = 0) -> Attack:
    """APGD with the cross-entropy loss."""
    return _apgd(model, eps, norm, "ce", steps, n_restarts, eot_iter, rho, seed)


@ATTACKS.register("apgd-dlr")
def apgd_dlr(model: nn.Module, eps: float, norm: str = "linf", steps: int = 100,
             n_restarts: int = 1, eot_iter: int = 1, rho: float = 0.75, seed: int = 0) -> Attack:
    """APGD with the difference-of-logits-ratio loss."""
    return _apgd(model, eps, norm, "dlr", steps, n_restarts, eot_iter, rho, seed)


@ATTACKS.register("apgd-t")
def apgd_t(model: nn.Module, eps: float, norm: str = "linf", steps: int = 100,
           n_restarts: int = 1, eot_iter: int = 1, rho: float = 0.75, seed: int = 0,
           n_target_classes: int = 9) -> Attack:
    """Targeted APGD (DLR loss), each of the ``n_target_classes`` most likely wrong classes."""
    require_norm("apgd-t", norm, ("linf", "l2"))
    n_classes = num_classes_of(model)
    atk = torchattacks.APGDT(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=steps,
                             n_restarts=n_restarts, seed=seed, eot_iter=eot_iter, rho=rho,
                             n_classes=n_classes)
    atk.n_target_classes = min(n_target_classes, n_classes - 1)
    return atk


@ATTACKS.register("fab")
def fab(model: nn.Module, eps: float, norm: str = "linf", steps: int = 100, n_restarts: int = 1,
        multi_targeted: bool = False, seed: int = 0) -> Attack:
    """FAB (``multi_targeted`` for FAB-T)."""
    require_norm("fab", norm, ("linf", "l2"))
    return torchattacks.FAB(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=steps,
                            n_restarts=n_restarts, multi_targeted=multi_targeted,
                            n_classes=num_classes_of(model), seed=seed)


@ATTACKS.register("square")
def square(model: nn.Module, eps: float, norm: str = "linf", n_queries: int = 5000,
           n_restarts: int = 1, p_init: float = 0.8, seed: int = 0) -> Attack:
    """Square Attack with ``n_queries`` queries (gradient-free)."""
    require_norm("square", norm, ("linf", "l2"))
    return torchattacks.Square(model, norm=TORCHATTACKS_NORM[norm], eps=eps, n_queries=n_queries,
                               n_restarts=n_restarts, p_init=p_init, seed=seed)


GRADIENT_FREE.add("square")


@ATTACKS.register("autoattack")
def autoattack(model: nn.Module, eps: float, norm: str = "linf", version: str = "standard",
               seed: int = 0) -> Attack:
    """AutoAttack ``standard`` or ``rand`` (the EOT version for randomised defenses)."""
    require_norm("autoattack", norm, ("linf", "l2"))
    if version not in ("standard", "rand"):
        raise ConfigError(f"autoattack version must be 'standard' or 'rand'; got {version!r}")
    return torchattacks.AutoAttack(model, norm=TORCHATTACKS_NORM[norm], eps=eps, version=version,
                                   n_classes=num_classes_of(model), seed=seed)
