"""Data sets: MNIST, Fashion-MNIST, CIFAR-10 (official and JPEG copy), and image folders.

    >>> from aepurify.data import load_dataset
    >>> test = load_dataset("mnist", "test")          # embedded copy, no setup
    >>> x, y = test.tensors(slice(0, 8))              # (8, 1, 28, 28) in [0, 1], (8,)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..resources import resource_path
from . import cifar10, mnist
from .base import ImageDataset, cache_root, download, resolve_data_dir
from .images import ImageInfo, load_image_files, read_image_files, save_image_files

__all__ = ["DATASETS", "DataSetSpec", "ImageDataset", "load_dataset", "dataset_spec", "cache_root",
           "load_image_files", "read_image_files", "save_image_files", "ImageInfo"]


@dataclass(frozen=True)
class DataSetSpec:
    """How to find, fetch and read one data set.

    Attributes:
        name: registry name, also the ``dataset`` column of result rows.
        image_shape: (C, H, W).
        num_classes: number of classes.
        files: split -> paths, relative to the data folder, that the split needs.
        urls: relative path -> canonical download URL.
        read: (split, data folder) -> ImageDataset; verifies checksums before reading.
        mean, std: per-channel statistics of the training split, used by classifiers to
            normalise inside the module (attacks see [0, 1] images).
        embedded: shipped resource folder with the same layout (MNIST only), or None.
        note: how results on it must be labelled, if anything special.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    files: dict[str, tuple[str, ...]]
    urls: dict[str, str]
    read: Callable[[str, Path], ImageDataset]
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    embedded: str | None = None
    note: str = ""


DATASETS: Registry[DataSetSpec] = Registry("data set")


def _idx_spec(name: str, mean: float, std: float, embedded: str | None) -> DataSetSpec:
    files = {split: tuple(f"{name}/{f}" for f in names) for split, names in mnist.FILES.items()}
    urls = {rel: mnist.URLS[name] + Path(rel).name for rel in sum(files.values(), ())}
    return DataSetSpec(
        name=name, image_shape=(1, 28, 28), num_classes=10, files=files, urls=urls,
        read=lambda split, root: mnist.load_idx_dataset(name, split, root / name),
        mean=(mean,), std=(std,), embedded=embedded,
    )


for _spec in (
    _idx_spec("mnist", 0.1307, 0.3081, embedded="data"),
    _idx_spec("fashion-mnist", 0.2860, 0.3530, embedded=None),
    DataSetSpec(
        name="cifar10", image_shape=(3, 32, 32), num_classes=10,
        files={"train": (cifar10.OFFICIAL_FILE,), "test": (cifar10.OFFICIAL_FILE,)},
        urls={cifar10.OFFICIAL_FILE: cifar10.OFFICIAL_URL},
        read=lambda split, root: cifar10.load_cifar10_official(split, root / cifar10.OFFICIAL_FILE),
        mean=cifar10.MEAN, std=cifar10.STD,
    ),
    DataSetSpec(
        name="cifar10-jpeg", image_shape=(3, 32, 32), num_classes=10,
        files={"train": (cifar10.JPEG_FILE,), "test": (cifar10.JPEG_FILE,)},
        urls={},  # not downloadable: a local copy only (../shared/data)
        read=lambda split, root: cifar10.load_cifar10_jpeg(split, root / cifar10.JPEG_FILE),
        mean=cifar10.MEAN, std=cifar10.STD,
        note="CIFAR-10 (JPEG copy): lossy pixels, not comparable to published CIFAR-10 numbers",
    ),
):
    DATASETS.register(_spec.name)(_spec)  # type: ignore[arg-type]


def dataset_spec(name: str) -> DataSetSpec:
    """The spec of a data set by name. Raises ConfigError for an unknown name."""
    return DATASETS.get(name)  # type: ignore[return-value]


def load_dataset(name: str, split: str = "test", data_dir: str | Path | None = None
                 ) -> ImageDataset:
    """Load a data set split as uint8 tensors, verifying checksums first.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10`` (official) or ``cifar10-jpeg``.
        split: ``train`` or ``test``.
        data_dir: folder holding the files (see ``aepurify.data.base`` for the resolution order
            when None).

    Returns:
        ImageDataset with images uint8 (N, C, H, W) and labels int64 (N,).

    Raises:
        ConfigError: unknown data set or split.
        DataError: missing folder or files (the message names the files to put where), checksum
            mismatch, corrupt file.
    """
    spec = dataset_spec(name)
    if split not in spec.files:
        raise ConfigError(f"unknown split {split!r} for {name}; use one of {sorted(spec.files)}")
    root, explicit = resolve_data_dir(data_dir)
    needed = spec.files[split]
    missing = [rel for rel in needed if not (root / rel).is_file()]
    if missing and not explicit and spec.embedded:
        shipped = resource_path(spec.embedded)
        if shipped is not None and all((shipped / rel).is_file() for rel in needed):
            root, missing = shipped, []
    for rel in missing:
        url = spec.urls.get(rel)
        hint = (f"{name} {split} data not found: put {', '.join(missing)} under {root} "
                f"(or pass --data-dir / set AEPURIFY_DATA to a folder that holds them)")
        if url is None:
            raise DataError(hint)
        try:
            download(url, root / rel)
        except DataError as exc:
            raise DataError(f"{hint}; {exc}") from None
    return spec.read(split, root)
