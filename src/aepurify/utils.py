"""Small shared helpers: seeding, device choice, progress bars, stable hashing."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
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


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing the caller's random streams (Python, NumPy, torch CPU and
    CUDA): their states are restored on exit. A model trained inside another model's training
    (a feature extractor trained on first use, then cached) reseeds and draws; without this the
    outer model's noise draws, and so its weights, depended on whether the inner one was cached.
    """
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


# Intra-op threads of every CPU training. Float sums are split per thread, so the thread count
# changes a gradient's last bits and, over a few hundred steps, the trained model: the demo's HGD
# trained with 1 and with 2 threads differs by 0.18 in white-box FGSM accuracy at 0.3. Pinned,
# a fresh clone trains the same weights on any machine with the same CPU instruction set
# (docs/evaluation.md, "Reproducibility"); 2 is the reference machine's core count.
TRAIN_THREADS = 2
TRAIN_THREADS_ENV = "AEPURIFY_TRAIN_THREADS"


def train_threads() -> int:
    """The intra-op thread count of CPU training: ``$AEPURIFY_TRAIN_THREADS`` or
    :data:`TRAIN_THREADS`.

    Raises:
        ConfigError: the variable is not a positive integer.
    """
    text = os.environ.get(TRAIN_THREADS_ENV, "").strip()
    if not text:
        return TRAIN_THREADS
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{TRAIN_THREADS_ENV} must be a positive integer; got {text!r}")
    return int(text)


@contextmanager
def training_numerics(device: torch.device | str) -> Iterator[dict[str, Any]]:
    """Run a training with reproducible CPU arithmetic: on a CPU, intra-op threads pinned to
    :func:`train_threads` (restored after); yields what a checkpoint records about it (torch
    version, device, CPU instruction set, threads). Same seed, same threads and same
    instruction set give bit-identical weights; another instruction set (AVX2 against AVX-512)
    or an accelerator gives other last bits, and so a slightly different model."""
    dev = torch.device(device)
    record: dict[str, Any] = {"torch": torch.__version__, "device": str(dev),
                              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if dev.type != "cpu":
        yield record
        return
    before = torch.get_num_threads()
    record["threads"] = train_threads()
    torch.set_num_threads(record["threads"])
    try:
        yield record
    finally:
        torch.set_num_threads(before)


def derive_seed(base: int, *parts: Any) -> int:
    """A seed for one unit of work (a result row, a training run) that does not depend on the
    order in which units run, so a resumed run reproduces an uninterrupted one."""
    digest = hashlib.sha256(json.dumps([base, *parts], default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little")


DEVICE_NAMES = "auto, cpu, cuda, cuda:<index> or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device_name(name: str) -> str:
    """``name`` itself if it names a device aepurify can run on (see :data:`DEVICE_NAMES`).

    Raises:
        ConfigError: any other name (``tpu``, ``gpu``, ``cuda:x``), naming the choices.
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name.strip()):
        raise ConfigError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    return name.strip()


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device. Under torchrun
    (``LOCAL_RANK`` set) ``"auto"`` and ``"cuda"`` mean the rank's own GPU, ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: an unknown device name, a CUDA (MPS) device asked for where none is
            available, or more ranks on this machine than GPUs.
    """
    name = check_device_name(name)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    local = os.environ.get("LOCAL_RANK", "").strip()
    if name == "cuda" and local.isdigit():
        if int(local) >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU of its own "
                              f"({torch.cuda.device_count()} visible): start at most that many "
                              "processes per machine")
        return torch.device(f"cuda:{local}")
    return torch.device(name)


def progress_enabled() -> bool:
    """Progress bars are on unless AEPURIFY_PROGRESS=0 (tests and scripted runs); under torchrun
    only rank 0 draws them (N ranks' bars on one terminal would overwrite each other)."""
    return (os.environ.get("AEPURIFY_PROGRESS", "1") != "0"
            and os.environ.get("RANK", "0").strip() in ("", "0"))


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False,
             unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar over ``iterable`` (to stderr), respecting AEPURIFY_PROGRESS."""
    return iter(progress_bar(desc, total=total, leave=leave, unit=unit, iterable=iterable))


def progress_bar(desc: str, total: int | None = None, leave: bool = False, unit: str = "it",
                 iterable: Iterable[T] | None = None) -> tqdm:
    """The tqdm bar itself (to stderr, respecting AEPURIFY_PROGRESS), for loops that advance it
    by hand (``update``) and show a figure beside it (``set_postfix``); close it when done.
    When stderr is not a terminal (a log file, a pipe) it is a :class:`PlainProgress`."""
    if not sys.stderr.isatty():
        return PlainProgress(iterable, desc=desc, total=total, leave=leave, unit=unit,
                             disable=not progress_enabled())
    return tqdm(iterable, desc=desc, total=total, leave=leave, unit=unit,
                disable=not progress_enabled(), mininterval=0.5, dynamic_ncols=True)


# Seconds between the plain lines of a progress bar in a log.
PLAIN_INTERVAL = 30.0


class _Discard:
    """A stream that drops what tqdm writes itself (carriage returns, cursor moves, clears)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class PlainProgress(tqdm):
    """A progress bar for a log: one plain line (``desc: 30%| 3/10 [00:12<00:28, ...]``) at
    most every :data:`PLAIN_INTERVAL` seconds, and a last one when a bar that stays is closed;
    no carriage return, escape code or bar graphics. A step shorter than the interval leaves
    no line at all."""

    def __init__(self, *args: Any, stream: Any = None, **kwargs: Any) -> None:
        self._stream, self._shown = stream, -1
        kwargs.update(file=_Discard(), mininterval=PLAIN_INTERVAL, maxinterval=PLAIN_INTERVAL,
                      delay=PLAIN_INTERVAL, ascii=True, ncols=80,
                      bar_format="{l_bar}{r_bar}")
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # msg "" is tqdm clearing the bar: nothing to clear in a log; a bar closed at the
        # count its last line showed adds no second line
        if msg is None and self.n != self._shown:
            stream = self._stream if self._stream is not None else sys.stderr
            stream.write(self.__str__().strip().replace("||", "|") + "\n")
            stream.flush()
            self._shown = self.n
        return True

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """As tqdm's, without a line of its own: the figure shows in the next periodic line."""
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (keys sorted): a cache key for a config."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def module_digest(module: Any, length: int = 16) -> str:
    """Hex digest of a module's state (every parameter's and buffer's name, dtype, shape and
    bytes): the key of an in-memory model that no config describes (a user's classifier or
    purifier in an audit). Not an ``nn.Module`` (a plain function): a digest of its qualified
    name."""
    digest = hashlib.sha256()
    if isinstance(module, torch.nn.Module):
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    name = getattr(module, "__qualname__", None) or type(module).__qualname__
    digest.update(f"{getattr(module, '__module__', '')}.{name}".encode())
    return digest.hexdigest()[:length]


class _NCHWGrad(torch.autograd.Function):
    """Identity forward; backward returns the gradient as a contiguous NCHW tensor."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) in channels-last memory layout, which oneDNN's CPU convolutions (and
    cuDNN's) run faster, while the gradient with respect to ``x`` leaves in the caller's
    contiguous NCHW layout: attacks such as torchattacks' PGD-L2 call ``.view()`` on it."""
    return _NCHWGrad.apply(x).contiguous(memory_format=torch.channels_last)


def check_folder_path(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a folder that exists or can be created: neither it nor a folder above it
    is a file. Nothing is created.

    Raises:
        ConfigError: ``path`` or one of its parents is a file (one line naming it).
    """
    folder = Path(path)
    for part in (folder, *folder.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                where = "is a file, not a folder" if part == folder else \
                    f"lies below {part}, which is a file"
                raise ConfigError(f"{what} {folder} {where}; pick another path")
            break
    return folder


def make_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create the folder ``path`` (and its parents) if needed, after
    :func:`check_folder_path`.

    Raises:
        ConfigError: a file in the way, or the system refused (permissions), in one line.
    """
    folder = check_folder_path(path, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {folder}: cannot create the folder "
                          f"({exc.strerror or type(exc).__name__})") from None
    return folder


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices that cover range(n) in chunks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def parse_eps(value: Any) -> float:
    """An epsilon as a float on the [0, 1] pixel scale, from a number or a fraction such as
    ``"8/255"``.

    Raises:
        ValueError: a string that is not a number or a fraction, or a value that is not finite
            (NaN, infinity); pydantic validators turn it into a one-line config error.
    """
    if isinstance(value, str):
        try:
            out = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read epsilon {value!r}") from None
        except OverflowError:  # "1e400": a valid fraction too large for a float
            raise ValueError(f"epsilon must be a finite number; got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"epsilon must be a number or a fraction such as 8/255; got {value!r}")
    else:
        try:
            out = float(value)
        except OverflowError:  # an integer past a float's range
            raise ValueError(f"epsilon must be a finite number; got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"epsilon must be a finite number; got {value!r}")
    return out
