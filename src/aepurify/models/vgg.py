"""VGG-style networks for 28/32 px inputs (Simonyan and Zisserman 2015, VGG-11 and VGG-16
layouts with BatchNorm, one fully connected layer)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Classifier

# VGG-11 ("A") and VGG-16 ("D") configurations; "M" is a 2x2 max-pool. The fifth pool is left
# out: a 32 px image is 2 px wide by then (global average pooling follows).
_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
_LAYOUT_16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG11(Classifier):
    """VGG-11 with BatchNorm; channel widths scaled by ``width / 64``.

    Shapes: (N, C, S, S) in [0, 1] -> logits (N, num_classes).
    """

    layout: tuple = _LAYOUT

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
                 std: Sequence[float] = (0.2470, 0.2435, 0.2616), width: int = 64) -> None:
        super().__init__(in_channels, num_classes, image_size, mean, std)
        layers: list[nn.Module] = []
        cin = in_channels
        for item in self.layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = int(item) * width // 64
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)


class VGG16(VGG11):
    """VGG-16 with BatchNorm (13 convs; the feature extractor of Sivamani's perceptual loss);
    channel widths scaled by ``width / 64``. Arguments and shapes as :class:`VGG11`."""

    layout = _LAYOUT_16
