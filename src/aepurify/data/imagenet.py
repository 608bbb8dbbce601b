"""ImageNet material available offline: the 1000 class names and ``imagenet-samples``, the 20
real ImageNet validation images that the ``foolbox`` 3.3.4 wheel ships
(``foolbox/data/imagenet_XX_LABEL.jpg``, 512 x 512 JPEG, the class index after the second
underscore).

The images are read as package data through ``importlib.metadata`` (``import foolbox`` itself
needs eagerpy, and nothing of foolbox's code is run); each file's sha256 is checked against the
wheel's own RECORD before it is decoded. Install them with ``pip install 'aepurify[imagenet]'``.
Results on them must be labelled "20 ImageNet validation images (foolbox samples)": twenty images
give accuracy in steps of 0.05.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
from functools import cache
from pathlib import Path

from ..errors import DataError

# ImageNet's per-channel statistics, the usual normalisation of torchvision / timm models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SAMPLES_PACKAGE = "foolbox"
SAMPLES_NOTE = "20 ImageNet validation images (foolbox samples)"
_SAMPLE = re.compile(r"foolbox/data/imagenet_(\d+)_(\d+)\.jpg")
_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@cache
def _class_table() -> tuple[tuple[str, str], ...]:
    lines = [line for line in _CLASSES_FILE.read_text().splitlines()
             if line and not line.startswith("#")]
    table = tuple(tuple(line.split("\t", 1)) for line in lines)
    if len(table) != 1000:  # a packaging mistake, not user input
        raise DataError(f"{_CLASSES_FILE} lists {len(table)} classes, expected 1000")
    return table  # type: ignore[return-value]


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class (``"tench"``, ``"goldfish"``, ...)."""
    return tuple(name for _, name in _class_table())


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet synset ids in class order (``"n01440764"``, ...)."""
    return tuple(synset for synset, _ in _class_table())


def _record_sha256(entry: importlib.metadata.PackagePath) -> str | None:
    """The sha256 (hex) the wheel's RECORD gives for a file, if it gives one."""
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def sample_files() -> list[tuple[Path, int]]:
    """The 20 ImageNet sample files of the installed foolbox wheel and their labels, in the
    order of their numbers, each checked against the wheel's RECORD.

    Raises:
        DataError: foolbox is not installed, ships no samples, or a file is missing or altered.
    """
    try:
        dist = importlib.metadata.distribution(SAMPLES_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataError("imagenet-samples needs the foolbox wheel's data files: "
                        "pip install 'aepurify[imagenet]' (or foolbox==3.3.4)") from None
    found = []
    for entry in dist.files or []:
        match = _SAMPLE.fullmatch(str(entry).replace("\\", "/"))
        if match is None:
            continue
        path = Path(entry.locate())
        if not path.is_file():
            raise DataError(f"foolbox sample {entry} is missing from {path.parent}")
        expected = _record_sha256(entry)
        if expected is not None and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise DataError(f"checksum mismatch for {path}: it differs from foolbox's RECORD "
                            "(reinstall foolbox)")
        found.append((int(match.group(1)), path, int(match.group(2))))
    if not found:
        raise DataError(f"foolbox {dist.version} ships no ImageNet samples "
                        "(foolbox/data/imagenet_XX_LABEL.jpg); install foolbox==3.3.4")
    return [(path, label) for _, path, label in sorted(found)]
