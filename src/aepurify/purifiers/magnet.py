"""MagNet reformer (Meng and Chen, CCS 2017): a small convolutional denoising autoencoder trained
on clean images with Gaussian noise; the defended classifier reads its reconstruction.

Architecture (MagNet, Table 1): MNIST, ``pool=True``: Conv.Sigmoid 3x3x3, AvgPool 2x2,
Conv.Sigmoid 3x3x3 | Conv.Sigmoid 3x3x3, Upsample 2x2, Conv.Sigmoid 3x3x3, Conv.Sigmoid 3x3xC.
CIFAR-10, ``pool=False``: Conv.Sigmoid 3x3x3, Conv.Sigmoid 3x3x3, Conv.Sigmoid 3x3xC.
Loss: MSE to the clean image plus a tiny L2 activity penalty on the code; noise sigma 0.1 on MNIST
(0.025 on CIFAR-10). The reformer is the purifier; MagNet's detectors (reconstruction error, L1 or
L2, and the Jensen-Shannon divergence of the classifier's softmaxes on x and on the
reconstruction, each thresholded at 0.001 false positives on held-out clean images) are
:mod:`aepurify.detectors`, fed by this autoencoder (``detectors:`` on a config's purifier entry).
MagNet's MNIST detector II uses a second autoencoder, ``pool=False``. Carlini and Wagner (2017)
broke it with attacks that also evade the detectors.

``residual=True`` (not in MagNet) makes the last conv linear and adds its output to the input,
``clamp(x + D(E(x)), 0, 1)``, with that conv initialised to zero, so training starts from the
identity (the residual learning of DnCNN, Zhang et al., IEEE TIP 2017). A sigmoid reformer
returns a softened copy of a 224 px image, which EfficientNet-Lite0 misreads (docs/imagenet.md);
the residual one keeps the image's detail and learns only the correction.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Purifier


class MagNet(Purifier):
    """MagNet reformer (purifier name ``magnet``).

    Args:
        in_channels: C of the images (1 for MNIST, 3 for CIFAR-10).
        filters: channels of every hidden conv (3 in the paper).
        pool: MNIST layout with average pooling and upsampling (True) or the CIFAR-10 layout.
        noise_std: sigma of the Gaussian noise added during training (pixels in [0, 1]).
        activity_reg: weight of the L2 penalty on the code activations.
        residual: output ``clamp(x + D(E(x)), 0, 1)`` with a linear, zero-initialised last conv
            (not in MagNet; see the module docstring) instead of the sigmoid output ``D(E(x))``.

    Shapes:
        (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]; H, W even when ``pool``.
    """

    trainable = True
    reconstructs = True
    paper = "Meng and Chen, CCS 2017 (MagNet)"

    def __init__(self, in_channels: int = 1, filters: int = 3, pool: bool = True,
                 noise_std: float = 0.1, activity_reg: float = 1e-9,
                 residual: bool = False) -> None:
        super().__init__(in_channels)
        f = filters
        if pool:
            self.encoder = nn.Sequential(
                nn.Conv2d(in_channels, f, 3, padding=1), nn.Sigmoid(), nn.AvgPool2d(2),
                nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid())
            self.decoder = nn.Sequential(
                nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid(), nn.Upsample(scale_factor=2),
                nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid(),
                nn.Conv2d(f, in_channels, 3, padding=1), nn.Sigmoid())
        else:
            self.encoder = nn.Sequential(nn.Conv2d(in_channels, f, 3, padding=1), nn.Sigmoid(),
                                         nn.Conv2d(f, f, 3, padding=1), nn.Sigmoid())
            self.decoder = nn.Sequential(nn.Conv2d(f, in_channels, 3, padding=1), nn.Sigmoid())
        self.noise_std = noise_std
        self.activity_reg = activity_reg
        self.residual = bool(residual)
        if self.residual:  # the last conv predicts a correction: linear, starting at zero
            last = self.decoder[-2]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.decoder[-1] = nn.Identity()

    def reform(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The reformed image (N, C, H, W) in [0, 1] from the input x and its code."""
        out = self.decoder(code)
        return (x + out).clamp(0, 1) if self.residual else out

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.reform(x, self.encoder(x))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        noisy = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)
        code = self.encoder(noisy)
        loss = F.mse_loss(self.reform(noisy, code), x)
        return loss + self.activity_reg * code.pow(2).sum() / x.shape[0]

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, p: int = 1) -> torch.Tensor:
        """MagNet's detector score: mean over pixels of |x - AE(x)|^p per image, (N,) (p = 2:
        MNIST detector I, p = 1: detector II and CIFAR-10's); see
        :class:`aepurify.detectors.ReconstructionErrorDetector`."""
        return (self.purify(x) - x).abs().pow(p).flatten(1).mean(1)
