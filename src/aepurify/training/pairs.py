"""Training pairs (perturbed, clean) for denoising purifiers.

A denoising purifier learns to map a perturbed image back to its clean original. The perturbed
versions come from configurable *sources*: the clean image itself, Gaussian noise, or
adversarial examples (FGSM, PGD) crafted on a classifier, as in the feature-loss defense
(Sivamani, arXiv 1912.04497) and HGD (Liao et al., CVPR 2018).

Every training image is assigned one source (shares proportional to the sources' weights) and,
for adversarial sources, one epsilon from the source's list, by a seeded permutation, so the
assignment is the same on every run with the same seed. Adversarial versions are made either once
before training (``cached``: cheap, the same pair every epoch) or for each batch when it is drawn
(``on-the-fly``: a fresh random start every epoch, at the cost of the attack's steps per batch).
Noise is always drawn fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ..attacks import build_attack
from ..data import ImageDataset
from ..utils import batches, parse_eps, progress

ADVERSARIAL = ("fgsm", "pgd")


class PairSource(BaseModel):
    """One way of perturbing a clean training image.

    Attributes:
        kind: ``clean`` (the image itself, so clean inputs stay intact), ``noise`` (Gaussian),
            ``fgsm`` or ``pgd`` (L-inf adversarial examples crafted on the pair classifier).
        weight: share of the training images that get this source (relative to the others).
        std: noise standard deviation on the [0, 1] pixel scale (``noise`` only).
        eps: L-inf budget(s) on the [0, 1] scale (adversarial kinds; fractions like ``8/255``
            are fine); with several, the images of this source are split evenly among them.
        steps: PGD iterations.
        alpha: PGD step size (default 2.5 * eps / steps, as the ``pgd`` attack).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["clean", "noise", "fgsm", "pgd"]
    weight: float = Field(1.0, gt=0)
    std: float = Field(0.1, ge=0)
    eps: list[float] = Field(default_factory=lambda: [0.2])
    steps: int = Field(10, ge=1)
    alpha: float | None = Field(None, gt=0)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> list[float]:
        values = [parse_eps(v) for v in (value if isinstance(value, list) else [value])]
        if not values or any(v < 0 for v in values):
            raise ValueError("eps must be one or more numbers >= 0")
        return values

    def attack_params(self) -> dict[str, Any]:
        """Options of the registered attack (``build_attack``) this source uses."""
        if self.kind == "pgd":
            return {"steps": self.steps, "alpha": self.alpha}
        return {}


class PairOptions(BaseModel):
    """Where the perturbed halves of the training pairs come from.

    Attributes:
        sources: the perturbation sources (see :class:`PairSource`).
        mode: ``cached`` (adversarial versions crafted once before training, deterministic) or
            ``on-the-fly`` (crafted for every batch).
    """

    model_config = ConfigDict(extra="forbid")

    sources: list[PairSource] = Field(min_length=1)
    mode: Literal["cached", "on-the-fly"] = "cached"

    @property
    def adversarial(self) -> bool:
        """Whether any source needs a classifier to craft on."""
        return any(s.kind in ADVERSARIAL for s in self.sources)


@dataclass
class PairPlan:
    """Which source (and epsilon) perturbs each of N training images.

    Attributes:
        sources: the sources.
        source_id: (N,) int64, index into ``sources``.
        eps: (N,) float32, the image's epsilon (0 for non-adversarial sources).
    """

    sources: list[PairSource]
    source_id: torch.Tensor
    eps: torch.Tensor

    @classmethod
    def assign(cls, sources: list[PairSource], n: int, seed: int) -> PairPlan:
        """Split ``n`` images among ``sources`` in proportion to their weights (largest
        remainders get the leftover images), in a random order fixed by ``seed``."""
        weights = torch.tensor([s.weight for s in sources], dtype=torch.float64)
        exact = weights / weights.sum() * n
        counts = exact.floor().long()
        leftover = n - int(counts.sum())
        if leftover:
            counts[torch.argsort(exact - counts, descending=True)[:leftover]] += 1
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen)
        source_id = torch.empty(n, dtype=torch.long)
        eps = torch.zeros(n, dtype=torch.float32)
        start = 0
        for k, (src, count) in enumerate(zip(sources, counts.tolist())):
            rows = order[start:start + count]
            source_id[rows] = k
            if src.kind in ADVERSARIAL:
                levels = torch.tensor(src.eps, dtype=torch.float32)
                eps[rows] = levels[torch.arange(count) % len(levels)]
            start += count
        return cls(sources, source_id, eps)

    def to(self, device: torch.device | str) -> PairPlan:
        return PairPlan(self.sources, self.source_id.to(device), self.eps.to(device))

    def counts(self) -> dict[str, int]:
        """Images per source, keyed ``kind`` (``kind#i`` when a kind repeats)."""
        out: dict[str, int] = {}
        for k, src in enumerate(self.sources):
            key = src.kind if src.kind not in out else f"{src.kind}#{k}"
            out[key] = int((self.source_id == k).sum())
        return out

    def _groups(self, index: torch.Tensor):
        """(source, eps, positions in ``index``) for the adversarial rows of ``index``."""
        sid, eps = self.source_id[index], self.eps[index]
        for k, src in enumerate(self.sources):
            if src.kind not in ADVERSARIAL:
                continue
            mine = sid == k
            for e in torch.unique(eps[mine]).tolist():
                rows = (mine & (eps == e)).nonzero().flatten()
                if len(rows):
                    yield src, e, rows

    def perturb(self, clean: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                classifier: nn.Module | None, cached: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The perturbed halves of the pairs for one batch.

        Args:
            clean: (B, C, H, W) in [0, 1], the clean images.
            labels: (B,) true labels (the attacks' targets).
            index: (B,) positions of the images in the training set (selects their source).
            classifier: the module adversarial examples are crafted on (unused when ``cached``
                is given or no source is adversarial).
            cached: (B, C, H, W) in [0, 1], adversarial versions crafted before training.

        Returns:
            (B, C, H, W) in [0, 1].
        """
        out = clean.clone()
        sid = self.source_id[index]
        for k, src in enumerate(self.sources):
            mine = (sid == k).view(-1, 1, 1, 1)
            if src.kind == "noise" and clean.device.type != "cpu":
                # on an accelerator, noise for the whole batch, kept where this source applies:
                # no row count read back to the host (a sync per step)
                noisy = clean + src.std * torch.randn_like(clean)
                out = torch.where(mine, noisy.clamp(0, 1), out)
            elif src.kind == "noise":
                # on a CPU, noise drawn for this source's rows only: the random stream (and so
                # every model trained so far) stays as it was
                rows = mine.flatten().nonzero().flatten()
                noisy = clean[rows] + src.std * torch.randn_like(clean[rows])
                out[rows] = noisy.clamp(0, 1)
            elif src.kind in ADVERSARIAL and cached is not None:
                out = torch.where(mine, cached, out)
        if cached is None:
            for src, e, rows in self._groups(index):
                out[rows] = craft_adversarial(src, classifier, clean[rows], labels[rows], e)
        return out

    def cache(self, data: ImageDataset, classifier: nn.Module, device: torch.device | str,
              batch_size: int = 500) -> torch.Tensor:
        """Adversarial versions of every image whose source is adversarial, crafted once.

        Returns:
            uint8 (N, C, H, W): the adversarial image where the source is adversarial (rounded
            to 8 bits, a change of at most 1/510 per pixel), the clean image elsewhere.
        """
        out = data.images.clone()
        index = torch.arange(len(data))
        for src, e, rows in self._groups(index):
            for sl in progress(list(batches(len(rows), batch_size)),
                               desc=f"pairs {src.kind} eps={e:.3g}", unit="batch"):
                idx = rows[sl]
                x = data.images[idx].to(device=device, dtype=torch.float32).div_(255.0)
                y = data.labels[idx].to(device)
                adv = craft_adversarial(src, classifier, x, y, e)
                out[idx] = adv.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu()
        return out


def craft_adversarial(source: PairSource, classifier: nn.Module | None, x: torch.Tensor,
                      y: torch.Tensor, eps: float) -> torch.Tensor:
    """L-inf adversarial examples of ``source``'s kind at ``eps`` against ``classifier``.

    Shapes: x (B, C, H, W) in [0, 1], y (B,) -> (B, C, H, W) in [0, 1].
    """
    assert classifier is not None, "adversarial pairs need a classifier"
    attack = build_attack(source.kind, classifier, eps, "linf", source.attack_params())
    return attack(x, y).detach()
