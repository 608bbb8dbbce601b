"""Autoencoder purifiers trained as Gaussian denoisers for (denoised) randomized smoothing
(Salman, Sun, Yang, Kapoor and Kolter, "Denoised Smoothing: A Provable Defense for Pretrained
Classifiers", NeurIPS 2020; their code is microsoft/denoised-smoothing, ``train_denoiser.py``).

The denoiser D sees ``clip(x + delta, 0, 1)`` with ``delta ~ N(0, sigma^2 I)``, the input the
smoothed classifier of :mod:`aepurify.certification` gives it (the noisy image is clipped to
[0, 1] there, so it is clipped here too: the denoiser trains on what it will see). Objectives:

- ``mse``: ``|| D(clip(x + delta)) - x ||^2`` (mean over pixels; Salman et al.'s "denoising"
  objective, classifier-free);
- ``stability``: cross-entropy between the frozen classifier f on the denoised image and f's own
  prediction on the clean image, ``CE(f(D(clip(x + delta))), argmax f(x))``; no labels needed;
- ``classification``: the same cross-entropy against the true label y.

Salman et al. get their best certificates by training with MSE first and then fine-tuning with
the stability objective (their "MSE + Stab"); ``mse_epochs`` runs that first stage (MSE, the
same settings otherwise) before ``settings.epochs`` of the chosen objective.

The purifier must be deterministic and differentiable (MagNet's reformer, APuDAE in ``direct``
mode, the feature-loss autoencoders, the S2SNet): its own training recipe is replaced by this
one; its ``purify`` is what is trained.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from ..data import ImageDataset
from ..errors import ConfigError
from ..precision import channels_last_weights, fast_layout
from .loops import frozen, run_minibatches
from .settings import TrainSettings

OBJECTIVES = ("mse", "stability", "classification")


class GaussianDenoiser(BaseModel):
    """How a purifier is trained as a Gaussian denoiser (see the module docstring).

    Attributes:
        objective: ``mse``, ``stability`` or ``classification``.
        sigma: standard deviation of the Gaussian noise, pixels in [0, 1]; None: the sigma of the
            smoothing run that uses the denoiser (a certify config fills it in).
        mse_epochs: epochs of MSE training before ``train.epochs`` of the objective (Salman et
            al.'s MSE warm start for the stability objective); 0: none.
    """

    model_config = ConfigDict(extra="forbid")

    objective: Literal["mse", "stability", "classification"] = "mse"
    sigma: float | None = Field(None, gt=0)
    mse_epochs: int = Field(0, ge=0)

    @property
    def needs_classifier(self) -> bool:
        """Whether training reads the frozen classifier (and so the cache key must name it)."""
        return self.objective != "mse"

    def at(self, sigma: float) -> GaussianDenoiser:
        """These settings with ``sigma`` filled in where it is None.

        Raises:
            ConfigError: the settings name another sigma than the run's.
        """
        if self.sigma is not None and abs(self.sigma - sigma) > 1e-12:
            raise ConfigError(f"the denoiser is trained at sigma {self.sigma:g} but smoothing runs "
                              f"at sigma {sigma:g}; leave denoiser.sigma out to train at the run's")
        return self.model_copy(update={"sigma": float(sigma)})


def check_denoiser_purifier(purifier: nn.Module, name: str) -> None:
    """Raise ConfigError unless ``purifier`` can be trained as a Gaussian denoiser: a trainable,
    deterministic, differentiable :class:`~aepurify.purifiers.Purifier`."""
    if not getattr(purifier, "trainable", False):
        raise ConfigError(f"purifier {name!r} has no weights to train as a Gaussian denoiser")
    if getattr(purifier, "stochastic", False):
        hint = " (use mode: direct)" if getattr(purifier, "mode", None) is not None else ""
        raise ConfigError(f"purifier {name!r} is random; a Gaussian denoiser for smoothing must "
                          f"be deterministic{hint}")
    if not getattr(purifier, "differentiable", False):
        raise ConfigError(f"purifier {name!r} is not differentiable, so it cannot be trained "
                          "through its purify as a Gaussian denoiser")


def noisy_copy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``clip(x + N(0, sigma^2 I), 0, 1)`` drawn from the global generator: the training input.

    Shapes: (N, C, H, W) in [0, 1] -> the same.
    """
    return (x + sigma * torch.randn_like(x)).clamp_(0, 1)


def denoiser_loss(purifier: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float,
                  objective: str, classifier: nn.Module | None = None) -> torch.Tensor:
    """Salman et al.'s loss of one batch.

    Args:
        purifier: the denoiser; its ``purify`` maps (N, C, H, W) in [0, 1] to the same.
        x: clean images (N, C, H, W) in [0, 1].
        y: labels (N,) (read by ``classification`` only).
        sigma: noise standard deviation (pixels in [0, 1]).
        objective: ``mse``, ``stability`` or ``classification``.
        classifier: the frozen classifier (N, C, H, W) -> logits (N, K); needed unless ``mse``.

    Returns:
        The scalar loss.

    Raises:
        ConfigError: unknown objective, or no classifier for a classifier objective.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown denoiser objective {objective!r}; use one of "
                          f"{', '.join(OBJECTIVES)}")
    denoised = purifier.purify(noisy_copy(x, sigma))
    if objective == "mse":
        return F.mse_loss(denoised.float(), x.float())
    if classifier is None:
        raise ConfigError(f"the {objective} objective needs the classifier the denoiser is "
                          "trained in front of")
    if objective == "stability":
        with torch.no_grad():
            y = classifier(x).argmax(1)
    return F.cross_entropy(classifier(denoised).float(), y)


def fit_gaussian_denoiser(purifier: nn.Module, train: ImageDataset, settings: TrainSettings,
                          denoiser: GaussianDenoiser, classifier: nn.Module | None = None,
                          device: torch.device | str = "cpu", name: str | None = None
                          ) -> dict[str, Any]:
    """Train ``purifier`` as a Gaussian denoiser at ``denoiser.sigma`` (the classifier frozen).

    Args:
        purifier: a trainable, deterministic, differentiable Purifier (weights initialised).
        train: the training split (truncated to ``settings.max_images``).
        settings: epochs, batch size, optimiser, schedule, seed of the objective's stage; the
            MSE warm start (``denoiser.mse_epochs``) uses them with its own epoch count.
            ``settings.extra`` must be empty (the purifier's own recipe is not used).
        denoiser: objective, sigma (must be set), MSE warm-start epochs.
        classifier: the frozen classifier (required unless the objective is ``mse``).
        device: where to train.
        name: the purifier's name in messages.

    Returns:
        Training metrics: the objective stage's (``final_loss``, ``steps``, ...) with the warm
        start's under ``mse_stage`` and the settings under ``gaussian_denoiser``.

    Raises:
        ConfigError: a purifier that cannot be trained so, no sigma, purifier-specific
            ``extra`` options, or a classifier objective without a classifier.
    """
    label = name or type(purifier).__name__
    check_denoiser_purifier(purifier, label)
    if denoiser.sigma is None:
        raise ConfigError("a Gaussian denoiser needs its noise sigma")
    if settings.extra:
        raise ConfigError(f"{label}: train.extra options ({', '.join(settings.extra)}) belong to "
                          "the purifier's own recipe, which a Gaussian denoiser does not use")
    if denoiser.needs_classifier and classifier is None:
        raise ConfigError(f"the {denoiser.objective} objective needs the classifier the "
                          "denoiser is trained in front of")
    sigma = float(denoiser.sigma)
    purifier.to(device)
    clf = classifier.to(device) if classifier is not None else None
    fast = fast_layout(settings.resolved(device).precision, device)
    metrics: dict[str, Any] = {}
    with frozen(clf), channels_last_weights([clf] if clf is not None else [], fast):
        if denoiser.mse_epochs:
            warm = settings.model_copy(update={"epochs": denoiser.mse_epochs})
            metrics["mse_stage"] = run_minibatches(
                purifier.parameters(), lambda x, y: denoiser_loss(purifier, x, y, sigma, "mse"),
                train, warm, desc=f"denoiser {label} (mse)", device=device, modules=[purifier])
        metrics.update(run_minibatches(
            purifier.parameters(),
            lambda x, y: denoiser_loss(purifier, x, y, sigma, denoiser.objective, clf),
            train, settings, desc=f"denoiser {label} ({denoiser.objective})", device=device,
            modules=[purifier]))
    metrics["gaussian_denoiser"] = denoiser.model_dump()
    return metrics
