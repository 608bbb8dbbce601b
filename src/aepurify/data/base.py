"""Data sets as uint8 tensors, data-directory resolution, checksums and downloads.

Resolution order for the folder that holds the data files: the ``--data-dir`` flag (the
``data_dir`` argument), then the ``AEPURIFY_DATA`` environment variable, then a cache folder
(``$AEPURIFY_CACHE/data``, default ``~/.cache/aepurify/data``). Inside that folder each data set
has this layout: ``mnist/`` and ``fashion-mnist/`` (the canonical IDX gzip files),
``cifar-10-python.tar.gz``, ``cifar10-jpeg.tar.gz``. Without an explicit folder, MNIST falls
back to the copy embedded in the project, so the demo needs neither network nor setup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set held in memory.

    Attributes:
        name: registry name of the data set (``"mnist"``, ``"cifar10-jpeg"``, ...).
        split: ``"train"`` or ``"test"``.
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,), class indices.
        classes: class names, index = label.
        source: where the files were read from (for the run record).
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def take(self, n: int | None = None, start: int = 0) -> ImageDataset:
        """The images ``start .. start + n`` (all remaining if n is None), in data-set order."""
        stop = len(self) if n is None else min(len(self), start + n)
        return ImageDataset(self.name, self.split, self.images[start:stop],
                            self.labels[start:stop], self.classes, self.source)

    def first(self, n: int, what: str = "n_test") -> ImageDataset:
        """The first ``n`` images, as :meth:`take`; asking for more than the data set holds
        gives all of them and says so in one logged line (never a silent cap)."""
        if n > len(self):
            log.warning("%s %d is more than the %s images of %s (%s split): using all %s",
                        what, n, f"{len(self):,}", self.name, self.split, f"{len(self):,}")
        return self.take(n)

    def tensors(self, sl: slice = slice(None), device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images (n, C, H, W) in [0, 1] and int64 labels (n,) for the slice ``sl``."""
        x = self.images[sl].to(device=device, dtype=torch.float32).div_(255.0)
        return x, self.labels[sl].to(device)


def cache_root() -> Path:
    """Root of aepurify's cache: ``$AEPURIFY_CACHE`` or ``~/.cache/aepurify``."""
    env = os.environ.get("AEPURIFY_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aepurify"


def resolve_data_dir(data_dir: str | Path | None) -> tuple[Path, bool]:
    """The folder to read data files from, and whether the user named it explicitly.

    Raises:
        DataError: the named folder (flag or AEPURIFY_DATA) does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory {path} does not exist")
        return path, True
    env = os.environ.get("AEPURIFY_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"AEPURIFY_DATA={env} is not a directory")
        return path, True
    return cache_root() / "data", False


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_digest(path: Path, expected: str | tuple[str, ...], algorithm: str = "md5") -> str:
    """Check a file's digest before anything reads it; returns the digest.

    Raises:
        DataError: the digest differs (names the file, the expected and the actual digest).
    """
    allowed = (expected,) if isinstance(expected, str) else expected
    actual = file_digest(path, algorithm)
    if actual not in allowed:
        raise DataError(f"checksum mismatch for {path}: {algorithm} {actual}, expected "
                        f"{' or '.join(allowed)} (corrupt or incomplete file; delete it and "
                        f"fetch it again)")
    return actual


def offline() -> bool:
    """True when downloads are disabled (AEPURIFY_OFFLINE=1)."""
    return os.environ.get("AEPURIFY_OFFLINE", "0") == "1"


def download(url: str, dest: Path, timeout: float = 20.0) -> None:
    """Download ``url`` to ``dest`` atomically (temporary file, then rename).

    Raises:
        DataError: downloads are disabled or the host cannot be reached.
    """
    if offline():
        raise DataError("downloads are disabled (AEPURIFY_OFFLINE=1)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {url}: {reason}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
