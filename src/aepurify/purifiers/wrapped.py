"""Bring your own purifier (docs/audit.md): any callable that maps images
to images, as a :class:`~aepurify.purifiers.base.Purifier` the threat models can attack.

What the caller does not declare (``differentiable``, ``stochastic``: None) stays unknown until
it is probed (:func:`aepurify.purifiers.probe.probe_properties`); the threat models refuse a
purifier with an unknown property rather than guess it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import RANGE_TOLERANCE
from ..errors import ConfigError
from .base import Purifier

PurifyFn = Callable[[torch.Tensor], Any]


def check_purified(out: object, x: torch.Tensor, what: str) -> torch.Tensor:
    """Validate what a purifier returned for ``x`` and return it as a tensor like ``x``.

    Args:
        out: expected a float tensor (or NumPy array) of x's shape with values in [0, 1]
            (up to :data:`~aepurify.checks.RANGE_TOLERANCE`).
        x: the images (N, C, H, W) it purified.
        what: name used in the error message.

    Returns:
        ``out`` on x's device and dtype (a NumPy array converted: no gradient).

    Raises:
        ConfigError: not a tensor or array, another shape, not floating point, NaN, or values
            outside [0, 1].
    """
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(np.ascontiguousarray(out))
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{what} must return a tensor of shape {tuple(x.shape)}; got "
                          f"{type(out).__name__}")
    if tuple(out.shape) != tuple(x.shape):
        raise ConfigError(f"{what} changed the shape: {tuple(x.shape)} -> {tuple(out.shape)}")
    if not out.is_floating_point():
        raise ConfigError(f"{what} must return floating-point pixels in [0, 1]; got dtype "
                          f"{out.dtype}")
    out = out.to(device=x.device, dtype=x.dtype)
    if out.numel():
        lo, hi = (float(v) for v in torch.aminmax(out.detach()))
        if math.isnan(lo) or math.isnan(hi):
            raise ConfigError(f"{what} returned NaN")
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise ConfigError(f"{what} returned values outside [0, 1] (min {lo:.4g}, max "
                              f"{hi:.4g}); clamp its output")
    return out


def _name_of(fn: object) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class FunctionPurifier(Purifier):
    """A callable as a purifier (made by :func:`as_purifier`).

    Args:
        fn: maps images (N, C, H, W) in [0, 1] to the same shape in [0, 1] (a tensor or a NumPy
            array); an ``nn.Module`` is registered as a submodule (``.to``, ``.eval`` reach it).
        differentiable, stochastic: declared properties; None means unknown (probe them).
        surrogate: the differentiable approximation BPDA backpropagates through, same
            contract as ``fn``; None: the identity.
        name: shown in reports and errors (default: the callable's name).

    Shapes: forward, surrogate: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Raises:
        InputError: (forward) bad images.
        ConfigError: (forward) ``fn`` or ``surrogate`` changed the shape, returned NaN or values
            outside [0, 1].
    """

    def __init__(self, fn: PurifyFn, differentiable: bool | None = None,
                 stochastic: bool | None = None, surrogate: PurifyFn | None = None,
                 name: str | None = None) -> None:
        super().__init__(None)
        self.fn = fn if isinstance(fn, nn.Module) else _Plain(fn)
        self.surrogate_fn = surrogate
        self.name = name or _name_of(fn)
        self.differentiable = differentiable  # type: ignore[assignment]
        self.stochastic = stochastic  # type: ignore[assignment]

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return check_purified(self.fn(x), x, f"purifier {self.name}")

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        if self.surrogate_fn is None:
            return x
        return check_purified(self.surrogate_fn(x), x, f"surrogate of purifier {self.name}")

    def surrogate_name(self) -> str:
        return "identity" if self.surrogate_fn is None else _name_of(self.surrogate_fn)

    def properties(self) -> dict[str, Any]:
        unknown = "unknown"
        return {"name": self.name,
                "differentiable": unknown if self.differentiable is None else self.differentiable,
                "stochastic": unknown if self.stochastic is None else self.stochastic,
                "trainable": False, "surrogate": self.surrogate_name()}


class _Plain:
    """A plain callable kept outside the module tree (not an nn.Module)."""

    def __init__(self, fn: PurifyFn) -> None:
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> Any:
        return self.fn(x)


def as_purifier(fn: PurifyFn | Purifier, *, differentiable: bool | None = None,
                stochastic: bool | None = None, surrogate: PurifyFn | None = None,
                name: str | None = None) -> Purifier:
    """Wrap any callable mapping images (N, C, H, W) in [0, 1] to the same as a purifier.

    Properties left None are unknown: :func:`aepurify.purifiers.probe_properties` probes them
    (two passes differ: stochastic; input gradients finite, non-zero and agreeing in sign with
    finite differences: differentiable) and fills them in; until then the threat models refuse
    the purifier (one-line ConfigError). A :class:`Purifier` with no option given is returned as
    is; with options, its declared properties and surrogate are the defaults.

    Args:
        fn: the purification, a callable or ``nn.Module``: (N, C, H, W) in [0, 1] -> same shape
            in [0, 1] (a tensor, or a NumPy array, which carries no gradient).
        differentiable: exact gradients flow through ``fn`` (white-box applies); None: unknown.
        stochastic: ``fn`` draws randomness (EOT and N-evaluation apply); None: unknown.
        surrogate: differentiable approximation of ``fn`` for BPDA (Athalye, Carlini and
            Wagner, ICML 2018); None: the identity (straight-through).
        name: shown in reports and errors.

    Returns:
        A :class:`FunctionPurifier` (or ``fn`` itself, see above). Its output is checked on
        every call.

    Raises:
        ConfigError: ``fn`` or ``surrogate`` not callable, or a property that is not a bool or
            None; (on call) a shape change, NaN, values outside [0, 1].
    """
    if isinstance(fn, Purifier):
        if differentiable is None and stochastic is None and surrogate is None and name is None:
            return fn
        own_surrogate = fn.surrogate if fn.surrogate_name() != "identity" else None
        differentiable = fn.differentiable if differentiable is None else differentiable
        stochastic = fn.stochastic if stochastic is None else stochastic
        surrogate = own_surrogate if surrogate is None else surrogate
        name = name or type(fn).__name__
    if not callable(fn):
        raise ConfigError(f"a purifier must be callable; got {type(fn).__name__}")
    if surrogate is not None and not callable(surrogate):
        raise ConfigError(f"surrogate must be callable or None; got {type(surrogate).__name__}")
    for label, value in (("differentiable", differentiable), ("stochastic", stochastic)):
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{label} must be True, False or None (unknown); got {value!r}")
    return FunctionPurifier(fn, differentiable, stochastic, surrogate, name)
