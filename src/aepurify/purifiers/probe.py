"""Probe what a purifier does not declare, and report it with the evidence (issue 12; AutoAttack's
``checks.py`` flags randomness and zero gradients the same way, Croce and Hein, ICML 2020).

- stochastic: two forward passes on the same images differ;
- differentiable: input gradients are finite, not all zero, and agree in sign with central
  finite differences on a few pixels. This catches zero gradients (rounding, quantisation),
  NaN, no gradient at all (Pillow, NumPy) and shattered gradients (Athalye, Carlini and Wagner,
  ICML 2018), which autograd returns without complaint;
- replayable: for a random purifier, two passes with the same sampled randomness agree (so the
  fixed-randomness threat model applies).

Every probe runs on at most :data:`PROBE_IMAGES` images, with the global random generators
seeded and restored afterwards, so probing is reproducible and leaves the caller's random
stream untouched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..checks import check_images
from .base import Purifier
from .randomness import replays_exactly, seeded_rng

PROBE_IMAGES = 8
FD_STEP = 0.01            # central differences of +-0.01 (about 2.5/255, one attack step)
DITHER = 1 / 255          # probe points: the images plus uniform noise of +-1/255 (no ties)
FD_PIXELS = 16            # pixels compared, spread over the probe images
SIGN_AGREEMENT = 0.75     # fraction of those pixels whose signs must agree
STOCHASTIC_ATOL = 1e-6    # larger differences between two passes count as randomness


@dataclass(frozen=True)
class PropertyReport:
    """One property of a purifier: what was declared, what the probe found, and why.

    Attributes:
        name: ``differentiable``, ``stochastic`` or ``replayable``.
        declared: the declared value, None if not declared.
        probed: the probe's verdict, None if not probed.
        evidence: one line of what the probe saw.
    """

    name: str
    declared: bool | None
    probed: bool | None
    evidence: str

    @property
    def value(self) -> bool:
        """The value to act on: the declared one, else the probed one (False if neither)."""
        return bool(self.declared if self.declared is not None else self.probed)

    @property
    def source(self) -> str:
        return "declared" if self.declared is not None else "probed"

    @property
    def disagrees(self) -> bool:
        """Declared and probed, with different answers."""
        return None not in (self.declared, self.probed) and self.declared != self.probed

    def line(self) -> str:
        """``differentiable: no (probed): input gradients are exactly zero ...``."""
        text = f"{self.name}: {'yes' if self.value else 'no'} ({self.source})"
        if self.disagrees:
            text += f", but probed {'yes' if self.probed else 'no'}"
        return f"{text}: {self.evidence}"


@dataclass(frozen=True)
class PurifierProperties:
    """The declared and probed properties of a purifier, for the threat-model plan and the report.

    Attributes:
        name: the purifier's name.
        differentiable, stochastic, replayable: one :class:`PropertyReport` each.
        surrogate: what BPDA backpropagates through (``identity`` or the surrogate's name).
    """

    name: str
    differentiable: PropertyReport
    stochastic: PropertyReport
    replayable: PropertyReport
    surrogate: str

    def lines(self) -> list[str]:
        """One line per property, for an 80-column console (the evidence may wrap)."""
        return [r.line() for r in (self.differentiable, self.stochastic, self.replayable)] + \
            [f"bpda surrogate: {self.surrogate}"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every report's fields, and the surrogate."""
        return {"name": self.name, "surrogate": self.surrogate,
                **{r.name: asdict(r) for r in (self.differentiable, self.stochastic,
                                               self.replayable)}}

    def fill_unknown(self, purifier: Purifier) -> Purifier:
        """Set the purifier's undeclared (None) ``differentiable`` / ``stochastic`` to the
        probed values, so the threat models accept it; return it."""
        for report in (self.differentiable, self.stochastic):
            if getattr(purifier, report.name) is None:
                setattr(purifier, report.name, report.value)
        return purifier


def _probe_batch(x: torch.Tensor, max_images: int) -> torch.Tensor:
    return check_images(x, what="probe images")[:max_images].detach()


def probe_stochastic(purifier: Purifier, x: torch.Tensor, *, seed: int = 0,
                     atol: float = STOCHASTIC_ATOL) -> tuple[bool, str]:
    """Whether two forward passes on the same images differ (by more than ``atol``).

    Args:
        x: images (N, C, H, W) in [0, 1] (at most :data:`PROBE_IMAGES` are used).

    Returns:
        (stochastic, evidence).
    """
    x = _probe_batch(x, PROBE_IMAGES)
    with seeded_rng(seed, x.device), torch.no_grad():
        a, b = purifier(x), purifier(x)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    n = x.shape[0]
    if diff > atol:
        return True, f"two passes on the same {n} images differ by up to {diff:.3g}"
    return False, f"two passes on the same {n} images agree (to {atol:g})"


def _purify_seeded(purifier: Purifier, x: torch.Tensor, seed: int) -> torch.Tensor:
    """purifier(x) with the global generators seeded by ``seed`` (a random purifier drawing
    from them then gives the same draw on every call)."""
    with seeded_rng(seed, x.device):
        return purifier(x)


def probe_points(x: torch.Tensor, step: float, seed: int) -> torch.Tensor:
    """The images mapped affinely into [step + d, 1 - step - d] plus uniform noise of +-d
    (d = :data:`DITHER`): both finite differences stay in [0, 1], and no two pixels tie (flat
    backgrounds would otherwise decide the verdict of a median filter or max-pooling)."""
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device, x.dtype)
    margin = step + DITHER
    return margin + (1 - 2 * margin) * x + DITHER * noise


def probe_differentiable(purifier: Purifier, x: torch.Tensor, *, seed: int = 0,
                         pixels: int = FD_PIXELS, step: float = FD_STEP,
                         agreement: float = SIGN_AGREEMENT) -> tuple[bool, str]:
    """Whether input gradients are usable: finite, not all zero, and agreeing in sign with
    central finite differences of step ``step`` on ``pixels`` pixels.

    The scalar differentiated is ``sum(w * purifier(x))`` with a fixed random w, at
    :func:`probe_points` near the images; on each image the pixels with the largest gradient are
    compared, the differences taken between outputs before weighting (float32 would lose small
    changes in the sum). Random purifiers are compared under one fixed draw (the global
    generators re-seeded before every pass).

    Args:
        x: images (N, C, H, W) in [0, 1] (at most :data:`PROBE_IMAGES` are used).
        agreement: the fraction of compared pixels whose signs must agree.

    Returns:
        (differentiable, evidence).
    """
    x0 = probe_points(_probe_batch(x, PROBE_IMAGES), step, seed)
    n = x0.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    xg = x0.clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            loss = (w * _purify_seeded(purifier, xg, seed)).sum()
            if not loss.requires_grad:
                return False, "no gradient: the output is not connected to the input's graph"
            (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    except RuntimeError as exc:
        return False, f"no gradient: backward failed ({str(exc).splitlines()[0][:80]})"
    if grad is None:
        return False, "no gradient: the output does not depend on the input in autograd"
    bad = int((~torch.isfinite(grad)).sum())
    if bad:
        return False, f"{bad} of {grad.numel()} input gradient entries are NaN or infinite"
    if not bool(grad.any()):
        return False, "input gradients are exactly zero (as through rounding or quantisation)"
    per_image = math.ceil(pixels / n)
    flat = grad.flatten(1)
    order = flat.abs().topk(min(per_image, flat.shape[1]), dim=1).indices   # (n, per_image)
    agree = informative = 0
    rows = torch.arange(n, device=x0.device)
    with torch.no_grad():
        for j in range(order.shape[1]):
            idx = order[:, j]
            shifted = []
            for sign in (1.0, -1.0):
                xs = x0.clone().flatten(1)
                xs[rows, idx] += sign * step
                shifted.append(_purify_seeded(purifier, xs.view_as(x0), seed))
            fd = (w * (shifted[0] - shifted[1])).flatten(1).sum(1) / (2 * step)
            g = flat[rows, idx]
            informative += int(((g != 0) | (fd != 0)).sum())
            agree += int(((torch.sign(g) == torch.sign(fd)) & (g != 0)).sum())
    ok = informative > 0 and agree >= agreement * informative
    verdict = (f"gradients finite and non-zero; their sign agrees with central differences "
               f"(+-{step:g}) on {agree} of {informative} pixels")
    if not ok:
        verdict += f" (fewer than {agreement:.0%}: masked or shattered gradients)"
    return ok, verdict


def probe_properties(purifier: Purifier, x: torch.Tensor, *, seed: int = 0) -> PurifierProperties:
    """Probe a purifier's properties on a few images and report them beside the declared ones.

    Every property is probed, declared or not (a declared property that the probe contradicts is
    worth a line in the report: e.g. a purifier declared differentiable whose gradients are
    zero). ``replayable`` is probed only for a random purifier.

    Args:
        purifier: any :class:`Purifier` (``as_purifier`` makes one of a callable).
        x: images (N, C, H, W) in [0, 1] the purifier accepts, on its device; the first
            :data:`PROBE_IMAGES` are used. About ten forward passes and one backward pass.
        seed: seed of the probes' random draws.

    Returns:
        :class:`PurifierProperties`; its ``fill_unknown(purifier)`` adopts the probed values.

    Raises:
        InputError: ``x`` is not a float (N, C, H, W) tensor in [0, 1].
        ConfigError: (from an ``as_purifier`` callable) its output breaks the purifier contract.
    """
    name = getattr(purifier, "name", None) or type(purifier).__name__
    was_stochastic, s_evidence = probe_stochastic(purifier, x, seed=seed)
    stochastic = PropertyReport("stochastic", getattr(purifier, "stochastic", None),
                                was_stochastic, s_evidence)
    diff, d_evidence = probe_differentiable(purifier, x, seed=seed)
    differentiable = PropertyReport("differentiable", getattr(purifier, "differentiable", None),
                                    diff, d_evidence)
    if stochastic.value:
        explicit = type(purifier).sample_randomness is not Purifier.sample_randomness
        filled = purifier.stochastic is None
        if filled:  # sampling randomness needs the purifier to count as random
            purifier.stochastic = True  # type: ignore[misc]
        try:
            ok, r_evidence = replays_exactly(purifier, _probe_batch(x, PROBE_IMAGES), seed)
        finally:
            if filled:
                purifier.stochastic = None  # type: ignore[misc]
        replayable = PropertyReport("replayable", True if explicit else None, ok, r_evidence)
    else:
        replayable = PropertyReport("replayable", None, None,
                                    "deterministic: no randomness to hold fixed")
    return PurifierProperties(name, differentiable, stochastic, replayable,
                              purifier.surrogate_name())
