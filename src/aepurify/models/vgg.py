"""VGG-style network for 28/32 px inputs (Simonyan and Zisserman 2015, VGG-11 layout with
BatchNorm, one fully connected layer)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Classifier

# VGG-11 ("A") configuration; "M" is a 2x2 max-pool.
_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)


class VGG11(Classifier):
    """VGG-11 with BatchNorm; channel widths scaled by ``width / 64``.

    Shapes: (N, C, S, S) in [0, 1] -> logits (N, num_classes).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
                 std: Sequence[float] = (0.2470, 0.2435, 0.2616), width: int = 64) -> None:
        super().__init__(in_channels, num_classes, image_size, mean, std)
        layers: list[nn.Module] = []
        cin = in_channels
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = int(item) * width // 64
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
