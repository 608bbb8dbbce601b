"""One run per output folder: a lock file that names its holder.

Two runs writing one ``--out`` would both compute every row and overwrite each other's reports.
:func:`output_lock` takes ``DIR/.aepurify.lock`` for the length of a run, through filelock's
``SoftFileLock``: the file is created exclusively and records the holder's pid and host, a
second run refuses at once with one line that names them, and the lock of a process that died
on the same host (killed, out of memory) is taken over. A lock held from another host cannot be
checked from here; the message says which file to delete once that run is known to be dead.

Under ``torchrun`` (several processes per run) rank 0 takes it for the whole run and the other
ranks work under it (aepurify.evaluation.sharded).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import SoftFileLock, Timeout

from ..errors import ConfigError, OutputLockedError
from ..utils import check_folder_path, make_folder

LOCK_NAME = ".aepurify.lock"

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def output_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of output folder ``out_dir`` (created if needed) inside the block.

    Yields:
        The lock file's path.

    Raises:
        OutputLockedError: another live run holds it (the message names its pid and host).
        ConfigError: ``out_dir`` is a file or lies below one; something other than a file
            (a folder) sits where the lock file goes; the lock file cannot be written.
    """
    out = check_folder_path(out_dir)
    created = not out.exists()
    make_folder(out)
    path = out / LOCK_NAME
    if path.exists() and not path.is_file():
        _remove_if_empty(out, created)
        raise ConfigError(f"{path} is not a file: aepurify keeps its lock file there; remove it "
                          "or pick another --out")
    lock = SoftFileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        _remove_if_empty(out, created)
        raise OutputLockedError(f"another aepurify run ({_holder(path, lock)}) is writing to "
                                f"{out}; wait for it to finish or pick another --out (if that "
                                f"run is dead, delete {path})") from None
    except OSError as exc:  # Timeout is an OSError too, so after it: permissions, read-only
        _remove_if_empty(out, created)
        raise ConfigError(f"cannot write the lock file {path}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    try:
        yield path
    finally:
        lock.release()
        _remove_if_empty(out, created)


def _remove_if_empty(out: Path, created: bool) -> None:
    """A folder made only to hold the lock goes again (a config error leaves no empty --out)."""
    if created:
        try:
            out.rmdir()
        except OSError:  # not empty: the run wrote its outputs
            pass


def holds_output_lock(argument: str) -> Callable[[F], F]:
    """Decorator: hold :func:`output_lock` on the folder passed as ``argument`` while the
    decorated function runs (``evaluate``'s ``out_dir``)."""

    def deco(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with output_lock(signature.bind(*args, **kwargs).arguments[argument]):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def _holder(path: Path, lock: SoftFileLock) -> str:
    """``pid 123 on host h`` from the lock file (its first two lines), as far as readable."""
    pid = lock.pid
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    host = lines[1].strip() if len(lines) > 1 else ""
    if pid is None:
        return "holder unknown"
    return f"pid {pid} on host {host}" if host else f"pid {pid}"
