"""Small shared helpers: seeding, device choice, progress bars, stable hashing."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(base: int, *parts: Any) -> int:
    """A seed for one unit of work (a result row, a training run) that does not depend on the
    order in which units run, so a resumed run reproduces an uninterrupted one."""
    digest = hashlib.sha256(json.dumps([base, *parts], default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device.

    Raises:
        ConfigError: a CUDA device was asked for but none is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def progress_enabled() -> bool:
    """Progress bars are on unless AEPURIFY_PROGRESS=0 (tests and scripted runs)."""
    return os.environ.get("AEPURIFY_PROGRESS", "1") != "0"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False,
             unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar over ``iterable`` (to stderr), respecting AEPURIFY_PROGRESS."""
    return iter(progress_bar(desc, total=total, leave=leave, unit=unit, iterable=iterable))


def progress_bar(desc: str, total: int | None = None, leave: bool = False, unit: str = "it",
                 iterable: Iterable[T] | None = None) -> tqdm:
    """The tqdm bar itself (to stderr, respecting AEPURIFY_PROGRESS), for loops that advance it
    by hand (``update``) and show a figure beside it (``set_postfix``); close it when done."""
    return tqdm(iterable, desc=desc, total=total, leave=leave, unit=unit,
                disable=not progress_enabled(), mininterval=0.5, dynamic_ncols=True)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (keys sorted): a cache key for a config."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices that cover range(n) in chunks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def parse_eps(value: Any) -> float:
    """An epsilon as a float on the [0, 1] pixel scale, from a number or a fraction such as
    ``"8/255"``.

    Raises:
        ValueError: a string that is not a number or a fraction (pydantic validators turn it
            into a one-line config error).
    """
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read epsilon {value!r}") from None
    return float(value)
