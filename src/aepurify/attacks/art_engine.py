"""Attacks from the Adversarial Robustness Toolbox (ART), the project's second engine.

- ``deepfool``: DeepFool (Moosavi-Dezfooli et al., CVPR 2016), L2 minimal perturbation with the
  overshoot applied to the accumulated perturbation, scored at the budget
  (:class:`~aepurify.attacks.base.WithinBudget`). torchattacks' DeepFool loops image by image
  and applies the overshoot to each step, so ART's is used.
- ``pgd-art``: ART's projected gradient descent, for cross-checking torchattacks' ``pgd`` (same
  defaults: random start, ``steps`` steps of 2.5 * eps / steps).

ART is imported on first use (it takes a few seconds).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import ATTACKS, Attack, WithinBudget, num_classes_of, require_norm

_NORMS = {"linf": np.inf, "l2": 2}


class ARTAttack:
    """Run an ART evasion attack on a PyTorch module.

    Args:
        model: maps (N, C, H, W) in [0, 1] to logits (N, K).
        make: ART estimator -> ART attack.

    Shapes: (x (N, C, H, W) in [0, 1], y (N,)) -> x_adv, same shape, in [0, 1], on x's device.
    """

    def __init__(self, model: nn.Module, make) -> None:  # noqa: ANN001 - ART types
        self.model = model
        self.make = make

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from art.estimators.classification import PyTorchClassifier

        device = x.device
        estimator = PyTorchClassifier(
            model=self.model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=num_classes_of(self.model), clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu")
        attack = self.make(estimator)
        labels = np.eye(estimator.nb_classes, dtype=np.float32)[y.cpu().numpy()]
        adv = attack.generate(x.detach().cpu().numpy(), y=labels)
        return torch.from_numpy(adv).to(device=device, dtype=x.dtype).clamp_(0, 1)


@ATTACKS.register("deepfool")
def deepfool(model: nn.Module, eps: float, norm: str = "l2", steps: int = 50,
             overshoot: float = 0.02, nb_grads: int = 10) -> Attack:
    """DeepFool (L2), ``steps`` linearisation steps over the ``nb_grads`` most likely classes;
    results beyond the budget ``eps`` count as failures."""
    require_norm("deepfool", norm, ("l2",))

    def make(est):  # noqa: ANN001, ANN202
        from art.attacks.evasion import DeepFool

        return DeepFool(est, max_iter=steps, epsilon=overshoot, nb_grads=nb_grads,
                        batch_size=4096, verbose=False)

    return WithinBudget(ARTAttack(model, make), eps, norm)


@ATTACKS.register("pgd-art")
def pgd_art(model: nn.Module, eps: float, norm: str = "linf", steps: int = 20,
            alpha: float | None = None, random_start: bool = True) -> Attack:
    """ART's PGD with torchattacks' ``pgd`` defaults (for cross-checks between engines)."""
    require_norm("pgd-art", norm, ("linf", "l2"))
    step = alpha if alpha is not None else 2.5 * eps / max(steps, 1)

    def make(est):  # noqa: ANN001, ANN202
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        return ProjectedGradientDescentPyTorch(est, norm=_NORMS[norm], eps=eps, eps_step=step,
                                               max_iter=steps, num_random_init=int(random_start),
                                               batch_size=4096, verbose=False)

    return ARTAttack(model, make)
