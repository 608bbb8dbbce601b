"""Image folders of any size: one sub-folder per class, or a CSV of ``file,label``.

Every image is resized so that its shorter side is ``resize`` pixels (bicubic; default
``round(image_size * 256 / 224)``, ImageNet's "resize 256, center crop 224") and center-cropped
to ``image_size`` x ``image_size``, the standard evaluation preprocessing.

Labels:

- class sub-folders: class names are the folder names, indices in sorted order; when every folder
  is an ImageNet-1k synset id (``n01440764``, the layout of the official validation set after the
  usual ``valprep`` step), labels are ImageNet class indices and the classes the 1000 ImageNet
  names, so a subset of classes still matches a 1000-class classifier (``classes: folders``
  turns this off);
- a CSV with a header ``file,label`` (an optional ``class`` column names the classes): paths
  relative to ``root``, integer labels; ``classes: imagenet`` takes the ImageNet names.

Images are ordered round-robin over the classes (the first image of every class, then the
second, ...), so the first n images of a large folder cover as many classes as possible.
"""

from __future__ import annotations

import csv
import importlib.metadata
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataError
from ..utils import progress
from .base import ImageDataset
from .images import decoded_image, eight_bit
from .imagenet import (IMAGENET_MEAN, IMAGENET_STD, SAMPLES_PACKAGE, imagenet_classes,
                       imagenet_synsets, sample_files)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_SYNSET = re.compile(r"n\d{8}")


def resize_side(image_size: int, resize: int | None = None) -> int:
    """The shorter side images are resized to before the center crop: ``resize``, or
    ``round(image_size * 256 / 224)`` (256 for 224 px)."""
    return int(resize) if resize is not None else round(image_size * 256 / 224)


def resize_center_crop(image: Image.Image, image_size: int, resize: int | None = None
                       ) -> Image.Image:
    """Resize ``image`` so that its shorter side is :func:`resize_side` (bicubic), then crop
    the central ``image_size`` x ``image_size`` square."""
    side = resize_side(image_size, resize)
    w, h = image.size
    scale = side / min(w, h)
    new = (max(side, round(w * scale)), max(side, round(h * scale)))
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - image_size) // 2, (new[1] - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def read_images(paths: Sequence[Path], image_size: int, channels: int = 3,
                resize: int | None = None, desc: str = "decode images") -> torch.Tensor:
    """Decode, resize and center-crop image files.

    Returns:
        uint8 tensor (N, channels, image_size, image_size).

    16-bit grayscale images are scaled to 8 bits (not clipped, as Pillow's conversion would).

    Raises:
        DataError: a missing or undecodable file, one above Pillow's pixel limit (a
            decompression bomb), or one without a [0, 1] scale (floating-point or 32-bit
            pixels), named in one line.
    """
    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    for i, path in enumerate(progress(paths, desc=desc, unit="img")):
        with decoded_image(Path(path)) as im:
            crop = resize_center_crop(eight_bit(im, Path(path)).convert(mode), image_size,
                                      resize)
        out[i] = np.asarray(crop).reshape(image_size, image_size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class ImageFolderOptions(BaseModel):
    """An image folder as a data set (``dataset: {kind: imagefolder, ...}`` in configs).

    Attributes:
        kind: ``imagefolder``.
        root: the folder (class sub-folders, or the images a CSV names).
        image_size: side of the square images after resize and center crop (pixels).
        resize: shorter side before the crop (default ``round(image_size * 256 / 224)``).
        csv: a CSV file (relative to ``root`` or absolute) with a ``file,label`` header.
        classes: ``auto`` (ImageNet classes when every class folder is an ImageNet synset id),
            ``folders`` (folder names) or ``imagenet`` (the 1000 ImageNet names).
        channels: 3 (RGB) or 1 (grayscale).
        max_images: read only the first N images (in the round-robin order); decoding a full
            validation set takes minutes, so set it to the number of images you evaluate.
        name: the data set's name in result rows (default ``imagefolder-<folder name>``).
        mean, std: per-channel statistics for classifiers trained on it (default ImageNet's).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["imagefolder"] = "imagefolder"
    root: str
    image_size: int = Field(224, ge=8)
    resize: int | None = Field(None, ge=8)
    csv: str | None = None
    classes: Literal["auto", "folders", "imagenet"] = "auto"
    channels: Literal[1, 3] = 3
    max_images: int | None = Field(None, ge=1)
    name: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def dataset_name(self) -> str:
        return self.name or f"imagefolder-{Path(self.root).expanduser().resolve().name}"


def _round_robin(groups: list[list[tuple[Path, int]]]) -> list[tuple[Path, int]]:
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def _folder_listing(root: Path, classes: str) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"image folder {root} has no class sub-folders (give one folder per "
                        "class, or a csv of file,label)")
    names = [p.name for p in folders]
    synsets = imagenet_synsets()
    as_imagenet = classes == "imagenet" or (
        classes == "auto" and all(_SYNSET.fullmatch(n) and n in synsets for n in names))
    if as_imagenet:
        unknown = [n for n in names if n not in synsets]
        if unknown:
            raise DataError(f"image folder {root}: {unknown[0]!r} is not an ImageNet-1k synset "
                            "id (classes: imagenet needs synset folder names)")
        labels = [synsets.index(n) for n in names]
        class_names = imagenet_classes()
    else:
        labels, class_names = list(range(len(names))), tuple(names)
    groups = []
    for folder, label in zip(folders, labels):
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        groups.append([(p, label) for p in files])
    return _round_robin(groups), class_names


def _csv_listing(root: Path, csv_path: Path, classes: str
                 ) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    if not csv_path.is_file():
        raise DataError(f"label file not found: {csv_path}")
    rows: list[tuple[Path, int]] = []
    named: dict[int, str] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: the first line must be a header with the columns "
                            "file,label (and optionally class)")
        for line, rec in enumerate(reader, start=2):
            try:
                label = int(rec["label"])
            except (TypeError, ValueError):
                raise DataError(f"{csv_path} line {line}: label {rec['label']!r} is not an "
                                "integer class index") from None
            if label < 0:
                raise DataError(f"{csv_path} line {line}: negative label {label}")
            if rec.get("class"):
                named.setdefault(label, rec["class"])
            rows.append((root / rec["file"], label))
    if not rows:
        raise DataError(f"{csv_path} names no images")
    if classes == "imagenet":
        class_names = imagenet_classes()
        if max(label for _, label in rows) >= len(class_names):
            raise DataError(f"{csv_path}: a label is not an ImageNet-1k class index (0..999)")
    else:
        k = max(label for _, label in rows) + 1
        class_names = tuple(named.get(i, str(i)) for i in range(k))
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    return _round_robin([by_class[k] for k in sorted(by_class)]), class_names


def list_image_folder(options: ImageFolderOptions
                      ) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """The (file, label) pairs of an image folder in reading order, and the class names.

    Raises:
        DataError: missing folder or CSV, no images, a malformed CSV line.
    """
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    if options.csv is not None:
        csv_path = Path(options.csv).expanduser()
        items, classes = _csv_listing(root, csv_path if csv_path.is_absolute()
                                      else root / csv_path, options.classes)
    else:
        items, classes = _folder_listing(root, options.classes)
    if not items:
        raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return items[:options.max_images], classes


def load_image_folder(options: ImageFolderOptions | dict, split: str = "test") -> ImageDataset:
    """Read an image folder (see :class:`ImageFolderOptions` and the module docstring).

    Args:
        options: the folder's options, or a mapping of them.
        split: recorded in the data set (a folder is whatever split you point it at).

    Returns:
        ImageDataset with uint8 images (N, C, image_size, image_size) and int64 labels (N,).

    Raises:
        DataError: missing folder, CSV or image, undecodable image, malformed CSV.
    """
    opts = options if isinstance(options, ImageFolderOptions) else \
        ImageFolderOptions.model_validate(options)
    items, classes = list_image_folder(opts)
    images = read_images([p for p, _ in items], opts.image_size, opts.channels, opts.resize,
                         desc=f"decode {opts.dataset_name}")
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ImageDataset(opts.dataset_name, split, images, labels, classes,
                        str(Path(opts.root).expanduser()))


def load_imagenet_samples(split: str = "test", image_size: int = 224) -> ImageDataset:
    """``imagenet-samples``: the 20 foolbox ImageNet validation images, resized (shorter side
    ``image_size * 256 / 224``, bicubic) and center-cropped to ``image_size``.

    Returns:
        ImageDataset: uint8 images (20, 3, 224, 224), labels int64 (20,) in 0..999, the 1000
        ImageNet class names.

    Raises:
        DataError: see :func:`sample_files`.
    """
    files = sample_files()
    images = read_images([p for p, _ in files], image_size, desc="decode imagenet-samples")
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    version = importlib.metadata.version(SAMPLES_PACKAGE)
    return ImageDataset("imagenet-samples", split, images, labels, imagenet_classes(),
                        f"foolbox {version} wheel: {files[0][0].parent}")
