"""Threat models: what the attacker may differentiate (docs/methods.md, "Threat models").

A threat model turns a defended classifier into the module an attack differentiates; the
adversarial examples are always *evaluated* on the real defended classifier.

- ``gray-box`` (oblivious): gradients of the bare classifier; the purifier is unknown.
- ``white-box``: gradients through purifier and classifier end to end (exact; needs a
  differentiable purifier).
- ``bpda``: Backward Pass Differentiable Approximation (Athalye, Carlini and Wagner, ICML 2018):
  forward through the real purifier, backward through its ``surrogate``.
- ``eot``: Expectation over Transformation: average over k draws of the purifier's randomness;
  composes with white-box or bpda (``white-box+eot``, ``bpda+eot``); plain ``eot`` means
  white-box+eot for a differentiable purifier and bpda+eot otherwise.
- ``+fixed`` (``white-box+fixed``, ``bpda+fixed``; plain ``fixed`` picks the base as plain
  ``eot`` does): the purifier's random draw held fixed during the attack, so the attacker
  differentiates one deterministic function; the examples are evaluated with fresh draws (Liu and
  Wei 2025, arXiv 2505.22839; see :mod:`.fixed_randomness`). Only for stochastic purifiers.
- ``transfer``: examples crafted on another classifier (the source), evaluated on this one.
- ``adaptive``: the purifier's own adaptive attack (defense-specific; see each purifier).
- ``black-box``: the attacker only queries the defended classifier's outputs; for gradient-free
  attacks (Square). It needs no differentiable purifier, and a gradient-free attack that beats
  the gradient attacks is a sign of gradient masking (Carlini et al. 2019).
- ``detector-aware``: for a defense with detectors (MagNet): the attacker fools the classifier
  through the reformer (white-box, or BPDA for a purifier that is not differentiable) *and* keeps
  every detector under its threshold, fixed before the attack (orthogonal PGD, Bryniarski et al.,
  ICLR 2022; :mod:`.detector_aware`); ``detector-aware+eot`` averages a random purifier's draws
  (MagNet's pool of autoencoders). Every other threat model ignores the detectors.
- ``strongest``: shorthand resolved per purifier to the strongest generic gradient threat model:
  white-box where the purifier is exactly differentiable, else bpda, with eot added for a
  stochastic purifier. Rows carry the resolved name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, NotApplicableError
from ..purifiers.base import DefendedClassifier, EvalWrapper, Purifier
from .fixed_randomness import FixedRandomness

BASES = ("gray-box", "white-box", "bpda", "transfer", "adaptive", "black-box", "detector-aware")
VARIANTS = ("eot", "fixed")


@dataclass(frozen=True)
class ThreatModel:
    """A resolved threat model.

    Attributes:
        base: one of ``gray-box``, ``white-box``, ``bpda``, ``transfer``, ``adaptive``,
            ``black-box``, ``detector-aware``.
        eot: average over ``eot_samples`` draws of the purifier's randomness.
        eot_samples: k, the number of draws per gradient.
        fixed: the purifier's random draw held fixed during the attack (``+fixed``).
    """

    base: str
    eot: bool = False
    eot_samples: int = 1
    fixed: bool = False

    @property
    def name(self) -> str:
        """Name as written in result rows, e.g. ``bpda+eot``, ``white-box+fixed``."""
        return self.base + ("+eot" if self.eot else "") + ("+fixed" if self.fixed else "")

    @property
    def uses_purifier_gradients(self) -> bool:
        """Whether the attack module depends on the purifier (so it is crafted per purifier)."""
        return self.base in ("white-box", "bpda", "adaptive", "black-box", "detector-aware")


def split_threat_model(text: str) -> tuple[str, str | None]:
    """Split ``"bpda+eot"`` into ``("bpda", "eot")``, ``"white-box+fixed"`` into
    ``("white-box", "fixed")``; plain ``"eot"`` / ``"fixed"`` give ``("", variant)``.

    Raises:
        ConfigError: unknown part; eot combined with gray-box, transfer or adaptive (those
            attackers never see the purifier's randomness); fixed combined with anything but
            white-box or bpda; eot and fixed together.
    """
    if text.strip() == "strongest":
        return "strongest", None
    parts = [p.strip() for p in text.split("+") if p.strip()]
    variants = [p for p in parts if p in VARIANTS]
    rest = [p for p in parts if p not in VARIANTS]
    if set(variants) == set(VARIANTS):
        raise ConfigError(f"{text!r}: eot averages many draws and fixed holds one; choose one")
    if len(rest) > 1 or not parts or len(variants) > 1:
        raise ConfigError(f"unknown threat model {text!r}; use one of {', '.join(BASES)}, "
                          "optionally with +eot or +fixed, or strongest")
    base = rest[0] if rest else ""
    if base and base not in BASES:
        raise ConfigError(f"unknown threat model {base!r} in {text!r}; use one of "
                          f"{', '.join(BASES)}, optionally with +eot or +fixed")
    variant = variants[0] if variants else None
    if variant == "eot" and base in ("gray-box", "transfer", "adaptive"):
        raise ConfigError(f"{text!r}: eot averages the purifier's randomness; combine it with "
                          "white-box, bpda, black-box or detector-aware")
    if variant == "fixed" and base not in ("", "white-box", "bpda"):
        raise ConfigError(f"{text!r}: fixed holds the purifier's draw fixed for an attacker who "
                          "differentiates it; combine it with white-box or bpda")
    return base, variant


def parse_threat_model(text: str) -> tuple[str, bool]:
    """Split ``"bpda+eot"`` into ``("bpda", True)``; plain ``"eot"`` gives ``("", True)``;
    ``+fixed`` is accepted and validated (:func:`split_threat_model` returns it).

    Raises:
        ConfigError: as :func:`split_threat_model`.
    """
    base, variant = split_threat_model(text)
    return base, variant == "eot"


def resolve_threat_model(text: str, purifier: Purifier, eot_samples: int | None = None
                         ) -> ThreatModel:
    """The threat model ``text`` applied to ``purifier``.

    Raises:
        ConfigError: malformed name, or a purifier whose differentiable / stochastic property is
            unknown (``as_purifier`` without it, not yet probed).
        NotApplicableError: white-box on a non-differentiable purifier, eot or fixed on a
            deterministic one, adaptive on a purifier without an adaptive attack.
    """
    base, variant = split_threat_model(text)
    eot, fixed = variant == "eot", variant == "fixed"
    name = getattr(purifier, "name", None) or type(purifier).__name__  # as_purifier's name
    for prop in ("differentiable", "stochastic"):
        if getattr(purifier, prop) is None:
            raise ConfigError(f"{name}: whether it is {prop} is unknown; declare it in "
                              "as_purifier(...) or probe it (aepurify.purifiers.probe_properties)")
    if base == "strongest":
        base, eot = ("white-box" if purifier.differentiable else "bpda"), purifier.stochastic
    if not base:  # plain "eot" or "fixed"
        base = "white-box" if purifier.differentiable else "bpda"
    if base == "white-box" and not purifier.differentiable:
        raise NotApplicableError(f"white-box needs exact gradients, and {name} is not "
                                 "differentiable; use bpda")
    if (eot or fixed) and not purifier.stochastic:
        raise NotApplicableError(f"{name} is deterministic; {variant} adds nothing")
    if base == "adaptive" and not hasattr(purifier, "adaptive_attack"):
        raise NotApplicableError(f"{name} has no adaptive attack of its own")
    k = eot_samples if eot_samples is not None else purifier.default_eot_samples
    return ThreatModel(base, eot, k if eot else 1, fixed)


def check_attack(tm: ThreatModel, attack: str, norm: str | None = None,
                 purifier: Purifier | None = None) -> None:
    """Raise NotApplicableError when ``attack`` cannot run under ``tm``: a gradient attack under
    black-box (outputs only), an (attack, norm) the purifier's own adaptive attack does not
    cover (checked through its optional ``check_adaptive_attack(attack, norm)``), or one the
    detector-aware attack does not (only ``pgd``, as orthogonal PGD), so the grid skips it with
    the reason instead of failing mid-run."""
    from .base import gradient_free

    if tm.base == "detector-aware" and (attack != "pgd" or norm not in (None, "linf", "l2")):
        raise NotApplicableError(f"the detector-aware threat model runs orthogonal PGD: use "
                                 f"attack 'pgd' (linf or l2) under it, not {attack!r}")
    if tm.base == "black-box" and not gradient_free(attack):
        raise NotApplicableError(f"black-box gives the attacker outputs only, and {attack} needs "
                                 "gradients; use a gradient-free attack such as square")
    check = getattr(purifier, "check_adaptive_attack", None)
    if tm.base == "adaptive" and check is not None and norm is not None:
        check(attack, norm)


def bpda_purify(purifier: Purifier, x: torch.Tensor, exact: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Forward: ``purifier(x)`` exactly; backward: the gradient of ``purifier.surrogate(x)``.

    Args:
        exact: ``purifier(x)`` computed beforehand (it is a constant of the backward pass), or
            None to compute it here without a graph.

    Shapes: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
    """
    approx = purifier.surrogate(x)
    if exact is None:
        with torch.no_grad():
            exact = purifier(x)
    return approx + (exact.detach() - approx).detach()


class BPDAClassifier(EvalWrapper):
    """``classifier(purifier(x))`` whose backward pass goes through ``purifier.surrogate``;
    both stay in eval mode (see :class:`~aepurify.purifiers.base.EvalWrapper`)."""

    def __init__(self, defended: DefendedClassifier) -> None:
        super().__init__()
        self.classifier = defended.classifier
        self.purifier = defended.purifier
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_purified(x, self.purify_exact(x))

    def purify_exact(self, x: torch.Tensor) -> torch.Tensor:
        """The real purifier's output, without a graph: the constant part of the forward pass
        ((N, C, H, W) in [0, 1] -> the same)."""
        with torch.no_grad():
            return self.purifier(x)

    def classify_purified(self, x: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of the classifier on ``exact`` (= :meth:`purify_exact` of ``x``), with
        the backward pass through the surrogate at ``x``: the part of the forward pass that has a
        graph, all that EOT needs to recompute in the backward pass."""
        return self.classifier(bpda_purify(self.purifier, x, exact))


# Pixel values (N x C x H x W) per call of the module in an EOT chunk, tuned at 32 px: on a CPU a
# batch past a few hundred 3x32x32 images falls out of the caches (one bpda+eot gradient of
# APuDAE took 3.6x longer with all 2,000 images, 100 x 20 draws, in one call than in chunks of
# 256: benchmarks/eot_chunking.py); an accelerator wants large batches (4096 such images). A
# budget in pixels, not images, keeps a call's memory the same at any image size: 224 px images
# (49x the pixels of 32 px ones) get 5 per call on a CPU, not 256.
EOT_PIXELS_CPU = 256 * 3 * 32 * 32
EOT_PIXELS_ACCELERATOR = 4096 * 3 * 32 * 32
# Pixel values over all draws past which EOT stops keeping every chunk's autograd graph until the
# backward pass and recomputes each chunk in it instead (torch.utils.checkpoint, with the random
# state replayed, so the gradient is that of the same draws): 20 draws of 20 images of 224 px
# through a patch VAE kept over 20 GB of graph. The old all-in-one-call maximum: 32 px EOT over
# up to 4,096 images times draws keeps its graphs (no recomputation) as before.
EOT_GRAPH_PIXELS = EOT_PIXELS_ACCELERATOR


def eot_pixel_budget(device: torch.device) -> int:
    """Default pixel values per EOT call on ``device`` (:data:`EOT_PIXELS_CPU` on a CPU,
    :data:`EOT_PIXELS_ACCELERATOR` otherwise)."""
    return EOT_PIXELS_CPU if device.type == "cpu" else EOT_PIXELS_ACCELERATOR


class EOT(EvalWrapper):
    """Average ``module``'s logits over ``samples`` draws of its randomness; ``module`` stays in
    eval mode (see :class:`~aepurify.purifiers.base.EvalWrapper`).

    The draws are batched: the input (N, C, H, W) repeated r times per call, r chosen so that a
    call holds at most ``max_pixels`` pixel values (r * N * C * H * W; at least one draw per
    call). ``max_pixels=None`` picks the budget by the input's device
    (:func:`eot_pixel_budget`). Past :data:`EOT_GRAPH_PIXELS` over all draws (and with
    gradients on), each chunk is recomputed in the backward pass instead of keeping its graph,
    with the random state replayed, so memory stays that of one call (under BPDA only the
    surrogate and the classifier are recomputed: the real purifier's output is a constant of the
    backward pass). A purifier's shared part (:meth:`Purifier.shared_part`, a VAE's posterior)
    is computed once for all draws. The chunking changes speed and memory only, not the result.
    Averaging logits, rather than losses, is the common EOT variant for attacks that read logits
    (Athalye, Engstrom, Ilyas and Kwok, ICML 2018 average the loss; both estimate the gradient
    of the expectation).

    Shapes: (N, C, H, W) -> logits (N, K).

    Raises:
        ConfigError: ``samples`` or ``max_pixels`` below 1.
    """

    def __init__(self, module: nn.Module, samples: int, max_pixels: int | None = None) -> None:
        super().__init__()
        if samples < 1:
            raise ConfigError(f"eot needs at least 1 sample; got {samples}")
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError(f"eot max_pixels must be >= 1; got {max_pixels}")
        self.module = module
        self.samples = samples
        self.max_pixels = max_pixels
        self.eval()

    def chunk_pixels(self, device: torch.device) -> int:
        """Most pixel values per call of the wrapped module on ``device``."""
        return self.max_pixels if self.max_pixels is not None else eot_pixel_budget(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        per_chunk = max(1, self.chunk_pixels(x.device) // max(x.numel(), 1))
        recompute = (torch.is_grad_enabled() and per_chunk < self.samples
                     and self.samples * x.numel() > EOT_GRAPH_PIXELS)
        shared = None
        if isinstance(self.module, DefendedClassifier):  # e.g. a VAE's posterior: once
            shared = self.module.purifier.shared_part(x)
        total = None
        for start in range(0, self.samples, per_chunk):
            r = min(per_chunk, self.samples - start)
            if shared is not None:
                out = self._shared_chunk(x, shared, r, recompute)
            elif recompute and isinstance(self.module, BPDAClassifier):
                out = self._bpda_chunk(x, r)
            elif recompute:  # bounded memory: this chunk's graph is rebuilt in the backward pass
                out = checkpoint(self._chunk, x, r, use_reentrant=False, preserve_rng_state=True)
            else:
                out = self._chunk(x, r)
            out = out.float()  # bf16 logits under autocast: average the draws in fp32
            total = out if total is None else total + out
        return total / self.samples

    def _chunk(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """Sum of the logits (N, K) of ``r`` draws, one call of the module."""
        return self.module(x.repeat(r, 1, 1, 1)).view(r, x.shape[0], -1).sum(0)

    def _shared_chunk(self, x: torch.Tensor, shared: dict[str, torch.Tensor], r: int,
                      recompute: bool) -> torch.Tensor:
        """:meth:`_chunk` from the purifier's shared part (:meth:`Purifier.shared_part`): only
        the per-draw rest of the purifier and the classifier run per chunk (and are recomputed
        in the backward pass past the graph budget); the shared part's graph is kept once."""
        module = self.module
        assert isinstance(module, DefendedClassifier)
        names = list(shared)

        def rest(x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
            purified = module.purifier.purify_from_shared(x, dict(zip(names, tensors)), r)
            return module.classifier(purified).view(r, x.shape[0], -1).sum(0)

        if recompute:
            return checkpoint(rest, x, *shared.values(), use_reentrant=False,
                              preserve_rng_state=True)
        return rest(x, *shared.values())

    def _bpda_chunk(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """:meth:`_chunk` for BPDA with bounded memory. The real purifier (all the randomness,
        and for APuDAE 13 DAE passes per image) runs once, outside the checkpoint: its output
        is a constant of the backward pass, so only the surrogate and the classifier are
        recomputed there, not the purification (which doubled the cost of a bpda+eot row)."""
        module = self.module
        assert isinstance(module, BPDAClassifier)
        xr = x.repeat(r, 1, 1, 1)
        exact = module.purify_exact(xr)

        def rest(xr: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
            return module.classify_purified(xr, exact).view(r, x.shape[0], -1).sum(0)

        return checkpoint(rest, xr, exact, use_reentrant=False, preserve_rng_state=True)


def attack_module(tm: ThreatModel, defended: DefendedClassifier,
                  source: nn.Module | None = None, eot_pixels: int | None = None) -> nn.Module:
    """The module the attacker differentiates under threat model ``tm``.

    Args:
        tm: resolved threat model (not ``adaptive``: that one builds its own attack).
        defended: the defended classifier under attack.
        source: the transfer source classifier (required for ``transfer``).
        eot_pixels: pixel values per call of an EOT chunk (None: by device, see :class:`EOT`).

    Raises:
        ConfigError: transfer without a source classifier, or adaptive (no generic module).
        NotApplicableError: fixed randomness on a deterministic purifier.
    """
    if tm.fixed:  # the attacker differentiates one draw, held for the whole attack
        defended = DefendedClassifier(defended.classifier, FixedRandomness(defended.purifier))
    if tm.base == "gray-box":
        module: nn.Module = defended.classifier
    elif tm.base == "transfer":
        if source is None:
            raise ConfigError("the transfer threat model needs a source classifier "
                              "(transfer_source in the config)")
        module = source
    elif tm.base in ("white-box", "black-box"):
        module = defended
    elif tm.base == "bpda":
        module = BPDAClassifier(defended)
    else:
        raise ConfigError(f"threat model {tm.name!r} has no generic attack module")
    return EOT(module, tm.eot_samples, max_pixels=eot_pixels) if tm.eot else module
