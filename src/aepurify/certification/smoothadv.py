"""The empirical upper bound of a smoothed classifier: an L2 attack on g itself (Salman, Li,
Razenshteyn, Zhang, Zhang, Bubeck and Yang, "Provably Robust Deep Learning via Adversarially
Trained Smoothed Classifiers", NeurIPS 2019: SmoothAdv).

g's hard votes have no gradient, so the attack differentiates the soft smoothed classifier: the
Monte-Carlo average over m noise draws of ``softmax(f(D(clip(x + delta_i))))``, with fresh draws
at every step, and PGD in the L2 ball of radius eps (torchattacks' PGDL2) maximises
``-log`` of that average at the true class. :class:`SmoothedSoftmax` is that module: its outputs
are log-probabilities, so the cross-entropy PGD computes on them is exactly SmoothAdv's loss.
Through a purifier that is not differentiable the backward pass goes through its BPDA surrogate.
Each adversarial example is then judged with PREDICT (Cohen et al.) on fresh draws.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from ..attacks.base import build_attack
from ..attacks.threat_models import bpda_purify
from ..precision import channels_last_weights, resolve_precision, with_precision
from ..purifiers.base import EvalWrapper
from ..purifiers.randomness import seeded_rng
from ..utils import derive_seed
from .smoothing import SmoothedClassifier, draws_per_call, noise_generator

# SmoothAdv's floor under the averaged probabilities before the log (their attacks.py).
PROBABILITY_FLOOR = 1e-20


class SmoothAdvSettings(BaseModel):
    """The attack on the smoothed classifier.

    Attributes:
        enabled: run it (False: certified accuracy only).
        steps: PGD iterations.
        noise_draws: m, noise draws averaged per step (fresh at every step).
        step_size: L2 length of a step, pixels in [0, 1] (None: the project's PGD default,
            2.5 * eps / steps).
        random_start: start from a random point of the ball (torchattacks' PGDL2).
        predict_n: PREDICT's draws for each adversarial example (None: the certification's n).
        precision: arithmetic of the attack's gradients (``auto``: bf16 autocast with
            channels-last where the hardware runs it fast, :mod:`aepurify.precision`, as
            ``evaluate``'s attacks); the counting passes that judge the examples run in the
            certification's own precision (:class:`~aepurify.certification.run.CertifySettings`).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    steps: int = Field(20, ge=1)
    noise_draws: int = Field(16, ge=1)
    step_size: float | None = Field(None, gt=0)
    random_start: bool = False
    predict_n: int | None = Field(None, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    def arithmetic(self, device: torch.device | str) -> str:
        """The attack gradients' precision on ``device`` (``bf16`` or ``fp32``)."""
        return resolve_precision(self.precision, device)


class SmoothedSoftmax(EvalWrapper):
    """SmoothAdv's soft smoothed classifier: ``log mean_i softmax(f(D(clip(x + delta_i))))``
    over ``draws`` noise draws, fresh at every call, from ``generator``. f and D stay in eval
    mode (see :class:`~aepurify.purifiers.base.EvalWrapper`).

    Args:
        smoothed: the smoothed classifier (f, D, sigma, pixel budget).
        draws: m.
        generator: the noise's generator (its device is where the noise is drawn).
        bpda: backward through D's surrogate (for a purifier that is not differentiable).

    Shapes: (N, C, H, W) in [0, 1] -> log-probabilities (N, K).
    """

    def __init__(self, smoothed: SmoothedClassifier, draws: int, generator: torch.Generator,
                 bpda: bool = False) -> None:
        super().__init__()
        self.classifier = smoothed.classifier
        self.purifier = smoothed.purifier
        self.smoothed = smoothed
        self.draws = draws
        self.generator = generator
        self.bpda = bpda
        self.num_classes = smoothed.num_classes
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.smoothed.sigma
        per = draws_per_call(tuple(x.shape), self.smoothed.pixel_budget(x.device))
        total = None
        for start in range(0, self.draws, per):
            r = min(per, self.draws - start)
            noise = torch.randn((r, *x.shape), generator=self.generator,
                                device=self.generator.device).to(x.device).mul_(sigma)
            noisy = (x.unsqueeze(0) + noise).clamp(0, 1).flatten(0, 1)
            purified = bpda_purify(self.purifier, noisy) if self.bpda else self.purifier(noisy)
            probs = F.softmax(self.classifier(purified).float(), 1)
            part = probs.view(r, x.shape[0], -1).sum(0)
            total = part if total is None else total + part
        assert total is not None
        return (total / self.draws).clamp_min(PROBABILITY_FLOOR).log()


def smoothadv_batch_size(image_shape: tuple[int, ...], draws: int, max_pixels: int) -> int:
    """Images per attack batch so that one forward pass (images x draws) fits ``max_pixels``
    pixel values (at least one image)."""
    return max(1, draws_per_call(image_shape, max_pixels) // max(draws, 1))


def smoothadv(smoothed: SmoothedClassifier, x: torch.Tensor, y: torch.Tensor, eps: float,
              settings: SmoothAdvSettings, seed: int, first_index: int, bpda: bool = False
              ) -> torch.Tensor:
    """SmoothAdv PGD on ``smoothed`` at L2 radius ``eps`` for a batch.

    Args:
        x: images (N, C, H, W) in [0, 1]; y: labels (N,).
        eps: L2 radius, pixels in [0, 1] (> 0).
        settings: steps, noise draws, step size, random start.
        seed, first_index: seed the noise and the random start from (seed, eps, first index of
            the batch), so the attack replays.
        bpda: backward through the purifier's surrogate.

    Returns:
        Adversarial images (N, C, H, W) in [0, 1], within eps of x in L2. The gradients run in
        ``settings.precision`` (bf16 where fast); the weights are NCHW again afterwards.
    """
    gen = noise_generator(seed, f"attack-{eps:g}", first_index, x.device)
    arithmetic = settings.arithmetic(x.device)
    module = with_precision(SmoothedSoftmax(smoothed, settings.noise_draws, gen, bpda=bpda),
                            arithmetic)
    params: dict[str, Any] = {"steps": settings.steps, "random_start": settings.random_start}
    if settings.step_size is not None:
        params["alpha"] = settings.step_size
    attack = build_attack("pgd", module, eps=eps, norm="l2", params=params)
    models = [smoothed.classifier, smoothed.purifier]
    with seeded_rng(derive_seed(seed, "attack-start", f"{eps:g}", first_index), x.device), \
            channels_last_weights(models, arithmetic == "bf16"):
        return attack(x, y).detach()


def attack_needs_bpda(purifier: nn.Module) -> bool:
    """Whether the attack must go through the purifier's BPDA surrogate (not differentiable)."""
    return not bool(getattr(purifier, "differentiable", True))
