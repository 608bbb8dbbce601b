"""Read and write image files (PNG, JPEG, ...) for ``aepurify purify``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, InputError


def load_image_files(paths: list[Path], channels: int) -> torch.Tensor:
    """Load image files into one float tensor.

    Args:
        paths: image files, all of the same size.
        channels: 1 (converted to grayscale) or 3 (converted to RGB).

    Returns:
        float32 tensor (N, channels, H, W) in [0, 1].

    Raises:
        DataError: a file is missing or not an image.
        InputError: the images differ in size.
    """
    mode = {1: "L", 3: "RGB"}[channels]
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as im:
                arrays.append(np.asarray(im.convert(mode)))
        except FileNotFoundError:
            raise DataError(f"image file not found: {path}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"images differ in size ({sorted(sizes)}); purify one size at a time")
    batch = np.stack(arrays)
    if batch.ndim == 3:
        batch = batch[:, None]
    else:
        batch = batch.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)


def save_image_files(images: torch.Tensor, paths: list[Path]) -> None:
    """Write images (N, C, H, W) in [0, 1] as 8-bit files; the suffix picks the format."""
    arr = (images.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy())
    for a, path in zip(arr, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        img.save(path)
