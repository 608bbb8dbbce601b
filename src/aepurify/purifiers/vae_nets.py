"""The networks of the VAE purifiers (Luo and Pfister, arXiv 1812.02891): a Gaussian
encoder-decoder (:class:`GaussianCoder`), the authors' whole-image layouts (:func:`paper_vae`)
and the small patch VAE (:func:`patch_coder`). The purifiers are in :mod:`.patch_vae`, whose
docstring describes the layouts."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_sample(mu: torch.Tensor, logvar: torch.Tensor, sample: bool,
                    noise_clip: float | None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The reparameterised latent ``mu + exp(logvar / 2) * e``, e ~ N(0, I) clipped to
    ``[-noise_clip, noise_clip]`` (no clipping if None); ``mu`` itself when not ``sample``.
    ``noise`` replays a draw of e (already clipped) instead of drawing one.

    Shapes: mu, logvar, noise (N, D) -> z (N, D).
    """
    if not sample:
        return mu
    if noise is None:
        noise = torch.randn_like(mu)
        if noise_clip is not None:
            noise = noise.clamp(-noise_clip, noise_clip)
    return mu + torch.exp(0.5 * logvar) * noise


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, (N, D) -> (N,), in nats."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


class GaussianCoder(nn.Module):
    """A VAE network: ``encoder`` (images -> feature map of ``feature_shape``), two dense heads
    for the posterior mean and log-variance, a dense layer back to ``feature_shape`` and
    ``decoder`` (feature map -> pre-sigmoid image).

    Args:
        encoder: (N, C, H, W) -> (N, *feature_shape).
        feature_shape: (channels, height, width) of the encoder's output.
        latent_dim: D, the size of z.
        decoder: (N, *feature_shape) -> logits (N, C, H', W') with H' >= H, W' >= W (cropped).
        dense_activation: applied after the dense layer from z (the Keras MNIST/CIFAR-10 models
            used none; the patch coder uses ReLU).
    """

    def __init__(self, encoder: nn.Module, feature_shape: tuple[int, int, int], latent_dim: int,
                 decoder: nn.Module, dense_activation: bool = False) -> None:
        super().__init__()
        flat = math.prod(feature_shape)
        self.encoder = encoder
        self.feature_shape = tuple(feature_shape)
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)
        self.from_z = nn.Sequential(nn.Linear(latent_dim, flat),
                                    nn.ReLU() if dense_activation else nn.Identity())
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (N, D)."""
        h = self.encoder(x).flatten(1)
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Pre-sigmoid reconstruction (N, C, *size) of latents z (N, D)."""
        h = self.from_z(z).view(z.shape[0], *self.feature_shape)
        return self.decoder(h)[..., :size[0], :size[1]]

    def forward(self, x: torch.Tensor, sample: bool = True, noise_clip: float | None = None,
                noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction logits (N, C, H, W), mu, logvar) of images x in [0, 1]; ``noise``
        (N, D) replays the latent noise."""
        mu, logvar = self.encode(x)
        z = gaussian_sample(mu, logvar, sample, noise_clip, noise)
        return self.decode_logits(z, x.shape[-2:]), mu, logvar

    def loss(self, x: torch.Tensor, recon_loss: str, kl_weight: float,
             noise_clip: float | None) -> torch.Tensor:
        """Mean over the batch of (per-image reconstruction loss summed over pixels
        + ``kl_weight`` * KL). ``mse`` summed over pixels is the paper's ``C*H*W * MSE``."""
        logits, mu, logvar = self(x, sample=True, noise_clip=noise_clip)
        if recon_loss == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            rec = (torch.sigmoid(logits) - x).pow(2)
        return (rec.flatten(1).sum(1) + kl_weight * kl_divergence(mu, logvar)).mean()


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def paper_vae(layout: str, in_channels: int, image_size: int, latent_dim: int) -> GaussianCoder:
    """The authors' whole-image VAE (their Keras ``vae_model_mnist`` / ``vae_model_cifar``).

    Keras' "same" max-pooling rounds odd sizes up (``ceil_mode``); the decoder's output is
    cropped back to ``image_size``.
    """
    c, s = in_channels, image_size
    if layout == "mnist":
        side = math.ceil(math.ceil(s / 2) / 2)
        encoder = nn.Sequential(_conv(c, 16), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                _conv(16, 8), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
        decoder = nn.Sequential(_conv(8, 8), nn.ReLU(), nn.Upsample(scale_factor=2),
                                _conv(8, 16), nn.ReLU(), nn.Upsample(scale_factor=2),
                                _conv(16, c))
        return GaussianCoder(encoder, (8, side, side), latent_dim, decoder)
    side = math.ceil(s / 2)
    encoder = nn.Sequential(_conv(c, 64), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                            _conv(64, 32), nn.ReLU(), _conv(32, 16), nn.ReLU())
    decoder = nn.Sequential(_conv(16, 16), nn.ReLU(), _conv(16, 32), nn.ReLU(),
                            nn.Upsample(scale_factor=2), _conv(32, 64), nn.ReLU(), _conv(64, c))
    return GaussianCoder(encoder, (16, side, side), latent_dim, decoder)


def patch_coder(in_channels: int, patch_size: int, latent_dim: int, width: int
                ) -> GaussianCoder:
    """A small convolutional VAE for ``patch_size`` x ``patch_size`` patches: two stride-2
    4x4 convs (width, 2 * width channels) to a dense latent, and two stride-2 transposed convs
    back. ``patch_size`` must be a multiple of 4."""
    c, w, side = in_channels, width, patch_size // 4
    encoder = nn.Sequential(nn.Conv2d(c, w, 4, 2, 1), nn.ReLU(),
                            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU())
    decoder = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
                            nn.ConvTranspose2d(w, c, 4, 2, 1))
    return GaussianCoder(encoder, (2 * w, side, side), latent_dim, decoder, dense_activation=True)
