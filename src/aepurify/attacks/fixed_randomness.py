"""The fixed-randomness attack on random purifiers (Liu and Wei 2025, "How Do Diffusion Models
Improve Adversarial Robustness?", arXiv 2505.22839).

A random purifier answers each call with a fresh draw, so an attack's gradient at every step
follows another function; EOT averages over draws. Holding the draw fixed instead turns the
purifier into one deterministic function that the attacker can differentiate consistently; the
adversarial examples are then judged on the real purifier with fresh draws (and, for an honest
verdict, several of them: N-evaluation). Liu and Wei found the robustness gain of diffusion
purification on CIFAR-10 drops to about 24 % with the randomness fixed.

The draw is held for the whole attack: one seed per :class:`FixedRandomness` module, from which
the parameters of every input shape it meets are sampled (a batch and a smaller last batch get
different but fixed draws). That matches fixing the random seed of the defense, as the paper
does.
"""

from __future__ import annotations

import torch

from ..errors import NotApplicableError
from ..purifiers.base import Purifier
from ..purifiers.randomness import Randomness, draw_seed, replays_exactly


class FixedRandomness(Purifier):
    """``purifier`` with its randomness held fixed: a deterministic purifier.

    Args:
        purifier: a stochastic purifier (its ``sample_randomness`` gives the draws).
        seed: the seed of the fixed draw; None draws one from torch's global generator at the
            first call (so a run seeded before crafting reproduces it).

    Declared properties: ``differentiable`` and ``surrogate`` are the purifier's own;
    ``stochastic`` is False.

    Shapes: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Raises:
        NotApplicableError: (construction) a deterministic purifier; (first call) a purifier
            replayed by re-seeding that still gives two different outputs for one draw (it
            draws from a generator that cannot be re-seeded).
        InputError: (forward) bad images.
    """

    stochastic = False

    def __init__(self, purifier: Purifier, seed: int | None = None) -> None:
        if not purifier.stochastic:
            raise NotApplicableError(f"{type(purifier).__name__} is deterministic; fixed "
                                     "randomness adds nothing")
        super().__init__(purifier.in_channels)
        self.purifier = purifier
        self.seed = seed
        self.differentiable = purifier.differentiable  # type: ignore[misc]
        self._params: Randomness | None = None
        self._checked = False

    def randomness(self, x: torch.Tensor) -> Randomness:
        """The fixed parameters for inputs shaped like ``x`` (cached for the last shape)."""
        if self.seed is None:
            self.seed = draw_seed()
        p = self._params
        if p is None or p.input_shape != tuple(x.shape) or (
                p.draws and _device_of(p) != x.device):
            gen = torch.Generator().manual_seed(self.seed)
            p = self.purifier.sample_randomness(tuple(x.shape), gen, device=x.device)
            self._params = p
        return p

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        params = self.randomness(x)
        if params.seed is not None and not self._checked:
            ok, evidence = replays_exactly(self.purifier, x.detach(), self.seed)
            if not ok:
                raise NotApplicableError(f"fixed randomness does not apply to "
                                         f"{type(self.purifier).__name__}: {evidence}")
            self._checked = True
        return self.purifier(x, randomness=params)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier.surrogate(x)

    def surrogate_name(self) -> str:
        return self.purifier.surrogate_name()


def _device_of(params: Randomness) -> torch.device | None:
    for t in params.draws.values():
        return t.device
    return None
