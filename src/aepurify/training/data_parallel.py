"""Data-parallel training under torchrun: the minibatch loop with DistributedDataParallel.

Inside :func:`data_parallel` (``aepurify train ...`` started by torchrun enters it), every
:func:`~aepurify.training.loops.run_minibatches` call trains on all ranks at once:

- every rank draws the same epoch order and the same augmentation for the whole global batch
  (the seeded generators of the one-process loop), then takes its own contiguous part of each
  batch: the epoch order is sharded across the ranks;
- the loss runs inside a DistributedDataParallel module, which all-reduces (averages) the
  gradients during the backward pass; each rank's loss is weighted by its share of the batch,
  so the averaged gradient is the gradient of the global batch's mean loss, the one a single
  process computes on the same batch (up to float summation order);
- checkpoints (and model-cache entries) are written by rank 0 only;
- whether the training images stay on the GPU (which depends on its free memory) is decided by
  all ranks together, since it decides the device of the augmentation's generator.

BatchNorm layers normalise with their own rank's part of the batch and keep their own running
statistics (DDP's default); rank 0's are saved. A model with BatchNorm therefore trains like a
single process with the per-rank batch size for those statistics.

Outside :func:`data_parallel` (a plain run, or rank 0 training a missing model while ``evaluate``
runs under torchrun) the loop is the one-process loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

_active: list[DataParallel] = []


@dataclass(frozen=True)
class DataParallel:
    """The ranks training one model together.

    Attributes:
        rank: this process's rank, 0 to ``world - 1``.
        world: number of processes.
    """

    rank: int
    world: int

    def share(self, n: int) -> tuple[slice, float]:
        """This rank's part of a global batch of ``n`` images (contiguous, sizes differ by at
        most one) and the weight of its mean loss: ``world * n_rank / n``, so the ranks'
        averaged gradients are those of the global mean loss.

        A rank left with no image (``n < world``) gets the batch's first image and weight 0: it
        still joins the gradient all-reduce, adding nothing.
        """
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        size = base + (1 if self.rank < extra else 0)
        if size == 0:
            return slice(0, 1), 0.0
        return slice(start, start + size), self.world * size / n

    def wrap(self, params: list[nn.Parameter],
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             device: torch.device) -> nn.Module:
        """``loss_fn`` as a DistributedDataParallel module over the trained ``params`` (which
        rank 0 broadcasts now, so every rank starts from its weights). Call it as
        ``module(x, y)``; its backward all-reduces the gradients of ``params``."""
        module = _Loss(params, loss_fn)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        # static_graph: the same parameters take part in every step, and a parameter that never
        # gets a gradient (a part the loss does not use) is allowed
        return DistributedDataParallel(module, device_ids=ids, static_graph=True)

    def all_agree(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank (a collective: every rank must call it); for
        choices that must not differ between ranks, such as keeping the training images on
        the GPU, which decides the device of the augmentation's generator and so its draws."""
        value = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a scalar tensor (a collective: every rank must call it)."""
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world


class _Loss(nn.Module):
    """A loss function as a module holding the parameters it trains (what DDP wraps)."""

    def __init__(self, params: list[nn.Parameter],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.trained = nn.ParameterList(params)
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(x, y)


@contextmanager
def data_parallel() -> Iterator[DataParallel]:
    """Train data-parallel across the ranks of the initialised process group inside the block.

    Raises:
        RuntimeError: torch.distributed is not initialised (see
            :func:`aepurify.distributed.process_group`).
    """
    if not dist.is_initialized():
        raise RuntimeError("data_parallel() needs an initialised torch.distributed process group")
    _active.append(DataParallel(dist.get_rank(), dist.get_world_size()))
    try:
        yield _active[-1]
    finally:
        _active.pop()


def active_data_parallel() -> DataParallel | None:
    """The data-parallel setting of the current block, or None (one-process training)."""
    return _active[-1] if _active else None


def writes_checkpoints() -> bool:
    """Whether this process writes trained models: always, except ranks other than 0 of a
    data-parallel training (their weights are rank 0's)."""
    dp = active_data_parallel()
    return dp is None or dp.rank == 0


def checkpoint_written() -> None:
    """In a data-parallel training, wait until rank 0 has written the checkpoint, so that on
    every rank the cache entry exists once the call returns; a no-op otherwise."""
    if active_data_parallel() is not None:
        dist.barrier()
