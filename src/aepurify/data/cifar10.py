"""CIFAR-10: the official python format and a JPEG re-encoded copy (``cifar10-jpeg.tar.gz``).

The official ``cifar-10-python.tar.gz`` holds pickled batches. Its md5 is verified before a byte
of it is unpickled, and the unpickler only accepts the few numpy names the batches use, so even a
file that matched the checksum could not run code.

The JPEG copy (``cifar10-jpeg.tar.gz``) has lossy pixels (mean absolute error about 8/255 against
the official ones): anything measured on it must be labelled "CIFAR-10 (JPEG copy)"; its data set
name ``cifar10-jpeg`` travels into every result row for that reason.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..utils import progress
from .base import ImageDataset, cache_root, verify_digest

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

OFFICIAL_FILE = "cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MEMBERS = {
    "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
    "test": ["cifar-10-batches-py/test_batch"],
}

JPEG_FILE = "cifar10-jpeg.tar.gz"
JPEG_SHA256 = "97aa1c0fdbc6114340f19f52f0050e54b65362406845d8e0ad5f9fa77944147a"


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches that refuses every global except numpy array rebuilding."""

    # numpy array rebuilding; _codecs.encode turns text into bytes (protocol-2 pickles made by
    # Python 3 use it for array payloads). None of these can run code.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) in self._ALLOWED:
            if module == "numpy.core.multiarray":  # numpy 2 renamed numpy.core to numpy._core
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _read_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise DataError(f"corrupt CIFAR-10 batch {where}: {exc}") from None
    return data, labels


def load_cifar10_official(split: str, path: Path, expected_md5: str = OFFICIAL_MD5
                          ) -> ImageDataset:
    """Read ``split`` from the official ``cifar-10-python.tar.gz`` at ``path``.

    Raises:
        DataError: checksum mismatch, unreadable archive or malformed batch.
    """
    verify_digest(path, expected_md5, "md5")
    images, labels = [], []
    try:
        with tarfile.open(path, "r:gz") as tf:
            for member in OFFICIAL_MEMBERS[split]:
                f = tf.extractfile(member)
                if f is None:
                    raise DataError(f"corrupt archive {path}: {member} is not a file")
                x, y = _read_batch(f.read(), f"{path}:{member}")
                images.append(x)
                labels.append(y)
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise DataError(f"corrupt archive {path}: {exc}") from None
    return ImageDataset("cifar10", split, torch.from_numpy(np.concatenate(images)),
                        torch.from_numpy(np.concatenate(labels)), CLASSES, str(path))


def load_cifar10_jpeg(split: str, path: Path, expected_sha256: str = JPEG_SHA256
                      ) -> ImageDataset:
    """Read ``split`` from the CIFAR-10 JPEG copy (``cifar10-jpeg/{split}/NNNNN.jpg`` plus
    ``{split}_labels.csv`` with columns index,label,class) at ``path``.

    Decoding the 50,000 (10,000) JPEG files takes tens of seconds, so the decoded arrays are
    kept in the cache (``$AEPURIFY_CACHE/data/decoded/``, see :func:`decoded_cache_file`), keyed
    by the archive's SHA-256, which is verified on every load: a changed archive cannot be served
    stale pixels. The cache is a plain ``.npz`` of uint8 images and int64 labels, read without
    pickle; a cache file that does not read back is decoded anew and replaced.

    Raises:
        DataError: checksum mismatch, unreadable archive, an undecodable JPEG, missing images or
            labels.
    """
    digest = verify_digest(path, expected_sha256, "sha256")
    cached = decoded_cache_file(digest, split)
    try:
        with np.load(cached, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
        if images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(labels):
            return _jpeg_dataset(split, images, labels, path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent or unreadable: decode the archive (and rewrite the cache below)
    images, labels = _decode_jpeg_split(split, path)
    _write_npz(cached, images=images, labels=labels)
    return _jpeg_dataset(split, images, labels, path)


def decoded_cache_file(sha256: str, split: str) -> Path:
    """Where the decoded arrays of one split of the archive with this SHA-256 are cached."""
    return cache_root() / "data" / "decoded" / f"cifar10-jpeg-{sha256[:32]}-{split}.npz"


def _write_npz(target: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``target`` atomically (a temporary file renamed into place); a cache
    that cannot be written is skipped, not an error."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".npz.part")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except OSError:
        pass
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _jpeg_dataset(split: str, images: np.ndarray, labels: np.ndarray, path: Path
                  ) -> ImageDataset:
    return ImageDataset("cifar10-jpeg", split, torch.from_numpy(np.ascontiguousarray(images)),
                        torch.from_numpy(labels.astype(np.int64)), CLASSES, str(path))


def _decode_jpeg_split(split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every JPEG of ``split``: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    prefix = f"cifar10-jpeg/{split}/"
    pixels: dict[int, np.ndarray] = {}
    label_rows: list[dict[str, str]] | None = None
    try:
        with tarfile.open(path, "r:gz") as tf:
            for member in progress(tf, desc=f"decode cifar10-jpeg {split}", unit="file"):
                if member.name == f"cifar10-jpeg/{split}_labels.csv":
                    text = tf.extractfile(member).read().decode()  # type: ignore[union-attr]
                    label_rows = list(csv.DictReader(io.StringIO(text)))
                elif member.name.startswith(prefix) and member.name.endswith(".jpg"):
                    index = int(Path(member.name).stem)
                    blob = tf.extractfile(member).read()  # type: ignore[union-attr]
                    with Image.open(io.BytesIO(blob)) as im:
                        pixels[index] = np.asarray(im.convert("RGB"))
    except (tarfile.TarError, OSError, EOFError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"corrupt archive {path}: {exc}") from None
    if label_rows is None:
        raise DataError(f"corrupt archive {path}: {split}_labels.csv is missing")
    n = len(label_rows)
    if sorted(pixels) != list(range(n)):
        raise DataError(f"corrupt archive {path}: {len(pixels)} {split} images for {n} labels")
    images = np.stack([pixels[i] for i in range(n)]).transpose(0, 3, 1, 2)
    labels = np.array([int(r["label"]) for r in sorted(label_rows, key=lambda r: int(r["index"]))])
    return np.ascontiguousarray(images), labels.astype(np.int64)
