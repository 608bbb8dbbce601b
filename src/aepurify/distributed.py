"""Runs under ``torchrun``: the process group, its backend, and the few collectives the
evaluation grid and the training commands need (torch.distributed; no launcher of our own).

``torchrun --nproc-per-node N -m aepurify evaluate|train ...`` starts N processes and gives each
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and a rendezvous (``MASTER_ADDR``/``MASTER_PORT``) in
its environment; :func:`launched` reads them, :func:`process_group` joins the group. A plain
``aepurify ...`` (no torchrun, or ``WORLD_SIZE=1``) never initialises torch.distributed.

Backend: ``nccl`` when the rank's device is CUDA (one GPU per rank, ``cuda:LOCAL_RANK``, see
:func:`aepurify.utils.pick_device`), ``gloo`` on a CPU. Control messages (who failed, which
rows are finished) go through a gloo group either way, so a rank that waits for another (rank 0
training the models) waits on the CPU.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import AepurifyError, RankFailedError

T = TypeVar("T")

# How long a rank waits in a collective: rank 0 may train every model of a config while the
# others wait, and the fastest rank waits for the slowest at the end of the grid. A rank that
# dies does not leave the others waiting this long: torchrun stops the whole group.
TIMEOUT = timedelta(hours=24)


def launched() -> bool:
    """True in a process that torchrun started as one of several ranks (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def env_rank() -> int:
    """This process's global rank from torchrun's ``RANK`` (0 without torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for a CUDA device (one GPU per rank), ``gloo`` otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass
class Group:
    """The ranks of a run, as this process sees them.

    Attributes:
        rank: this process's global rank, 0 to ``world - 1``.
        world: number of processes.
        control: the gloo group control messages go through (None: the default group).
    """

    rank: int
    world: int
    control: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that trains missing models, merges rows and writes the outputs."""
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (a picklable object; the others' argument is ignored)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (also a barrier)."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def barrier(self) -> None:
        """Wait until every rank has reached this point."""
        dist.barrier(group=self.control)

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; the others wait for it. Returns ``fn``'s result on rank 0,
        None elsewhere.

        Raises:
            the error ``fn`` raised, on rank 0; :class:`RankFailedError` naming it on the others.
        """
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:  # the others must hear of it, then it goes on
                failure = _describe(exc)
                self.broadcast(failure)
                raise
        failure = self.broadcast(failure)
        if failure is not None:
            raise RankFailedError(f"rank 0 failed: {failure}")
        return result

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then (once it succeeded) on every other rank: rank 0 trains a
        missing model and fills the cache, the others then read it, so no two ranks write one
        cache entry.

        Raises:
            as :meth:`on_main`.
        """
        result = self.on_main(fn)
        return result if self.is_main else fn()  # type: ignore[return-value]


def _describe(exc: BaseException) -> str:
    """One line for the other ranks: the message of an aepurify error, else type and message."""
    if isinstance(exc, AepurifyError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last.splitlines()[0]


@contextmanager
def process_group(device: torch.device | str) -> Iterator[Group]:
    """Join torchrun's process group for the block (initialised from the environment, backend
    by :func:`backend_for`; left again afterwards if this call joined it). On CUDA the rank's
    device becomes the current one.

    Raises:
        AepurifyError: not started by torchrun with more than one rank.
    """
    if not launched():
        raise AepurifyError("not started by torchrun with WORLD_SIZE > 1")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group(backend_for(device), timeout=TIMEOUT)
    control = (dist.new_group(backend="gloo", timeout=TIMEOUT)
               if dist.get_backend() != "gloo" else None)
    try:
        yield Group(dist.get_rank(), dist.get_world_size(), control)
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
