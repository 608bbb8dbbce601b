"""glibc's allocator, told to keep freed memory: a CPU speed-up for training and attacks.

PyTorch's CPU allocator hands every tensor to ``malloc``. glibc serves requests above its mmap
threshold (128 KiB to start, at most 32 MiB as it adapts) with fresh ``mmap`` pages and gives
them back with ``munmap`` on ``free``; a freed heap top above the trim threshold goes back too.
A training step or an attack step allocates and frees the same activation tensors (megabytes
each) every iteration, so each iteration faults all of their pages in again: on the 2-core
development CPU training airbench95 spent 19 % of its CPU time in the kernel (741 s system
against 3,161 s user, 381 million minor page faults in 35 minutes).

:func:`tune_allocator` raises both thresholds (``mallopt``), so freed blocks stay in the heap
and are reused without faulting: the same training step ran 1.3x faster there and its system
time fell to nothing (``python benchmarks/allocator.py`` measures it, side by side). The price is
that the process keeps its peak heap instead of returning it to the system between steps.

It changes a process-wide setting, so the library never calls it on import: the ``aepurify``
command and the test suite do (and ``benchmarks/allocator.py`` on its tuned side); a program
that uses aepurify as a library may call it itself. ``AEPURIFY_MALLOC=default`` turns it off; it
does nothing where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Any

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# A batch's activations run to hundreds of MiB (airbench95 at batch 1,024 in bf16: 256 MiB per
# layer), so the threshold must sit above them: 32 MiB left most of the faults (measured). Older
# glibc refuses more than HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); then that is what it gets.
MMAP_THRESHOLDS = (1 << 30, 32 * 1024 * 1024)
TRIM_THRESHOLD = 1 << 30

_STATE: dict[str, Any] = {"allocator": "default"}


def tune_allocator() -> dict[str, Any]:
    """Raise glibc's mmap threshold and trim threshold to 1 GiB for this process.

    Returns:
        What the run record keeps: ``{"allocator": "glibc-tuned", ...}`` when applied,
        ``{"allocator": "default", "reason": ...}`` when not (not glibc, ``AEPURIFY_MALLOC=
        default``, or mallopt refused). Calling it again returns the same.

    Never raises: a process where it cannot apply runs as before.
    """
    if _STATE.get("tried"):
        return allocator_record()
    _STATE["tried"] = True
    if os.environ.get("AEPURIFY_MALLOC", "").strip().lower() == "default":
        _STATE.update(allocator="default", reason="AEPURIFY_MALLOC=default")
        return allocator_record()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _STATE.update(allocator="default", reason="not glibc")
        return allocator_record()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap = next((v for v in MMAP_THRESHOLDS if libc.mallopt(M_MMAP_THRESHOLD, v) == 1), None)
        ok = mmap is not None and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError) as exc:
        _STATE.update(allocator="default", reason=f"mallopt unavailable: {exc}")
        return allocator_record()
    if ok:
        _STATE.update(allocator="glibc-tuned", mmap_threshold=mmap, trim_threshold=TRIM_THRESHOLD)
    else:
        _STATE.update(allocator="default", reason="mallopt refused")
    return allocator_record()


def allocator_record() -> dict[str, Any]:
    """The allocator setting of this process, for a run record (``run.json``)."""
    return {k: v for k, v in _STATE.items() if k != "tried"}
