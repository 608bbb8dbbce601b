"""Input validation shared by classifiers and purifiers: one clear line for bad images.

Where the checks run (and why not everywhere). The shape, dtype and channel checks read tensor
metadata only and run on every call. The range check (values in [0, 1], no NaN) has to read every
pixel and bring the result to the host: on an accelerator that is a device synchronisation, and
an attack calls the defended classifier hundreds of times per batch (PGD-20 under EOT: 20 steps x
k draws), each call paying it in the purifier and again in the classifier. So the range check
runs once, at the *public boundary*, where images enter from a user: a classifier or purifier
called directly, :class:`~aepurify.purifiers.DefendedClassifier`, ``aepurify purify``, an attack
built by :func:`~aepurify.attacks.build_attack` (it checks the images it is given), the
evaluation runner (it checks the test images once) and the training loops (their images are
decoded uint8 data, in range by construction). Those boundaries then run their inner work inside
:func:`inputs_validated`, where the range check is skipped: what flows there was either checked
at the boundary or made by code that keeps it in [0, 1] (attacks clip to [0, 1], purifiers
return [0, 1] by contract). Bad input from a user still gets its one-line :class:`InputError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .errors import InputError

# Pixels are in [0, 1]; straight-through (BPDA) sums can land an ulp outside, so allow a hair.
RANGE_TOLERANCE = 1e-5

_VALIDATED: ContextVar[bool] = ContextVar("aepurify_inputs_validated", default=False)


@contextmanager
def inputs_validated() -> Iterator[None]:
    """Inside this block, :func:`check_images` skips the value-range check (no host sync); the
    shape, dtype and channel checks still run. Entered by the public boundaries listed in the
    module docstring once they have checked their own input; nesting is fine."""
    token = _VALIDATED.set(True)
    try:
        yield
    finally:
        _VALIDATED.reset(token)


def range_checks_active() -> bool:
    """Whether :func:`check_images` checks values here (False inside :func:`inputs_validated`)."""
    return not _VALIDATED.get()


@contextmanager
def validated(x: object, *, channels: int | None = None, size: Sequence[int] | None = None,
              what: str = "images") -> Iterator[None]:
    """Check ``x`` fully (as :func:`check_images`, range included unless an outer boundary
    already did), then run the block inside :func:`inputs_validated`.

    Raises:
        InputError: as :func:`check_images`.
    """
    check_images(x, channels=channels, size=size, what=what)
    with inputs_validated():
        yield


def check_images(x: object, *, channels: int | None = None,
                 size: Sequence[int] | None = None, what: str = "images") -> torch.Tensor:
    """Validate a batch of images and return it unchanged.

    Args:
        x: expected float tensor (N, C, H, W) with values in [0, 1].
        channels: required C, or None for any.
        size: required (H, W), or None for any.
        what: name used in the error message.

    The value range is not checked inside :func:`inputs_validated` (see the module docstring).

    Raises:
        InputError: not a tensor, not 4-D, not floating point, wrong channels or size, values
            outside [0, 1] or NaN.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{what} must have shape (N, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{what} must be floating point in [0, 1]; got dtype {x.dtype} "
                         "(divide 8-bit images by 255)")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{what} must have {channels} channel(s); got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise InputError(f"{what} must be {size[0]}x{size[1]} pixels; got shape {tuple(x.shape)}")
    if x.numel() and range_checks_active():
        lo, hi = torch.aminmax(x.detach())
        lo_v, hi_v = float(lo), float(hi)
        if not (lo_v >= -RANGE_TOLERANCE and hi_v <= 1 + RANGE_TOLERANCE):
            raise InputError(f"{what} must have values in [0, 1]; got min {lo_v:.4g}, "
                             f"max {hi_v:.4g}")
    return x
