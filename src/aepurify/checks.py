"""Input validation shared by classifiers and purifiers: one clear line for bad images."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import InputError

# Pixels are in [0, 1]; straight-through (BPDA) sums can land an ulp outside, so allow a hair.
RANGE_TOLERANCE = 1e-5


def check_images(x: object, *, channels: int | None = None,
                 size: Sequence[int] | None = None, what: str = "images") -> torch.Tensor:
    """Validate a batch of images and return it unchanged.

    Args:
        x: expected float tensor (N, C, H, W) with values in [0, 1].
        channels: required C, or None for any.
        size: required (H, W), or None for any.
        what: name used in the error message.

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
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo_v, hi_v = float(lo), float(hi)
        if not (lo_v >= -RANGE_TOLERANCE and hi_v <= 1 + RANGE_TOLERANCE):
            raise InputError(f"{what} must have values in [0, 1]; got min {lo_v:.4g}, "
                             f"max {hi_v:.4g}")
    return x
