"""LeNet-style classifier of the feature-loss paper (Sivamani, arXiv 1912.04497; docs/methods.md):
conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, fc num_classes (ReLU)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Classifier, conv_out


class LeNet(Classifier):
    """LeNet-style CNN for 28 px (or 32 px) images.

    Shapes: (N, C, S, S) in [0, 1] -> logits (N, num_classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 mean: Sequence[float] = (0.1307,), std: Sequence[float] = (0.3081,)) -> None:
        super().__init__(in_channels, num_classes, image_size, mean, std)
        side = conv_out(conv_out(conv_out(conv_out(image_size, 5), 2, 2), 5), 2, 2)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(),
        )
        self.head = nn.Linear(500, num_classes)
