"""Feature-loss denoising autoencoder (Sivamani, "Feature Losses for Adversarial Robustness",
arXiv 1912.04497) and its close relative HGD (Liao et al., "Defense against Adversarial Attacks
Using High-Level Representation Guided Denoiser", CVPR 2018).

A denoising autoencoder sits in front of the classifier and is trained on pairs (perturbed,
clean): the perturbed input is the clean image itself, Gaussian noise, or an adversarial example
(FGSM / PGD) crafted on a classifier; the target is the clean image. The loss is

    pixel_weight * MSE(AE(x~), x) + sum_l w_l * d(phi_l(AE(x~)), phi_l(x))

where phi_l are feature maps of a *feature extractor* at chosen layers and d is MSE (the
"perceptual loss" of the paper) or L1 (HGD). The two purifiers differ only in their defaults:

- ``feature-dae``: the feature extractor is a separate CNN trained on the same data set (the
  author used three depths of an ImageNet VGG-16, which has no MNIST counterpart), and the
  adversarial training pairs are crafted on that same separate network. It never touches the
  defended classifier, so one trained purifier serves any classifier (classifier-agnostic, as
  the paper presents it) and gray-box evaluation attacks a model it has never seen.
- ``hgd``: the feature extractor is the defended classifier itself (its logits by default, HGD's
  "LGD"; ``penultimate`` gives "FGD"), the distance is L1 and there is no pixel term, as in
  Liao et al.; its adversarial pairs are crafted on the defended classifier too. Its cache key
  therefore includes the classifier (``needs_classifier``).

Architectures (``arch``):

- ``sivamani``: the author's MNIST autoencoder, 28x28 only: conv 1->16 (3x3, stride 3, pad 1),
  ReLU, max-pool 2, conv 16->8 (3x3, stride 2, pad 1), ReLU, max-pool 2 (stride 1), latent
  8x2x2 (32 numbers); transposed convs 8->16 (3, s2), 16->8 (5, s3, p1), 8->C (2, s2, p1), tanh.
  Its 32-number bottleneck caps what it can reconstruct: in the MNIST paper config it leaves
  LeNet at 0.876 clean accuracy, against 0.989 for ``conv`` (docs/purifiers/feature-dae.md).
- ``conv`` (default): ours, for 28 px and 32 px images, grey or colour: two stride-2 conv stages
  down to (2w, H/4, W/4) with BatchNorm, mirrored by kernel-2 transposed convs, tanh. The paper
  does not describe its CIFAR-10 network.

Both read inputs mapped to [-1, 1] (the author's normalisation) and map the tanh output back to
[0, 1].

The training stage lives in :mod:`aepurify.training.feature_loss` (options, feature taps, the
loop) and :mod:`aepurify.training.pairs` (the training pairs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .base import Purifier

if TYPE_CHECKING:
    from ..data import ImageDataset
    from ..training.settings import TrainSettings

ARCHS = ("conv", "sivamani")


def _sivamani_autoencoder(channels: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The author's MNIST autoencoder (28x28 -> 8x2x2 -> 28x28), ending in tanh."""
    encoder = nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=3, padding=1), nn.ReLU(),   # 16 x 10 x 10
        nn.MaxPool2d(2, stride=2),                                    # 16 x 5 x 5
        nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU(),          # 8 x 3 x 3
        nn.MaxPool2d(2, stride=1))                                    # 8 x 2 x 2
    decoder = nn.Sequential(
        nn.ConvTranspose2d(8, 16, 3, stride=2), nn.ReLU(),            # 16 x 5 x 5
        nn.ConvTranspose2d(16, 8, 5, stride=3, padding=1), nn.ReLU(),  # 8 x 15 x 15
        nn.ConvTranspose2d(8, channels, 2, stride=2, padding=1),      # C x 28 x 28
        nn.Tanh())
    return encoder, decoder


def _conv_autoencoder(channels: int, width: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Convolutional autoencoder: (C, H, W) -> (2w, H/4, W/4) -> (C, H, W), ending in tanh.

    BatchNorm after every hidden convolution: without it Adam drove MNIST reconstructions to
    the all-black image early in training (tanh saturates and its gradient vanishes).
    Kernel-2 transposed convolutions keep it cheap (about as many multiply-adds as LeNet at
    w = 16 on 28 px).
    """
    w = width

    def block(conv: nn.Module, cout: int) -> list[nn.Module]:
        return [conv, nn.BatchNorm2d(cout), nn.ReLU()]

    encoder = nn.Sequential(
        *block(nn.Conv2d(channels, w, 3, padding=1), w),
        *block(nn.Conv2d(w, w, 3, stride=2, padding=1), w),                # w x H/2
        *block(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), 2 * w))       # 2w x H/4
    decoder = nn.Sequential(
        *block(nn.ConvTranspose2d(2 * w, w, 2, stride=2), w),              # w x H/2
        *block(nn.ConvTranspose2d(w, w, 2, stride=2), w),                  # w x H
        nn.Conv2d(w, channels, 3, padding=1),
        nn.Tanh())
    return encoder, decoder


class FeatureDAE(Purifier):
    """Feature-loss denoising autoencoder (purifier name ``feature-dae``).

    Args:
        in_channels: C of the images (1 for MNIST, 3 for CIFAR-10).
        arch: ``conv`` (H and W divisible by 4) or ``sivamani`` (the author's MNIST network,
            28x28 only); see the module docstring.
        width: w, the channels of the ``conv`` architecture's first stage (ignored by
            ``sivamani``).

    Shapes:
        (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Raises:
        ConfigError: unknown ``arch``.
        InputError: (from forward) images of a size the architecture cannot take, or the
            usual checks of :class:`Purifier`.

    Training options (``train.extra``) are documented in
    :class:`aepurify.training.feature_loss.FeatureLossOptions`; the defaults of this class are
    in :attr:`default_training`.
    """

    trainable = True
    differentiable = True
    reconstructs = True
    paper = "Sivamani, arXiv 1912.04497 (Feature Losses for Adversarial Robustness)"

    # Training defaults (train.extra is merged over them). The separate network is both the
    # feature extractor and the classifier the adversarial pairs are crafted on: one auxiliary
    # network, trained once and cached. Its seed differs from the classifiers' default (0) so
    # that it is never the defended classifier by accident. The epsilons are on the MNIST scale;
    # configs for CIFAR-10 give their own.
    default_training: ClassVar[dict[str, Any]] = {
        "pixel_weight": 1.0,
        "feature_extractor": {"arch": "small-cnn", "params": {},
                              "train": {"epochs": 2, "batch_size": 128, "lr": 0.001,
                                        "schedule": "cosine", "seed": 1}},
        "feature_layers": None,       # None: three depths (see feature_loss.default_layers)
        "feature_weights": None,      # None: equal weights of 1
        "distance": "mse",
        "pair_classifier": "extractor",
        "pairs": {"mode": "cached",
                  "sources": [{"kind": "clean"}, {"kind": "noise", "std": 0.1},
                              {"kind": "fgsm", "eps": [0.1, 0.2, 0.3]},
                              {"kind": "pgd", "eps": [0.1, 0.2, 0.3], "steps": 10}]},
    }
    # Whether the training options may name the defended classifier (only when its key is part
    # of the cache key, i.e. needs_classifier).
    may_use_defended: ClassVar[bool] = False

    def __init__(self, in_channels: int = 1, arch: str = "conv", width: int = 16) -> None:
        super().__init__(in_channels)
        if arch not in ARCHS:
            raise ConfigError(f"unknown feature-dae architecture {arch!r}; use one of "
                              f"{', '.join(ARCHS)}")
        self.arch = arch
        if arch == "sivamani":
            self.encoder, self.decoder = _sivamani_autoencoder(in_channels)
        else:
            self.encoder, self.decoder = _conv_autoencoder(in_channels, width)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.arch == "sivamani" and (h, w) != (28, 28):
            raise InputError(f"the 'sivamani' feature-dae architecture takes 28x28 images; got "
                             f"{h}x{w} (use arch='conv')")
        if self.arch == "conv" and (h % 4 or w % 4):
            raise InputError(f"the 'conv' feature-dae architecture needs H and W divisible by "
                             f"4; got {h}x{w}")
        # The author's network reads images normalised to [-1, 1] and ends in tanh.
        return (self.decoder(self.encoder(x * 2 - 1)) + 1) / 2

    def fit(self, train: ImageDataset, settings: TrainSettings,
            classifier: nn.Module | None = None, device: torch.device | str = "cpu"
            ) -> dict[str, Any]:
        """Train on (perturbed, clean) pairs with pixel + feature loss.

        Args:
            train: the training split (truncated to ``settings.max_images``).
            settings: epochs, batch size, optimiser...; ``settings.extra`` holds the
                feature-loss options (merged over :attr:`default_training`).
            classifier: the defended classifier; only ``hgd`` uses it.
            device: where to train.

        Returns:
            Training metrics (losses, pair counts, auxiliary networks used).

        Raises:
            ConfigError: bad training options, or options that name the defended classifier
                for a purifier whose cache key does not include it.
        """
        from ..training.feature_loss import fit_feature_loss_dae

        return fit_feature_loss_dae(self, train, settings, classifier=classifier, device=device)


class HGD(FeatureDAE):
    """High-level representation guided denoiser (purifier name ``hgd``; Liao et al., CVPR
    2018), the variant of :class:`FeatureDAE` whose feature extractor is the defended classifier.

    Same architectures and arguments as :class:`FeatureDAE`; the training defaults differ: the
    loss is the L1 distance between the defended classifier's logits on the denoised and on the
    clean image (HGD's LGD; ``feature_layers: [penultimate]`` gives FGD), with no pixel term,
    and the adversarial pairs are crafted on the defended classifier. Liao et al. used a U-Net
    (DUNET); this reuses the feature-loss autoencoders so the two defenses differ only in their
    guide.
    """

    needs_classifier = True
    may_use_defended = True
    paper = "Liao et al., CVPR 2018 (HGD), as a variant of Sivamani, arXiv 1912.04497"
    default_training: ClassVar[dict[str, Any]] = {
        **FeatureDAE.default_training,
        "pixel_weight": 0.0,
        "feature_extractor": "defended",
        "feature_layers": ["logits"],
        "distance": "l1",
        "pair_classifier": "defended",
    }
