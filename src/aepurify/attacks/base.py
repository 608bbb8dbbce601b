"""Attack algorithms by name, over well-kept engines (torchattacks), with epsilon on the [0, 1]
pixel scale.

An attack here is built for one module (what the threat model lets the attacker differentiate)
and called as ``attack(x, y) -> x_adv`` with x (N, C, H, W) in [0, 1] and y (N,) labels; x_adv
stays in [0, 1] and within ``eps`` of x in the attack's norm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")


class Attack(Protocol):
    """A built attack: ``(x (N,C,H,W) in [0,1], y (N,)) -> x_adv (N,C,H,W) in [0,1]``."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


AttackBuilder = Callable[..., Attack]

ATTACKS: Registry[Attack] = Registry("attack")


def build_attack(name: str, model: nn.Module, eps: float, norm: str = "linf",
                 params: dict[str, Any] | None = None) -> Attack:
    """Build attack ``name`` against ``model``.

    Args:
        name: registry name (``fgsm``, ``pgd``, ...).
        model: the module whose gradients the attacker uses (from a threat model).
        eps: perturbation budget in the given norm, on the [0, 1] pixel scale.
        norm: ``linf`` or ``l2``.
        params: the attack's own options (steps, step size, ...).

    Raises:
        ConfigError: unknown attack, unsupported norm, negative eps or unknown option.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    if eps < 0:
        raise ConfigError(f"eps must be >= 0; got {eps}")
    return ATTACKS.create(name, model=model, eps=float(eps), norm=norm, **(params or {}))


def require_norm(attack: str, norm: str, supported: tuple[str, ...]) -> None:
    """Raise ConfigError if ``attack`` does not support ``norm``."""
    if norm not in supported:
        raise ConfigError(f"attack {attack!r} supports norm {' or '.join(supported)}, not {norm!r}")
