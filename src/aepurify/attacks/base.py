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

from ..checks import validated
from ..errors import ConfigError
from ..registry import Registry

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")


class Attack(Protocol):
    """A built attack: ``(x (N,C,H,W) in [0,1], y (N,)) -> x_adv (N,C,H,W) in [0,1]``."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


AttackBuilder = Callable[..., Attack]

ATTACKS: Registry[Attack] = Registry("attack")

# Attacks that only query the model's outputs (no gradients): they may run where gradients are
# not available, e.g. the black-box threat model or a non-differentiable purifier.
GRADIENT_FREE: set[str] = set()


def gradient_free(name: str) -> bool:
    """Whether attack ``name`` only queries outputs (Square) rather than using gradients."""
    return name in GRADIENT_FREE


# Threat models whose attacks differentiate a classifier alone, never the purifier: gray-box (the
# bare classifier) and transfer (the source classifier). Their examples are judged through a
# purifier they never saw, so a row hangs on how small perturbation details carry through it;
# bf16 rounding of small gradient components (FGSM's signs) moved such rows by up to 0.027
# against fp32 while every row that differentiates the purifier stayed within 0.01 or lower
# (docs/evaluation.md, "Precision and speed"). They are also the cheap rows: the classifier's
# passes without the purifier's. So they keep fp32 gradients.
CLASSIFIER_ONLY = ("gray-box", "transfer")


def attack_arithmetic(name: str, threat_model_base: str, precision: str) -> str:
    """The arithmetic of an attack's gradients: ``precision`` (``bf16`` or ``fp32``, resolved)
    where the attack differentiates a purifier, ``fp32`` for gradient-free attacks (their
    queries decide like a verdict) and for the classifier-only threat models
    (:data:`CLASSIFIER_ONLY`)."""
    if gradient_free(name) or threat_model_base in CLASSIFIER_ONLY:
        return "fp32"
    return precision


# Attacks that take one gradient step (FGSM, R-FGSM): the gradient at x (or near it) alone
# decides their direction, so a purifier whose gradient there misleads defeats them while
# iterative attacks, which correct their course, get through.
SINGLE_STEP: set[str] = set()


def single_step(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether attack ``name`` with ``params`` takes a single gradient step (FGSM, R-FGSM, or
    an iterative attack run with ``steps: 1``)."""
    return name in SINGLE_STEP or (params or {}).get("steps") == 1


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
    return CheckedAttack(ATTACKS.create(name, model=model, eps=float(eps), norm=norm,
                                        **(params or {})))


class CheckedAttack:
    """An attack whose call is a public boundary: the images it is given are checked once
    (shape, dtype, values in [0, 1]; :class:`~aepurify.errors.InputError` otherwise), and the
    attack's own iterations then run inside :func:`aepurify.checks.inputs_validated`, so the
    models it calls do not re-check the range at every step (a host sync per call on an
    accelerator; see :mod:`aepurify.checks`). Other attributes are the wrapped attack's.

    Shapes: (x (N, C, H, W) in [0, 1], y (N,)) -> x_adv (N, C, H, W) in [0, 1].
    """

    def __init__(self, attack: Attack) -> None:
        self.attack = attack

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with validated(x):
            return self.attack(x, y)

    def __getattr__(self, name: str) -> Any:
        attack = self.__dict__.get("attack")
        if attack is None:
            raise AttributeError(name)
        return getattr(attack, name)


def require_norm(attack: str, norm: str, supported: tuple[str, ...]) -> None:
    """Raise ConfigError if ``attack`` does not support ``norm``."""
    if norm not in supported:
        raise ConfigError(f"attack {attack!r} supports norm {' or '.join(supported)}, not {norm!r}")


TORCHATTACKS_NORM = {"linf": "Linf", "l2": "L2"}


def set_targeted(attack: Any, name: str, targeted: str | None) -> Any:
    """Switch a torchattacks attack to a targeted mode.

    Args:
        targeted: None (untargeted), ``"random"`` (a random wrong class) or ``"least-likely"``
            (the class the model finds least likely). Robust accuracy still counts an example as
            broken when it is misclassified at all.

    Raises:
        ConfigError: unknown mode, or an attack without a targeted mode.
    """
    if targeted in (None, False):
        return attack
    if "targeted" not in getattr(attack, "supported_mode", []):
        raise ConfigError(f"attack {name!r} has no targeted mode")
    if targeted == "random":
        attack.set_mode_targeted_random(quiet=True)
    elif targeted == "least-likely":
        attack.set_mode_targeted_least_likely(quiet=True)
    else:
        raise ConfigError(f"targeted must be 'random' or 'least-likely'; got {targeted!r}")
    return attack


def num_classes_of(model: nn.Module) -> int:
    """The number of logits of ``model``, read from the ``num_classes`` attribute of the model or
    of the classifier inside threat-model wrappers (EOT, BPDA, a defended classifier).

    Raises:
        ConfigError: no ``num_classes`` anywhere in the module tree (never assumed: a 1,000-class
            classifier taken for 10 classes breaks ART and the targeted attacks); wrap the
            classifier with ``aepurify.as_classifier``, which reads it from a forward pass.
    """
    seen: set[int] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        k = getattr(m, "num_classes", None)
        if isinstance(k, int) and not isinstance(k, bool):
            return k
        stack.extend(m.children())
    raise ConfigError(f"cannot tell how many classes {type(model).__name__} has (no num_classes "
                      "attribute); wrap the classifier with aepurify.as_classifier(...)")


class WithinBudget:
    """Wrap a minimal-perturbation attack (CW, DeepFool) for robust accuracy at a budget: an
    adversarial example whose perturbation exceeds ``eps`` in ``norm`` counts as a failure, so the
    clean image is returned in its place.

    Shapes: (x (N, C, H, W) in [0, 1], y (N,)) -> x_adv (N, C, H, W) in [0, 1].
    """

    def __init__(self, attack: Attack, eps: float, norm: str) -> None:
        self.attack, self.eps, self.norm = attack, eps, norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(x, y)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        keep = (size <= self.eps * (1 + 1e-6)).view(-1, 1, 1, 1)
        return torch.where(keep, x_adv, x)
