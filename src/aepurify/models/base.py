"""The classifier base: [0, 1] images in, logits out, normalisation inside the module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..checkpoint import Configurable
from ..checks import check_images


class Classifier(Configurable, nn.Module):
    """Base class of aepurify's image classifiers.

    Subclasses build ``self.body`` (normalised images -> flat penultimate features) and
    ``self.head`` (features -> logits). Normalisation by the data set's mean and std happens
    inside ``forward``, so attacks and purifiers only ever see pixels in [0, 1].

    Args:
        in_channels: C of the input images.
        num_classes: number of logits.
        image_size: H = W of the input images (pixels).
        mean, std: per-channel normalisation statistics.

    Shapes:
        forward: (N, C, H, W) in [0, 1] -> logits (N, num_classes).
        features: (N, C, H, W) in [0, 1] -> penultimate features (N, D).

    Raises:
        InputError: (from forward) images of another shape or outside [0, 1] (the range is
            checked where images enter, not inside an attack's iterations: see
            :mod:`aepurify.checks`).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) not in (1, in_channels) or len(std) not in (1, in_channels):
            raise ValueError("mean/std must have 1 or in_channels entries")
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.body: nn.Module = nn.Identity()
        self.head: nn.Module = nn.Identity()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, D) of images in [0, 1]."""
        check_images(x, channels=self.input_shape[0], size=self.input_shape[1:])
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or pooling layer."""
    return (size + 2 * padding - kernel) // stride + 1
