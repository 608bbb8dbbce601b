"""The purifier contract and the defended classifier (docs/methods.md, "Core interfaces").

A purifier maps images (N, C, H, W) in [0, 1] to purified images of the same shape in [0, 1].
It declares how an attacker may differentiate it:

- ``differentiable``: exact gradients flow through ``forward`` (white-box applies);
- ``stochastic``: ``forward`` draws randomness, so an honest attack needs EOT;
- ``surrogate(x)``: the differentiable approximation BPDA backpropagates through (identity by
  default, Athalye, Carlini and Wagner, ICML 2018).

An autoencoder purifier also declares ``reconstructs`` and offers ``reconstruction(x)``, the
image its reconstruction error compares x with, so it can feed a detector (MagNet, Meng and Chen
2017; :mod:`aepurify.detectors`).

A stochastic purifier's draws can be sampled apart from their use and replayed
(``sample_randomness`` / ``forward(x, randomness=...)``, see :mod:`.randomness`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..checkpoint import Configurable
from ..checks import check_images
from ..errors import NotApplicableError
from .randomness import Randomness, replay, seed_randomness

if TYPE_CHECKING:
    from ..data import ImageDataset
    from ..training.settings import TrainSettings


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as a per-channel affine map: ``bn(h) == h * scale + shift`` with
    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale``, each of shape (C,).
    The purifiers that run their networks many times per image (APuDAE's refinement, the S2SNet
    under white-box attacks) fold it into a cheaper path."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class Purifier(Configurable, nn.Module):
    """Base class of every purifier.

    Subclasses implement :meth:`purify`; trainable ones also :meth:`training_loss` (or override
    :meth:`fit` for multi-stage training).

    Class attributes:
        differentiable: exact gradients flow through forward.
        stochastic: forward is random (EOT needed).
        trainable: has weights that must be fitted before use.
        needs_classifier: training uses the defended classifier (so its cache key includes it).
        default_eot_samples: EOT draws used when a config does not say.
        paper: the paper the purifier follows.
        reconstructs: an autoencoder with a reconstruction error, so it can feed a detector
            (:meth:`reconstruction`).

    Args:
        in_channels: expected C, or None to accept any number of channels.

    Shapes:
        forward, surrogate: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Randomness: ``forward(x)`` draws fresh randomness; ``forward(x, randomness=params)`` with
    ``params = sample_randomness(x.shape, generator)`` replays one draw. Stochastic purifiers
    with explicit draws override :meth:`sample_randomness` and take ``randomness`` in
    :meth:`purify`; the others are replayed by re-seeding the global generators.

    Raises:
        InputError: (from forward) not a float (N, C, H, W) tensor, wrong C, or values outside
            [0, 1] (the range is checked where images enter, not inside an attack's iterations:
            see :mod:`aepurify.checks`); ``randomness`` sampled for another shape.
    """

    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    needs_classifier: ClassVar[bool] = False
    default_eot_samples: ClassVar[int] = 10
    paper: ClassVar[str] = ""
    reconstructs: ClassVar[bool] = False

    def __init__(self, in_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, randomness: Randomness | None = None) -> torch.Tensor:
        check_images(x, channels=self.in_channels)
        if randomness is None:
            return self.purify(x)
        return replay(self, x, randomness)

    def sample_randomness(self, x_shape: tuple[int, ...], generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> Randomness:
        """The draws of one call on images of shape ``x_shape`` (N, C, H, W), from
        ``generator`` (the global generator if None), as tensors on ``device``.

        Raises:
            NotApplicableError: the purifier is deterministic.
        """
        return seed_randomness(self, x_shape, generator)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """The purification itself, on validated input. Override this."""
        raise NotImplementedError

    def shared_part(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The part of a random purification that depends on x only, not on the draw (a VAE's
        posterior mean and log-variance), for EOT to compute once for all its draws; None
        (the default) when there is none. Validates ``x`` like :meth:`forward`.

        Shapes: x (N, C, H, W) in [0, 1] -> named tensors, each with a graph back to x.
        """
        return None

    def purify_from_shared(self, x: torch.Tensor, shared: dict[str, torch.Tensor],
                           draws: int) -> torch.Tensor:
        """``draws`` purifications of each image from :meth:`shared_part`'s output, draw-major:
        the same values as ``forward(x.repeat(draws, 1, 1, 1))`` from the same generator state
        (same draws, same order).

        Shapes: x (N, C, H, W) in [0, 1] -> (draws * N, C, H, W) in [0, 1].

        Raises:
            NotImplementedError: the purifier has no shared part.
        """
        raise NotImplementedError(f"{type(self).__name__} has no shared part")

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable approximation of :meth:`forward` for BPDA (identity by default)."""
        return x

    def set_precision(self, precision: str) -> Purifier:
        """Set the precision (``bf16`` or ``fp32``, resolved: :mod:`aepurify.precision`) of the
        purifier's own inner optimisation at inference time (APuDAE's refinement steps), which
        is not the verdict's forward pass; the default purifier has none and ignores it.
        Returns self."""
        return self

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        """The autoencoder's reconstruction AE(x) that its reconstruction error compares x with
        (MagNet's detectors; :mod:`aepurify.detectors`): by default the purified image itself
        (MagNet's reformer is its autoencoder); a purifier whose output is not its autoencoder's
        (APuDAE refines the input) overrides this. Differentiable where the autoencoder is;
        random where the purifier is.

        Shapes: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

        Raises:
            NotApplicableError: the purifier has no reconstruction error (``reconstructs`` is
                False: JPEG, bit-depth, median, a plain function).
        """
        if not self.reconstructs:
            raise NotApplicableError(f"{type(self).__name__} has no reconstruction error, so it "
                                     "cannot feed a reconstruction-error detector")
        return self(x)

    @property
    def reconstruction_is_output(self) -> bool:
        """Whether :meth:`reconstruction` is the purified image itself (then a defense computes
        it once, and a random purifier's reformer and detectors share one draw)."""
        return self.reconstructs and type(self).reconstruction is Purifier.reconstruction

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        """Scalar loss for one batch of clean images ``x`` (N, C, H, W) in [0, 1] and labels
        ``y`` (N,). Trainable purifiers override this."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    def fit(self, train: ImageDataset, settings: TrainSettings,
            classifier: nn.Module | None = None, device: torch.device | str = "cpu"
            ) -> dict[str, Any]:
        """Train on ``train`` with the generic loop over :meth:`training_loss`.

        Returns:
            Training metrics to record in the checkpoint (e.g. final loss).
        """
        from ..training.loops import fit_purifier

        return fit_purifier(self, train, settings, classifier=classifier, device=device)

    def properties(self) -> dict[str, Any]:
        """Declared properties, for reports and threat-model checks."""
        return {"differentiable": self.differentiable, "stochastic": self.stochastic,
                "trainable": self.trainable, "surrogate": self.surrogate_name()}

    def surrogate_name(self) -> str:
        return "identity" if type(self).surrogate is Purifier.surrogate else type(self).__name__


class Identity(Purifier):
    """No purification: the undefended classifier (purifier name ``none``)."""

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EvalWrapper(nn.Module):
    """Base of the modules that wrap trained models for inference and attacks
    (:class:`DefendedClassifier`, BPDA, EOT): the wrapped models stay in eval mode.

    Attack engines record the mode of the module they attack and restore it afterwards
    (torchattacks calls ``model.train()`` when the module was in training mode); through a
    plain ``nn.Module`` that would switch every BatchNorm inside to batch statistics and let the
    next forward pass overwrite its running statistics. Here ``train(mode)`` sets only the
    wrapper's own flag and puts the wrapped models in eval mode either way; a subclass calls
    ``self.eval()`` at the end of ``__init__``. To train a wrapped model, train it on its own
    (``purifier.fit``), or switch that model itself with ``model.train()``.
    """

    def train(self, mode: bool = True) -> EvalWrapper:
        super().train(False)
        self.training = mode
        return self


class DefendedClassifier(EvalWrapper):
    """``logits = classifier(purifier(x))`` as one ``nn.Module``; classifier and purifier are
    kept in eval mode (see :class:`EvalWrapper`).

    Args:
        classifier: maps (N, C, H, W) in [0, 1] to logits (N, K).
        purifier: a :class:`Purifier`.

    Shapes:
        (N, C, H, W) in [0, 1] -> logits (N, K).

    Raises:
        InputError: (from forward) images of the wrong shape or outside [0, 1].
    """

    def __init__(self, classifier: nn.Module, purifier: Purifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.purifier = purifier
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x))
