"""Read and write image files (PNG, JPEG, ...) for ``aepurify purify``.

Nothing is changed silently: 16-bit images are read at their depth (and written back at it),
an image is converted between grayscale and colour only when asked, a dropped alpha channel is
reported, and an image above Pillow's decompression-bomb limit is refused in one line.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, InputError
from ..utils import make_folder

log = logging.getLogger(__name__)

GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


@dataclass(frozen=True)
class ImageInfo:
    """What an image file held before it became a tensor.

    Attributes:
        path: the file.
        channels: its own channels: 1 (grayscale) or 3 (colour).
        bits: bits per sample of its pixels (8 or 16).
        alpha: it had an alpha channel (dropped: purifiers see opaque pixels).
    """

    path: Path
    channels: int
    bits: int
    alpha: bool


@contextmanager
def decoded_image(path: Path) -> Iterator[Image.Image]:
    """The image file ``path`` opened and decoded in full (closed after the block).

    Raises:
        DataError: missing or undecodable file, or above Pillow's pixel limit
            (``Image.MAX_IMAGE_PIXELS``: a decompression bomb, or a picture too large to hold).
    """
    try:
        with warnings.catch_warnings():
            # past MAX_IMAGE_PIXELS Pillow only warns, past twice that it raises: refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            try:
                im.load()
            except BaseException:
                im.close()
                raise
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"refusing image {path}: {exc}".splitlines()[0]) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}".splitlines()[0]) from None
    try:
        yield im
    finally:
        im.close()


def sixteen_bit_values(im: Image.Image, path: Path) -> np.ndarray:
    """The samples of a 16-bit grayscale image (modes ``I;16*``, or ``I`` within 0..65535) as
    float32 (H, W).

    Raises:
        DataError: 32-bit integer samples outside 0..65535 (no [0, 1] scale).
    """
    values = np.asarray(im).astype(np.float32)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"cannot read image {path}: 32-bit integer pixels; save it as an 8- or "
                        "16-bit image")
    return values


def eight_bit(im: Image.Image, path: Path) -> Image.Image:
    """``im`` with 8-bit samples: a 16-bit grayscale image scaled to 0..255 (rounded), where
    Pillow's own ``convert("L")`` clips every value above 255 to white; others unchanged.

    Raises:
        DataError: as :func:`sixteen_bit_values`, or floating-point pixels (no [0, 1] scale).
    """
    if im.mode == "F":
        raise DataError(f"cannot read image {path}: floating-point pixels have no [0, 1] scale; "
                        "save it as an 8- or 16-bit image")
    if im.mode not in SIXTEEN_BIT_MODES:
        return im
    scaled = np.round(sixteen_bit_values(im, path) * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def read_image(path: Path, channels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """One image file as float32 (H, W, C) in [0, 1].

    Args:
        path: the file.
        channels: convert to 1 (grayscale, ITU-R 601-2 luma) or 3 (RGB); None keeps its own.

    Raises:
        DataError: missing or unreadable file, above Pillow's pixel limit (a decompression
            bomb), or a sample format without a [0, 1] scale (floating point, 32-bit).
    """
    with decoded_image(path) as im:
        return _to_array(im, path, channels)


def _to_array(im: Image.Image, path: Path, channels: int | None) -> tuple[np.ndarray, ImageInfo]:
    alpha = im.mode in ALPHA_MODES or "transparency" in im.info
    own = 1 if im.mode in GRAY_MODES else 3
    if im.mode == "F":
        raise DataError(f"cannot read image {path}: floating-point pixels have no [0, 1] scale; "
                        "save it as an 8- or 16-bit image")
    bits = 8
    if im.mode in SIXTEEN_BIT_MODES:
        bits = 16
        arr = (sixteen_bit_values(im, path) / 65535.0)[..., None]
        if channels == 3:
            arr = np.repeat(arr, 3, axis=2)
    else:
        mode = {1: "L", 3: "RGB"}[channels or own]
        arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        if arr.ndim == 2:
            arr = arr[..., None]
    return arr, ImageInfo(Path(path), own, bits, alpha)


def read_image_files(paths: Sequence[Path], channels: int | None = None, *,
                     convert: bool = True) -> tuple[torch.Tensor, list[ImageInfo]]:
    """Load image files of one size into one float tensor, and say what each file held.

    Args:
        paths: image files, all of the same size.
        channels: 1 or 3, or None for the images' own (which must then agree).
        convert: convert images with other channels to ``channels``; if False such an image
            is refused instead (nothing turns grey or colour unasked).

    Returns:
        float32 tensor (N, C, H, W) in [0, 1] (16-bit files keep their 65,536 levels) and one
        :class:`ImageInfo` per file. A dropped alpha channel is logged in one line.

    Raises:
        DataError: a file is missing, not an image, or refused (see :func:`read_image`).
        InputError: the images differ in size, mix grayscale and colour with
            ``channels=None``, or have other channels than ``channels`` with ``convert=False``.
    """
    arrays, infos = [], []
    for path in paths:
        arr, info = read_image(Path(path), channels if convert else None)
        if channels is not None and not convert and info.channels != channels:
            kind = "colour" if info.channels == 3 else "grayscale"
            raise InputError(f"{path} is a {kind} image ({info.channels} channel(s)) but "
                             f"{channels} channel(s) are expected; pass --channels {channels} "
                             "to convert it")
        arrays.append(arr)
        infos.append(info)
    if channels is None and len({i.channels for i in infos}) > 1:
        raise InputError("the images mix grayscale and colour; pass --channels 1 or 3 to convert "
                         "them to one")
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise InputError(f"images differ in size ({sorted(sizes)}); purify one size at a time")
    with_alpha = [str(i.path) for i in infos if i.alpha]
    if with_alpha:
        shown = ", ".join(with_alpha[:3]) + (" ..." if len(with_alpha) > 3 else "")
        log.warning("alpha channel dropped from %d image(s) (%s): purified images are opaque",
                    len(with_alpha), shown)
    batch = np.stack(arrays).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(batch)), infos


def load_image_files(paths: list[Path], channels: int) -> torch.Tensor:
    """Load image files into one float tensor (N, channels, H, W) in [0, 1], converting each
    to 1 (grayscale) or 3 (RGB) channels; see :func:`read_image_files`.

    Raises:
        DataError: a file is missing, not an image, or refused.
        InputError: the images differ in size.
    """
    return read_image_files(paths, channels)[0]


def save_image_files(images: torch.Tensor, paths: Sequence[str | Path],
                     bits: int | Sequence[int] = 8) -> None:
    """Write images (N, C, H, W) in [0, 1]; the suffix picks the format.

    Args:
        images: (N, 1 or 3, H, W) in [0, 1].
        paths: one file per image (folders are created).
        bits: 8, or 16 (one value, or one per image); 16-bit is written for grayscale PNGs
            only (Pillow writes no 16-bit colour), other images get 8 bits.
    """
    depths = [bits] * len(paths) if isinstance(bits, int) else list(bits)
    x = images.detach().clamp(0, 1).cpu()
    for img, path, depth in zip(x, map(Path, paths), depths, strict=True):
        make_folder(path.parent, "output folder")
        if depth == 16 and img.shape[0] == 1 and path.suffix.lower() == ".png":
            a = img[0].mul(65535).round().numpy().astype(np.uint16)
            Image.fromarray(a).save(path)  # uint16 -> mode I;16
            continue
        a = img.mul(255).round().byte().numpy()
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)
