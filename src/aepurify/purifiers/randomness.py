"""Replayable randomness of stochastic purifiers, sampled apart from its use (as kornia's
augmentations expose ``forward_parameters`` / ``apply_transform``).

A stochastic purifier's ``forward(x)`` draws fresh randomness. ``sample_randomness(x.shape,
generator)`` returns the draws of one call as a :class:`Randomness`, and
``forward(x, randomness=params)`` applies the purifier with exactly those draws, so an attacker
can differentiate one fixed draw (the fixed-randomness threat model, Liu and Wei 2025,
arXiv 2505.22839) and a test can replay a call.

Two kinds of parameters:

- explicit draws (``draws``: named tensors), for the purifiers that implement them (the VAE and
  patch-wise VAE latent noise, APuDAE's refinement noise);
- a seed (``seed``), the fallback for any other stochastic purifier: the call runs with torch's
  (CPU and device), NumPy's and Python's global generators seeded with it, then restored. That
  replays purifiers that draw from those generators; :func:`replays_exactly` tells whether it
  does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import InputError, NotApplicableError

# The functions below take a Purifier (purifiers/base.py), typed as nn.Module: base imports this
# module, and a type-only import back would close a circle.

SEED_RANGE = 2**62


@dataclass(frozen=True)
class Randomness:
    """The random draws of one purifier call on inputs of ``input_shape``.

    Attributes:
        input_shape: (N, C, H, W) of the images the draws were sampled for.
        draws: named tensors (explicit draws); empty for seed-replayed purifiers.
        seed: the seed of the global generators (seed-replayed purifiers), else None.
    """

    input_shape: tuple[int, ...]
    draws: Mapping[str, torch.Tensor] = field(default_factory=dict)
    seed: int | None = None

    def check(self, x: torch.Tensor) -> None:
        """Raise InputError unless ``x`` has the shape the draws were sampled for."""
        if tuple(x.shape) != tuple(self.input_shape):
            raise InputError(f"randomness was sampled for images of shape {self.input_shape}; "
                             f"got shape {tuple(x.shape)}")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.draws[name]


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A seed in [0, 2^62) from ``generator`` (torch's global CPU generator if None)."""
    return int(torch.randint(0, SEED_RANGE, (1,), generator=generator))


def sample_tensor(kind: str, shape: Sequence[int], generator: torch.Generator | None,
                  device: torch.device | str | None, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """``torch.rand`` (``kind="uniform"``, [0, 1)) or ``torch.randn`` (``"normal"``) of ``shape``.

    With ``generator=None`` it draws from the global generator of ``device``, exactly as
    ``rand_like`` / ``randn_like`` on a tensor there would. With a generator it draws on the
    generator's device and moves the result to ``device``, so a CPU generator gives the same
    draws on every device.
    """
    fn = torch.rand if kind == "uniform" else torch.randn
    if generator is None:
        return fn(tuple(shape), device=device, dtype=dtype)
    return fn(tuple(shape), generator=generator, device=generator.device,
              dtype=dtype).to(device)


@contextmanager
def seeded_rng(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run a block with torch's CPU generator (and ``device``'s, if an accelerator), NumPy's and
    Python's global generators seeded from ``seed``; restore all of them afterwards."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    accel = [device] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=accel, device_type=device.type if accel else None):
        torch.manual_seed(seed % SEED_RANGE)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def seed_randomness(purifier: nn.Module, x_shape: Sequence[int],
                    generator: torch.Generator | None = None) -> Randomness:
    """Seed parameters for a stochastic purifier without explicit draws.

    Raises:
        NotApplicableError: the purifier is declared deterministic.
    """
    if not purifier.stochastic:
        raise NotApplicableError(f"{type(purifier).__name__} is deterministic; it has no "
                                 "randomness to sample")
    return Randomness(tuple(x_shape), seed=draw_seed(generator))


def replay(purifier: nn.Module, x: torch.Tensor, randomness: Randomness) -> torch.Tensor:
    """``purifier`` applied to validated ``x`` with the draws of ``randomness``.

    Raises:
        InputError: ``randomness`` was sampled for another input shape.
    """
    randomness.check(x)
    if randomness.seed is not None:
        with seeded_rng(randomness.seed, x.device):
            return purifier.purify(x)
    return purifier.purify(x, randomness=randomness)  # type: ignore[call-arg]


def replays_exactly(purifier: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[bool, str]:
    """Whether two calls with the same sampled parameters give the same output, and why.

    Shapes: x (N, C, H, W) in [0, 1]. Runs two forward passes without gradients.
    """
    gen = torch.Generator().manual_seed(seed)
    params = purifier.sample_randomness(tuple(x.shape), gen, device=x.device)
    with torch.no_grad():
        a, b = purifier(x, randomness=params), purifier(x, randomness=params)
    how = "re-seeded global generators" if params.seed is not None else "explicit draws"
    if torch.equal(a, b):
        return True, f"two passes with the same sampled parameters ({how}) are identical"
    diff = float((a - b).abs().max())
    return False, (f"two passes with the same sampled parameters ({how}) differ by up to "
                   f"{diff:.3g}: it draws from a generator that cannot be re-seeded")
