"""Small CNN (the Carlini-Wagner MNIST architecture): two conv blocks of two 3x3 convs, two
fully connected layers of 200."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Classifier


class SmallCNN(Classifier):
    """conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc(num_classes), ReLU.

    Shapes: (N, C, S, S) in [0, 1] -> logits (N, num_classes); S = 28 or 32.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 mean: Sequence[float] = (0.1307,), std: Sequence[float] = (0.3081,),
                 width: int = 32) -> None:
        super().__init__(in_channels, num_classes, image_size, mean, std)
        w = width
        side = ((image_size - 4) // 2 - 4) // 2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3), nn.ReLU(), nn.Conv2d(w, w, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * side * side, 200), nn.ReLU(),
            nn.Linear(200, 200), nn.ReLU(),
        )
        self.head = nn.Linear(200, num_classes)
