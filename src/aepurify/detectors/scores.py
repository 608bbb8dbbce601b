"""The scores of MagNet's detectors (Meng and Chen, CCS 2017; reference code Trevillie/MagNet,
``worker.py``: ``AEDetector`` and ``DBDetector``), and any function of the images as a score.

- ``reconstruction``: mean over pixels of |x - AE(x)|^p (MNIST: p = 2, detector I; p = 1,
  detector II; CIFAR-10: p = 1);
- ``divergence``: the Jensen-Shannon divergence between softmax(f(x) / T) and
  softmax(f(AE(x)) / T) (CIFAR-10: T = 10 and T = 40), natural logarithm as scipy's ``entropy``;
- :class:`ScoreDetector`: any callable mapping images to a score per image (the audit's
  ``detector=``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from ..errors import ConfigError
from .base import Detector, Views

if TYPE_CHECKING:
    from ..purifiers import Purifier


def _checked(autoencoder: Any, kind: str, option: str, value: float) -> float:
    """``value`` of the detector's positive ``option``, once the autoencoder has a
    reconstruction error.

    Raises:
        ConfigError: an autoencoder without a reconstruction error, or ``value`` <= 0.
    """
    if autoencoder is None or not getattr(autoencoder, "reconstructs", False):
        name = type(autoencoder).__name__ if autoencoder is not None else "nothing"
        raise ConfigError(f"a {kind} detector needs a purifier with a reconstruction error (an "
                          f"autoencoder: magnet, magnet-pool, apudae, feature-dae, hgd, vae, "
                          f"patch-vae, s2snet); got {name}")
    if not value > 0:
        raise ConfigError(f"the {kind} detector's {option} must be > 0; got {value}")
    return float(value)


class ReconstructionErrorDetector(Detector):
    """MagNet's reconstruction-error detector (registry name ``reconstruction``).

    Args:
        autoencoder: a purifier with a reconstruction error (``reconstructs``).
        p: the exponent of the error, |x - AE(x)|^p averaged over pixels (MagNet: 1 or 2).

    Shapes: images (N, C, H, W) in [0, 1] -> scores (N,) >= 0.

    Raises:
        ConfigError: an autoencoder without a reconstruction error, or p <= 0.
    """

    kind = "reconstruction"

    def __init__(self, autoencoder: Purifier, p: float = 1.0) -> None:
        p = _checked(autoencoder, "reconstruction-error", "p", p)
        super().__init__(autoencoder)
        self.p = p

    def score(self, views: Views) -> torch.Tensor:
        rec = views.reconstruction(self.autoencoder)
        diff = (views.x - rec).abs()
        return (diff if self.p == 1 else diff.pow(self.p)).flatten(1).mean(1)

    def params(self) -> dict[str, Any]:
        return {"p": self.p}

    def describe(self) -> str:
        return f"reconstruction error L{self.p:g}"


def jensen_shannon(logits_p: torch.Tensor, logits_q: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """JSD(P, Q) per row between P = softmax(logits_p / T) and Q = softmax(logits_q / T), natural
    logarithm, in [0, log 2].

    Shapes: (N, K), (N, K) -> (N,).
    """
    log_p = F.log_softmax(logits_p / temperature, dim=1)
    log_q = F.log_softmax(logits_q / temperature, dim=1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0)


class DivergenceDetector(Detector):
    """MagNet's probability-divergence detector (registry name ``divergence``): the
    Jensen-Shannon divergence between the classifier's softmaxes at temperature T on x and on
    the autoencoder's reconstruction.

    Args:
        autoencoder: a purifier with a reconstruction error (``reconstructs``).
        temperature: T, which softens both softmaxes (MagNet's CIFAR-10: 10 and 40).

    Shapes: images (N, C, H, W) in [0, 1] -> scores (N,) in [0, log 2].

    Raises:
        ConfigError: an autoencoder without a reconstruction error, or T <= 0.
    """

    kind = "divergence"

    def __init__(self, autoencoder: Purifier, temperature: float = 1.0) -> None:
        temperature = _checked(autoencoder, "probability-divergence", "temperature", temperature)
        super().__init__(autoencoder)
        self.temperature = temperature

    def score(self, views: Views) -> torch.Tensor:
        return jensen_shannon(views.input_logits(), views.reconstruction_logits(self.autoencoder),
                              self.temperature)

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def describe(self) -> str:
        return f"Jensen-Shannon divergence T={self.temperature:g}"


class ScoreDetector(Detector):
    """Any function of the images as a detector score (the audit's ``detector=``), thresholded
    the same way as MagNet's.

    Args:
        fn: maps images (N, C, H, W) in [0, 1] to a score per image (N,) (a tensor; higher means
            "less like a clean image"). A detector-aware attack differentiates it, so write it in
            torch operations.
        name: how reports name it.

    Raises:
        ConfigError: (from score) ``fn`` returns something other than N finite numbers.
    """

    kind = "score"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "score") -> None:
        if not callable(fn):
            raise ConfigError(f"a detector must be callable (images -> a score per image); got "
                              f"{type(fn).__name__}")
        super().__init__(None)
        self.fn = fn
        self.name = name

    def score(self, views: Views) -> torch.Tensor:
        out = self.fn(views.x)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=torch.float32, device=views.x.device)
        out = out.reshape(-1) if out.dim() > 1 and out.numel() == views.x.shape[0] else out
        if out.shape != (views.x.shape[0],):
            raise ConfigError(f"detector {self.name!r} must return one score per image "
                              f"({views.x.shape[0]},); got shape {tuple(out.shape)}")
        return out.float()

    def describe(self) -> str:
        return self.name
