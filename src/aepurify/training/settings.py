"""Training settings shared by classifiers and purifiers (validated with pydantic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data import CropOptions, ImageFolderOptions
from ..precision import resolve_precision

TrainingSource = Annotated[CropOptions | ImageFolderOptions, Field(discriminator="kind")]


class TrainSettings(BaseModel):
    """How to train a classifier or a purifier.

    Attributes:
        epochs: passes over the (possibly truncated) training split.
        batch_size: images per step.
        lr: learning rate.
        weight_decay: L2 weight decay (Adam's coupled form, as the papers' Keras/PyTorch code).
        optimizer: ``adam`` or ``sgd`` (momentum 0.9, nesterov).
        schedule: ``constant`` or ``cosine`` (annealed to 0 over all steps).
        max_images: use only the first N training images (the quick settings of the demo).
        augment: random crop (4 px reflect padding) and horizontal flip, for CIFAR-10.
        seed: seeds weight initialisation, batch order and augmentation.
        precision: ``bf16`` (autocast to bfloat16 and channels-last; parameters, optimiser,
            BatchNorm statistics and loss stay float32), ``fp32`` (TF32 matrix units allowed on
            CUDA), or ``auto`` / None: ``bf16`` on CUDA and on CPUs with bf16 units (AMX or
            AVX512-BF16), ``fp32`` elsewhere (:func:`aepurify.precision.resolve_precision`).
            The model cache keys on the resolved value.
        compile: run the loss through ``torch.compile`` (off by default: compiling costs tens of
            seconds up front and needs a C++ compiler on a CPU).
        extra: purifier-specific options (for example stage lengths of a two-stage scheme).
        data: what to train on instead of the evaluation data set's training split: a data set
            name, an image folder (``{kind: imagefolder, ...}``) or multi-scale natural-image
            crops (``{kind: crops, source: cifar10-jpeg, size: 64, scales: [1, 2, 4]}``, see
            :class:`aepurify.data.CropOptions`); the way to train 224 px purifiers for
            ``imagenet-samples``, which has no training split. Part of the model's cache key.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    max_images: int | None = Field(None, ge=1)
    augment: bool = False
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] | None = None
    compile: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)
    data: str | TrainingSource | None = None

    def resolved(self, device: torch.device | str) -> TrainSettings:
        """These settings with ``precision`` filled in for ``device`` (what training on it
        computes, so what the model cache must key on)."""
        if self.precision in ("bf16", "fp32"):
            return self
        return self.model_copy(update={"precision": resolve_precision(self.precision, device)})


def with_defaults(settings: TrainSettings | None, defaults: dict[str, Any]) -> TrainSettings:
    """``settings`` with ``defaults`` (an architecture's own training settings, e.g. airbench's
    recipe) filled in for the fields it was not given; explicit values win.

    Raises:
        pydantic.ValidationError: a default that is not a valid setting.
    """
    if not defaults:
        return settings if settings is not None else TrainSettings()
    given = settings.model_dump(exclude_unset=True) if settings is not None else {}
    return TrainSettings(**{**defaults, **given})
