"""MagNet's diversity (Meng and Chen, CCS 2017, the gray-box defense): a pool of autoencoders of
one architecture, and for every input one drawn at random as the reformer and, through its
reconstruction, as the detectors' autoencoder (purifier name ``magnet-pool``).

The members are :class:`~aepurify.purifiers.magnet.MagNet` autoencoders, initialised apart and
trained together on the same noisy batches with MagNet's loss, minus ``diversity`` times the
mean squared distance of each member's output from the members' average (the reference code's
``PackedAutoEncoder``: loss weights 1 per reconstruction and -alpha per distance). The
reference code first trains each member alone for a few epochs; here the diversity term acts from
the first step.

The pool is random: an attacker needs EOT over the draw (``detector-aware+eot``,
``white-box+eot``). Its draws are explicit and replayable: ``sample_randomness`` gives the member
of each image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .base import Purifier
from .magnet import MagNet
from .randomness import Randomness


class MagNetPool(Purifier):
    """A pool of MagNet autoencoders, one drawn per image (see the module docstring).

    Args:
        in_channels: C of the images.
        members: autoencoders in the pool (>= 2).
        diversity: alpha, the weight of the (negative) distance-from-average term in training.
        filters, pool, noise_std, activity_reg, residual: each member's
            :class:`~aepurify.purifiers.magnet.MagNet` options.

    Shapes: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Raises:
        ConfigError: fewer than 2 members, or a negative diversity weight.
    """

    trainable = True
    stochastic = True
    reconstructs = True
    default_eot_samples = 10
    paper = "Meng and Chen, CCS 2017 (MagNet, diversity)"

    def __init__(self, in_channels: int = 1, members: int = 4, diversity: float = 0.0,
                 filters: int = 3, pool: bool = True, noise_std: float = 0.1,
                 activity_reg: float = 1e-9, residual: bool = False) -> None:
        super().__init__(in_channels)
        if members < 2:
            raise ConfigError(f"a MagNet pool needs at least 2 members; got {members}")
        if diversity < 0:
            raise ConfigError(f"the diversity weight must be >= 0; got {diversity}")
        self.members = nn.ModuleList([
            MagNet(in_channels, filters, pool, noise_std, activity_reg, residual)
            for _ in range(members)])
        self.diversity = float(diversity)
        self.noise_std = noise_std

    def sample_randomness(self, x_shape: tuple[int, ...], generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> Randomness:
        """The member of each image of one call on ``x_shape`` (N, C, H, W): ``member``, (N,)
        int64 in [0, members)."""
        gen_device = generator.device if generator is not None else device
        member = torch.randint(len(self.members), (x_shape[0],), generator=generator,
                               device=gen_device)
        return Randomness(tuple(x_shape), {"member": member.to(device)})

    def purify(self, x: torch.Tensor, randomness: Randomness | None = None) -> torch.Tensor:
        member = randomness["member"] if randomness is not None else \
            torch.randint(len(self.members), (x.shape[0],), device=x.device)
        out = torch.zeros_like(x)
        for j, ae in enumerate(self.members):
            rows = (member == j).nonzero().flatten()
            if rows.numel():  # each image through its own member only
                out = out.index_put((rows,), ae.purify(x[rows]))
        return out

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        """Sum over members of MagNet's loss on one shared noisy batch, minus ``diversity``
        times each member's mean squared distance from the members' average output."""
        noisy = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)
        outs, loss = [], x.new_zeros(())
        for ae in self.members:
            code = ae.encoder(noisy)
            out = ae.reform(noisy, code)
            outs.append(out)
            loss = loss + F.mse_loss(out, x) + ae.activity_reg * code.pow(2).sum() / x.shape[0]
        if self.diversity > 0:
            mean = torch.stack(outs).mean(0)
            loss = loss - self.diversity * sum(F.mse_loss(o, mean) for o in outs)
        return loss

    def properties(self) -> dict[str, Any]:
        return {**super().properties(), "members": len(self.members)}
