"""MNIST and Fashion-MNIST in the canonical IDX gzip format.

Checksums are verified on the decompressed bytes (md5): copies of the canonical files are often
compressed differently (other gzip settings), but their raw IDX bytes are the same.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataset

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# md5 of the decompressed IDX files.
RAW_MD5 = {
    # canonical MNIST
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    # official Fashion-MNIST pixels (computed from the Debian package dataset-fashion-mnist)
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

CLASSES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}


# The largest canonical file (the training images) holds 47,040,016 bytes; a header that asks
# for more than this is not MNIST or Fashion-MNIST, whatever the gzip stream would inflate to.
MAX_IDX_BYTES = 64 * 2**20


def read_idx_gz(path: Path, expected_md5: str) -> np.ndarray:
    """Read one gzip-compressed IDX file, then check the md5 of its decompressed bytes.

    Decompression is streamed and capped by the IDX header (magic number and dimensions): at
    most the header's payload plus one byte is inflated, and a header above
    :data:`MAX_IDX_BYTES` is refused, so a gzip bomb in a data folder cannot exhaust memory.

    Returns:
        uint8 array: (N, H, W) for image files, (N,) for label files.

    Raises:
        DataError: unreadable gzip, malformed or oversized IDX header, a payload shorter or
            longer than the header says, or a checksum mismatch.
    """
    try:
        with gzip.open(path, "rb") as f:
            magic_bytes = f.read(4)
            magic = int.from_bytes(magic_bytes, "big")
            if len(magic_bytes) < 4 or magic >> 8 != 0x08:  # 0x08 = unsigned byte data
                raise DataError(f"corrupt data file {path}: not an IDX file of unsigned bytes")
            ndim = magic & 0xFF
            dim_bytes = f.read(4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise DataError(f"corrupt data file {path}: truncated IDX header")
            dims = [int.from_bytes(dim_bytes[4 * i: 4 * i + 4], "big") for i in range(ndim)]
            size = int(np.prod(dims, dtype=object)) if dims else 0
            if 4 + 4 * ndim + size > MAX_IDX_BYTES:
                raise DataError(f"corrupt data file {path}: header says {dims} "
                                f"({size:,} bytes), more than any MNIST file holds")
            payload = f.read(size)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt data file {path}: {exc}") from None
    if len(payload) != size or extra:
        more = "more than" if extra else f"{len(payload):,} bytes, not"
        raise DataError(f"corrupt data file {path}: header says {dims}, payload has {more} "
                        f"{size:,} bytes")
    actual = hashlib.md5(magic_bytes + dim_bytes + payload).hexdigest()
    if actual != expected_md5:
        raise DataError(f"checksum mismatch for {path}: md5 of the decompressed data is {actual}, "
                        f"expected {expected_md5} (corrupt or wrong file)")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def load_idx_dataset(name: str, split: str, folder: Path) -> ImageDataset:
    """Load ``split`` of MNIST or Fashion-MNIST from ``folder`` (holding the four .gz files)."""
    image_file, label_file = FILES[split]
    images = read_idx_gz(folder / image_file, RAW_MD5[name][image_file])
    labels = read_idx_gz(folder / label_file, RAW_MD5[name][label_file])
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    return ImageDataset(
        name=name, split=split,
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=CLASSES[name], source=str(folder),
    )
