"""Data sets: MNIST, Fashion-MNIST, CIFAR-10 (official and JPEG copy), the 20 ImageNet samples
of the foolbox wheel, image folders, and multi-scale crops as a training source.

    >>> from aepurify.data import load_dataset
    >>> test = load_dataset("mnist", "test")          # embedded copy, no setup
    >>> x, y = test.tensors(slice(0, 8))              # (8, 1, 28, 28) in [0, 1], (8,)
    >>> folder = load_dataset({"kind": "imagefolder", "root": "val", "image_size": 224})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ..errors import ConfigError, DataError
from ..registry import Registry
from ..resources import resource_path
from . import cifar10, mnist
from .base import ImageDataset, cache_root, download, resolve_data_dir
from .crops import CropOptions, multiscale_crops
from .folders import (ImageFolderOptions, list_image_folder, load_image_folder,
                      load_imagenet_samples)
from .images import ImageInfo, load_image_files, read_image_files, save_image_files
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, SAMPLES_NOTE, imagenet_classes

__all__ = ["DATASETS", "DataSetSpec", "ImageDataset", "load_dataset", "dataset_spec", "cache_root",
           "load_image_files", "read_image_files", "save_image_files", "ImageInfo",
           "register_dataset", "load_training_data", "ImageFolderOptions", "load_image_folder",
           "CropOptions", "load_crops", "multiscale_crops", "imagenet_classes", "load_imagenet_samples"]


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
        options: the mapping an image folder was registered from (None for built-in sets).
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
    options: dict[str, Any] | None = None


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
        urls={},  # not downloadable: a local copy only (a data folder that holds it)
        read=lambda split, root: cifar10.load_cifar10_jpeg(split, root / cifar10.JPEG_FILE),
        mean=cifar10.MEAN, std=cifar10.STD,
        note="CIFAR-10 (JPEG copy): lossy pixels, not comparable to published CIFAR-10 numbers",
    ),
    # package data of the foolbox wheel (the imagenet extra); a test split only
    DataSetSpec(
        name="imagenet-samples", image_shape=(3, 224, 224), num_classes=1000,
        files={"test": ()}, urls={},
        read=lambda split, root: load_imagenet_samples(split),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, note=SAMPLES_NOTE,
    ),
):
    DATASETS.register(_spec.name)(_spec)  # type: ignore[arg-type]


def _folder_spec(options: ImageFolderOptions) -> DataSetSpec:
    """The spec of an image folder; lists the folder now (for the class count), reads it
    only when loaded. Both splits read the same folder."""
    _, classes = list_image_folder(options)
    size, c = options.image_size, options.channels
    read = lambda split, root: load_image_folder(options, split)  # noqa: E731
    # grayscale folders with the (RGB) default statistics: their channel average
    mean, std = ((stat if len(stat) in (1, c) else (sum(stat) / len(stat),))
                 for stat in (options.mean, options.std))
    return DataSetSpec(name=options.dataset_name, image_shape=(c, size, size),
                       num_classes=len(classes), files={"test": (), "train": ()}, urls={},
                       read=read, mean=tuple(mean), std=tuple(std),
                       options=options.model_dump(mode="json"))


def register_dataset(ref: str | Mapping[str, Any]) -> str:
    """The registry name of a data set given by name or as a mapping.

    A mapping ``{kind: imagefolder, root: DIR, image_size: 224, ...}`` (see
    :class:`ImageFolderOptions`) is registered under its name (``imagefolder-<folder>`` unless it
    gives ``name``), replacing an earlier folder of that name. A name is returned as it is.

    Raises:
        ConfigError: a malformed mapping, or a name of a built-in data set.
        DataError: the folder does not exist or holds no images.
    """
    if isinstance(ref, str):
        return ref
    if not isinstance(ref, Mapping) or ref.get("kind") != "imagefolder":
        raise ConfigError("a dataset is a name or a mapping {kind: imagefolder, root: DIR, "
                          f"image_size: N}}; got {ref!r}")
    try:
        options = ImageFolderOptions.model_validate(dict(ref))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"imagefolder {where}: {err['msg']}") from None
    name = options.dataset_name
    if name in DATASETS and dataset_spec(name).options is None:
        raise ConfigError(f"image folder name {name!r} is a built-in data set; give it another "
                          "name")
    DATASETS.register(name, replace=True)(_folder_spec(options))  # type: ignore[arg-type]
    return name


def dataset_spec(name: str | Mapping[str, Any]) -> DataSetSpec:
    """The spec of a data set by name (or image folder mapping, see :func:`register_dataset`).
    Raises ConfigError for an unknown name."""
    key = name if isinstance(name, str) else register_dataset(name)
    return DATASETS.get(key)  # type: ignore[return-value]


def load_training_data(ref: str | Mapping[str, Any] | Any, data_dir: str | Path | None = None
                       ) -> ImageDataset:
    """A training source: a data set's ``train`` split by name, an image folder, or
    multi-scale crops (``{kind: crops, ...}``, see :class:`CropOptions`).

    Raises:
        ConfigError, DataError: as :func:`load_dataset` and :func:`load_crops`.
    """
    if isinstance(ref, CropOptions) or (isinstance(ref, Mapping) and ref.get("kind") == "crops"):
        try:
            return load_crops(ref, None if data_dir is None else str(data_dir))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"crops {'.'.join(str(p) for p in err['loc'])}: "
                              f"{err['msg']}") from None
    if isinstance(ref, ImageFolderOptions):
        return load_image_folder(ref, "train")
    return load_dataset(ref, "train", data_dir)


def load_dataset(name: str | Mapping[str, Any], split: str = "test",
                 data_dir: str | Path | None = None) -> ImageDataset:
    """Load a data set split as uint8 tensors, verifying checksums first.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10`` (official), ``cifar10-jpeg``,
            ``imagenet-samples`` (test split only), or an image folder mapping
            (:func:`register_dataset`).
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
        hint = (" (a test set only: train purifiers on another source, e.g. train: {data: "
                "{kind: crops, source: cifar10-jpeg}})" if split == "train" else "")
        raise ConfigError(f"unknown split {split!r} for {spec.name}; use one of "
                          f"{sorted(spec.files)}{hint}")
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


def load_crops(options: CropOptions | dict[str, Any], data_dir: str | None = None
               ) -> ImageDataset:
    """The crops data set of ``options`` (a :class:`CropOptions` or a mapping of it).

    Args:
        data_dir: the source's data folder when ``options.data_dir`` is not set.

    Returns:
        ImageDataset named ``crops-<source>-<size>px``, split ``train``, uint8
        (count, C, size, size), the source's labels and classes.

    Raises:
        ConfigError, DataError: an unknown or missing source.
    """
    opts = options if isinstance(options, CropOptions) else CropOptions.model_validate(options)
    if isinstance(opts.source, str):
        source = load_dataset(opts.source, opts.split, opts.data_dir or data_dir)
    else:
        source = load_image_folder(opts.source, opts.split)
    gen = torch.Generator().manual_seed(opts.seed)
    images, origin = multiscale_crops(source.images, opts.size, opts.scales, opts.count, gen)
    scales = "/".join(f"{s:g}" for s in opts.scales)
    return ImageDataset(f"crops-{opts.source_name}-{opts.size}px", "train", images,
                        source.labels[origin], source.classes,
                        f"{source.source} (crops of {opts.size} px at x{scales})")
