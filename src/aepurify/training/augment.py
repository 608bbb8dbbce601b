"""Training augmentation for CIFAR-style images: random crop with reflect padding, and a random
horizontal flip, done as one gather on whichever device holds the images.

Why not kornia's ``RandomCrop`` / ``RandomHorizontalFlip`` (which the loop used before): they
draw their parameters on the CPU and, in eager mode, read the crop boxes back to the host for
every batch, a device synchronisation per training step, and they cost about as much as a small
network's step on a CPU. Here the parameters are drawn apart from their use (kornia's own
pattern, so a draw can be replayed), on the images' device with a seeded generator, and applied
by index arithmetic: reflect padding is folded into the indices, so no padded copy is made and the
images can stay uint8 until the loop converts them.

    >>> params = draw_crop_flip(n=128, padding=4, generator=gen, device=x.device)
    >>> x_aug = crop_flip(x, params, padding=4)    # x: (N, C, H, W), any dtype
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CropFlipParams:
    """One draw of crop offsets and flips for a batch.

    Attributes:
        offsets: (N, 2) int64, top and left corner of each crop in the padded image, in
            ``[0, 2 * padding]``.
        flips: (N,) bool, flip horizontally.
    """

    offsets: torch.Tensor
    flips: torch.Tensor


def draw_crop_flip(n: int, padding: int, generator: torch.Generator,
                   device: torch.device | str) -> CropFlipParams:
    """Uniform crop offsets (each of the ``(2 padding + 1)^2`` positions equally likely) and
    fair-coin flips for ``n`` images, drawn on ``device`` from ``generator`` (which must live
    on that device)."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    return CropFlipParams(offsets, flips)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices into a side of ``size`` pixels for positions that may lie up to ``size - 1``
    outside it, mirrored at the border without repeating the edge pixel (``reflect`` padding,
    as ``F.pad(mode="reflect")``)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_flip(x: torch.Tensor, params: CropFlipParams, padding: int) -> torch.Tensor:
    """Crop each image at its offset from its reflect-padded version and flip it if drawn.

    Equivalent to ``F.pad(x, [padding] * 4, mode="reflect")``, then cropping the original size
    at ``params.offsets`` and flipping where ``params.flips``; computed as one gather, so it works
    for any dtype (uint8 included) and makes no padded copy.

    Args:
        x: images (N, C, H, W), any dtype; ``padding < min(H, W)``.
        params: a draw for N images (see :func:`draw_crop_flip`).
        padding: pixels of reflect padding on every side.

    Returns:
        (N, C, H, W), same dtype, in channels-last memory layout (call ``.contiguous()`` for
        NCHW).
    """
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) + params.offsets[:, :1] - padding      # (N, H)
    cols = torch.arange(w, device=x.device) + params.offsets[:, 1:] - padding      # (N, W)
    cols = torch.where(params.flips[:, None], cols.flip(1), cols)
    rows, cols = _reflect(rows, h), _reflect(cols, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around the channel slice: the result is (N, H, W, C)
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
