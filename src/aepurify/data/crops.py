"""Natural-image crops at several scales: a training source for purifiers of images larger than
any training set available offline (224 px ImageNet-sized images, with CIFAR-10's 32 px images
or a user's image folder as the source).

Each crop is ``size`` x ``size`` pixels, cut from a source image upsampled by one of ``scales``
(bicubic, antialiased; the scales take turns). Where the upsampled image is smaller than the
crop, the crop is cut from a mosaic of several upsampled source images (a grid, each cell a
different random image), so small scales keep their sharp, native-resolution texture at any crop
size. The crops are made once, from a seeded generator, and held as uint8 like any data set.
Labels are those of the source image at the top-left of the crop (purifiers trained on them use
no labels; the S2SNet's stage 2 uses the classifier's own prediction).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.nn import functional as F

from ..utils import progress
from .base import ImageDataset
from .folders import ImageFolderOptions

# Source images upsampled per call: bounds the float memory of one call (256 images of 224 px
# are about 150 MB).
UPSAMPLE_BATCH = 256


class CropOptions(BaseModel):
    """Random multi-scale crops of a data set (``train: {data: {kind: crops, ...}}`` in configs).

    Attributes:
        kind: ``crops``.
        source: a data set name (``cifar10-jpeg``, ...) or an image folder mapping.
        split: the source's split (``train``; never the images you evaluate on).
        size: side of the square crops (pixels).
        scales: upsampling factors of the source images (> 0; below 1 shrinks them).
        count: number of crops.
        seed: seeds the choice of source images, scales and positions.
        data_dir: folder with the source's data files (else the evaluation's ``--data-dir``,
            ``$AEPURIFY_DATA``, the cache).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["crops"] = "crops"
    source: str | ImageFolderOptions = "cifar10-jpeg"
    split: str = "train"
    size: int = Field(64, ge=4)
    scales: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0], min_length=1)
    count: int = Field(10000, ge=1)
    seed: int = 0
    data_dir: str | None = None

    @field_validator("scales")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError("scales must be > 0")
        return value

    @property
    def source_name(self) -> str:
        return self.source if isinstance(self.source, str) else self.source.dataset_name


def _upsample(images: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 (N, C, S, S) -> uint8 (N, C, side, side), bicubic with antialiasing."""
    if images.shape[-1] == side:
        return images
    x = F.interpolate(images.float(), size=(side, side), mode="bicubic", align_corners=False,
                      antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def multiscale_crops(images: torch.Tensor, size: int, scales: list[float], count: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of ``images`` (see the module docstring).

    Args:
        images: uint8 (N, C, S, S) source images.
        size: crop side (pixels).
        scales: upsampling factors, taking turns over the crops.
        count: number of crops.
        generator: seeds every random choice.

    Returns:
        (uint8 crops (count, C, size, size), int64 index (count,) of each crop's top-left
        source image).
    """
    n, c, s, _ = images.shape
    out = torch.empty((count, c, size, size), dtype=torch.uint8)
    origin = torch.empty(count, dtype=torch.int64)
    which = torch.arange(count) % len(scales)
    for k, scale in enumerate(scales):
        rows = (which == k).nonzero().flatten()
        if not len(rows):
            continue
        side = max(1, round(s * scale))
        tiles = math.ceil(size / side)
        picks = torch.randint(0, n, (len(rows), tiles * tiles), generator=generator)
        span = tiles * side
        dy = torch.randint(0, span - size + 1, (len(rows),), generator=generator)
        dx = torch.randint(0, span - size + 1, (len(rows),), generator=generator)
        per_call = max(1, UPSAMPLE_BATCH // (tiles * tiles))
        for start in progress(range(0, len(rows), per_call), desc=f"crops x{scale:g}",
                              unit="batch"):
            sl = slice(start, start + per_call)
            block = picks[sl]
            up = _upsample(images[block.flatten()], side)           # (b * t * t, C, side, side)
            b = block.shape[0]
            grid = up.view(b, tiles, tiles, c, side, side).permute(0, 3, 1, 4, 2, 5)
            grid = grid.reshape(b, c, span, span)
            for i in range(b):
                y0, x0 = int(dy[sl][i]), int(dx[sl][i])
                out[rows[start + i]] = grid[i, :, y0:y0 + size, x0:x0 + size]
        origin[rows] = picks[:, 0]
    return out, origin
