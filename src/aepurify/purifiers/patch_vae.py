"""VAE purification and the patch-wise VAE (Luo and Pfister, "Adversarial Defense of Image
Classification Using a Variational Auto-Encoder", arXiv 1812.02891).

A variational auto-encoder trained on clean images; the defended classifier reads
``decoder(z)`` with ``z`` drawn from the posterior ``q(z | x)``, so the defense is random and an
honest white-box attack needs EOT. ``sample=False`` uses the posterior mean instead
(deterministic).

- ``vae``: one VAE over the whole image, with the authors' two layouts (their Keras code):
  ``mnist``: Conv16-ReLU, MaxPool 2, Conv8-ReLU, MaxPool 2, dense latent (256) | dense,
  Conv8-ReLU, Upsample 2, Conv16-ReLU, Upsample 2, Conv-C-sigmoid; loss
  ``784 * MSE + 0.01 * KL`` (the per-image sum of squared errors). ``cifar10``: Conv64-ReLU,
  MaxPool 2, Conv32-ReLU, Conv16-ReLU, dense latent (1024) | dense, Conv16, Conv32, Upsample 2,
  Conv64, Conv-C-sigmoid; loss ``3072 * MSE + 0.01 * KL``. All convs 3x3, "same" padding.
- ``patch-vae``: one small convolutional VAE per patch size, trained on random square patches
  of the training images (binary cross-entropy + KL, latent noise clipped to +-5, as the paper's
  ImageNet patch VAE). An image of any size is cut into a grid of patches with stride equal to
  the patch size (``stride="full"``) or half of it (``"half"``), each patch is reconstructed, the
  overlapping reconstructions are averaged (``unfold`` / ``fold``, one batched pass), optionally
  smoothed with a Gaussian, and with several patch sizes (``patch_sizes=[8, 16]``, the paper's
  "mix") the reconstructions of all sizes are averaged. No retraining for another image size.

Borders (patch-vae): when the patch grid does not divide the image (28 px with 16 px patches at
stride 8 needs 32 px), the image is padded by replicating its edge pixels, split evenly between
the two sides (2 px each side there), purified, and cropped back; images smaller than a patch
are padded up to one patch. Border pixels are covered by fewer patches than interior ones; the
average divides by each pixel's own count, so every pixel is an average of the patches that
cover it.

Replayable randomness: the latent noise ``e`` of one call can be sampled apart from its use
(``sample_randomness``) and passed back (``forward(x, randomness=params)``); the default forward
draws it as before, from the global generator, so seeded results do not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_images
from ..errors import ConfigError, InputError, NotApplicableError
from .base import Purifier
from .randomness import Randomness, sample_tensor
from .vae_nets import GaussianCoder, gaussian_sample, paper_vae, patch_coder

if TYPE_CHECKING:
    from ..data import ImageDataset
    from ..training.settings import TrainSettings

LAYOUTS = ("mnist", "cifar10")
RECON_LOSSES = ("mse", "bce")
STRIDES = ("half", "full")


class _VariationalPurifier(Purifier):
    """What ``vae`` and ``patch-vae`` share: sampling or the posterior mean, the paper's losses,
    and the declared randomness (stochastic exactly when sampling)."""

    trainable = True
    reconstructs = True
    paper = "Luo and Pfister, arXiv 1812.02891 (VAE defense)"

    def __init__(self, in_channels: int, sample: bool, recon_loss: str, kl_weight: float,
                 noise_clip: float | None) -> None:
        super().__init__(in_channels)
        if recon_loss not in RECON_LOSSES:
            raise ConfigError(f"recon_loss must be one of {', '.join(RECON_LOSSES)}; "
                              f"got {recon_loss!r}")
        if kl_weight < 0:
            raise ConfigError(f"kl_weight must be >= 0; got {kl_weight}")
        if noise_clip is not None and noise_clip <= 0:
            raise ConfigError(f"noise_clip must be positive or null; got {noise_clip}")
        self.sample = bool(sample)
        self.recon_loss = recon_loss
        self.kl_weight = float(kl_weight)
        self.noise_clip = None if noise_clip is None else float(noise_clip)

    @property  # type: ignore[override]
    def stochastic(self) -> bool:  # noqa: D401 - a flag, as on the base class
        """Random exactly when z is sampled; the posterior mean is deterministic."""
        return self.sample

    def reconstruct(self, coder: GaussianCoder, x: torch.Tensor,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
        """``coder``'s reconstruction of x (N, C, H, W) in [0, 1], in [0, 1]; ``noise`` (N, D)
        replays the latent noise."""
        logits, _, _ = coder(x, sample=self.sample, noise_clip=self.noise_clip, noise=noise)
        return torch.sigmoid(logits)

    def latent_noise_shapes(self, x_shape: Sequence[int]) -> dict[str, tuple[int, int]]:
        """Name -> (rows, D) of the latent noise one call on ``x_shape`` draws, in draw order."""
        raise NotImplementedError

    def sample_randomness(self, x_shape: tuple[int, ...], generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> Randomness:
        """The latent noise e ~ N(0, I) (clipped to +-noise_clip) of one call on images of
        ``x_shape``, drawn in the order the default forward draws it.

        Raises:
            NotApplicableError: ``sample=False`` (the posterior mean is deterministic).
        """
        if not self.sample:
            raise NotApplicableError(f"{type(self).__name__} with sample=False is deterministic; "
                                     "it has no randomness to sample")
        draws = {}
        for name, shape in self.latent_noise_shapes(x_shape).items():
            noise = sample_tensor("normal", shape, generator, device)
            if self.noise_clip is not None:
                noise = noise.clamp(-self.noise_clip, self.noise_clip)
            draws[name] = noise
        return Randomness(tuple(x_shape), draws)

    def coder_loss(self, coder: GaussianCoder, x: torch.Tensor) -> torch.Tensor:
        return coder.loss(x, self.recon_loss, self.kl_weight, self.noise_clip)


class VAE(_VariationalPurifier):
    """Whole-image VAE purifier (purifier name ``vae``).

    Args:
        in_channels: C of the images (1 for MNIST, 3 for CIFAR-10).
        image_size: H = W of the images it was built for (pixels); other sizes are refused
            (``patch-vae`` handles any size).
        layout: ``mnist`` or ``cifar10`` (the authors' two networks); None picks ``mnist`` for
            1 channel and ``cifar10`` otherwise.
        latent_dim: size of z; None gives the paper's (256 for ``mnist``, 1024 for ``cifar10``).
        sample: draw z from q(z|x) (the paper's random defense) or use its mean.
        recon_loss: ``mse`` (the paper's, summed over pixels) or ``bce``.
        kl_weight: weight of the KL term (0.01 in the paper).
        noise_clip: clip the latent noise to +-noise_clip (None: no clipping, as the authors'
            whole-image VAEs).

    Shapes:
        (N, C, image_size, image_size) in [0, 1] -> same shape in [0, 1].

    Raises:
        ConfigError: unknown layout or loss, negative weights.
        InputError: (from forward) images of another size, channel count or range.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, layout: str | None = None,
                 latent_dim: int | None = None, sample: bool = True, recon_loss: str = "mse",
                 kl_weight: float = 0.01, noise_clip: float | None = None) -> None:
        super().__init__(in_channels, sample, recon_loss, kl_weight, noise_clip)
        layout = layout or ("mnist" if in_channels == 1 else "cifar10")
        if layout not in LAYOUTS:
            raise ConfigError(f"vae layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
        if int(image_size) < 4:
            raise ConfigError(f"vae image_size must be at least 4; got {image_size}")
        self.image_size = int(image_size)
        self.layout = layout
        latent = latent_dim if latent_dim is not None else (256 if layout == "mnist" else 1024)
        self.net = paper_vae(layout, in_channels, self.image_size, int(latent))

    def purify(self, x: torch.Tensor, randomness: Randomness | None = None) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise InputError(f"vae was built for {self.image_size}x{self.image_size} images; got "
                             f"shape {tuple(x.shape)} (patch-vae purifies any size)")
        return self.reconstruct(self.net, x, randomness["latent"] if randomness else None)

    def latent_noise_shapes(self, x_shape: Sequence[int]) -> dict[str, tuple[int, int]]:
        return {"latent": (int(x_shape[0]), self.net.to_mu.out_features)}

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        return self.coder_loss(self.net, x)


PATCHES_PER_IMAGE = 4  # default random training crops per image and patch size


def patch_grid(size: int, patch: int, stride: int) -> tuple[int, int, int]:
    """The padded side that a grid of ``patch`` px patches at ``stride`` covers exactly, and
    the padding (before, after) that brings ``size`` to it, split evenly.

    >>> patch_grid(28, 16, 8)     # 3 patches per side: 0, 8, 16 on a 32 px padded side
    (32, 2, 2)
    """
    count = 1 if size <= patch else math.ceil((size - patch) / stride) + 1
    total = (count - 1) * stride + patch
    before = (total - size) // 2
    return total, before, total - size - before


def random_patches(x: torch.Tensor, patch: int, per_image: int) -> torch.Tensor:
    """``per_image`` random ``patch`` x ``patch`` crops of each image (uniform positions).

    Shapes: (N, C, H, W) -> (N * per_image, C, patch, patch). Images smaller than a patch are
    padded by edge replication first, as at purification time.
    """
    n, _, h, w = x.shape
    if h < patch or w < patch:  # the grid of stride-1 crops: no padding unless a side is short
        _, top, bottom = patch_grid(h, patch, 1)
        _, left, right = patch_grid(w, patch, 1)
        x = F.pad(x, (left, right, top, bottom), mode="replicate")
        h, w = x.shape[-2:]
    m = n * per_image
    img = torch.arange(n, device=x.device).repeat_interleave(per_image)
    offs = torch.arange(patch, device=x.device)
    rows = torch.randint(0, h - patch + 1, (m, 1), device=x.device) + offs
    cols = torch.randint(0, w - patch + 1, (m, 1), device=x.device) + offs
    # advanced indices around a slice: the result is (M, patch, patch, C)
    crops = x[img[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2)


class PatchVAE(_VariationalPurifier):
    """Patch-wise VAE purifier (purifier name ``patch-vae``): purifies images of any size with
    VAEs trained on fixed-size patches.

    Args:
        in_channels: C of the images.
        patch_sizes: one VAE per patch size (pixels, multiples of 4); with several, the
            reconstructions of all sizes are averaged (the paper's "mix").
        latent_dim: size of each patch VAE's z.
        width: channels of the patch VAEs' first conv (the second has twice as many).
        stride: ``half`` (stride = patch size / 2, overlapping patches averaged) or ``full``
            (stride = patch size, a plain tiling).
        smooth: sigma in pixels of a Gaussian smoothing of the averaged reconstruction (0: off).
        sample: draw z from q(z|x) (random, the paper's) or use its mean (deterministic).
        recon_loss: ``bce`` (the paper's patch VAE) or ``mse``.
        kl_weight: weight of the KL term (1 in the paper's patch VAE: the plain ELBO).
        noise_clip: latent noise clipped to +-noise_clip (5 in the paper; None: no clipping).

    Shapes:
        (N, C, H, W) in [0, 1], any H and W -> same shape in [0, 1].

    Training option (``train.extra``): ``patches_per_image`` (4), random crops per image and
    patch size per step.

    Raises:
        ConfigError: bad patch sizes, stride, loss or weights.
        InputError: (from forward) wrong channel count or values outside [0, 1].
    """

    def __init__(self, in_channels: int = 1, patch_sizes: Sequence[int] = (16,),
                 latent_dim: int = 64, width: int = 16, stride: str = "half", smooth: float = 0.0,
                 sample: bool = True, recon_loss: str = "bce", kl_weight: float = 1.0,
                 noise_clip: float | None = 5.0) -> None:
        super().__init__(in_channels, sample, recon_loss, kl_weight, noise_clip)
        sizes = [int(p) for p in ([patch_sizes] if isinstance(patch_sizes, int) else patch_sizes)]
        if not sizes or any(p < 4 or p % 4 for p in sizes) or len(set(sizes)) != len(sizes):
            raise ConfigError(f"patch_sizes must be distinct multiples of 4 (at least 4); "
                              f"got {patch_sizes}")
        if stride not in STRIDES:
            raise ConfigError(f"stride must be one of {', '.join(STRIDES)}; got {stride!r}")
        if smooth < 0:
            raise ConfigError(f"smooth must be >= 0; got {smooth}")
        self.patch_sizes = sizes
        self.stride = stride
        self.smooth = float(smooth)
        self.coders = nn.ModuleList(patch_coder(in_channels, p, int(latent_dim), int(width))
                                    for p in sizes)
        self.patches_per_image = PATCHES_PER_IMAGE

    def grid(self, index: int, h: int, w: int
             ) -> tuple[int, int, tuple[int, int, int], tuple[int, int, int]]:
        """(patch, stride, rows grid, columns grid) of ``patch_sizes[index]`` on an h x w image,
        each grid as :func:`patch_grid` gives it."""
        p = self.patch_sizes[index]
        s = p if self.stride == "full" else p // 2
        return p, s, patch_grid(h, p, s), patch_grid(w, p, s)

    def latent_noise_shapes(self, x_shape: Sequence[int]) -> dict[str, tuple[int, int]]:
        shapes = {}
        for i, coder in enumerate(self.coders):
            p, s, (hp, _, _), (wp, _, _) = self.grid(i, int(x_shape[2]), int(x_shape[3]))
            count = ((hp - p) // s + 1) * ((wp - p) // s + 1)
            shapes[f"latent_{p}"] = (int(x_shape[0]) * count, coder.to_mu.out_features)
        return shapes

    def purify_size(self, x: torch.Tensor, index: int, noise: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Reconstruction of x (N, C, H, W) with the VAE of ``patch_sizes[index]`` alone: pad,
        cut into patches (one batched ``unfold``), reconstruct them in one pass, put them back
        with ``fold`` and divide by the number of patches covering each pixel, crop. ``noise``
        (N * patches, D) replays the latent noise."""
        mu, logvar = self.encode_size(x, index)
        return self.decode_size(x, index, mu, logvar, 1, noise)

    def encode_size(self, x: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of every patch of x (N, C, H, W) for the VAE of
        ``patch_sizes[index]``: each (N * patches, D), image-major (the patches of image 0
        first, in ``unfold``'s order)."""
        n, c, h, w = x.shape
        p, s, (hp, top, bottom), (wp, left, right) = self.grid(index, h, w)
        padded = F.pad(x, (left, right, top, bottom), mode="replicate") if (hp, wp) != (h, w) \
            else x
        cols = F.unfold(padded, p, stride=s)                        # (N, C*p*p, L)
        patches = cols.transpose(1, 2).reshape(n * cols.shape[-1], c, p, p)
        return self.coders[index].encode(patches)

    def decode_size(self, x: torch.Tensor, index: int, mu: torch.Tensor, logvar: torch.Tensor,
                    draws: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``draws`` reconstructions of x (N, C, H, W) from :meth:`encode_size`'s ``mu`` and
        ``logvar``: latents sampled for (draws * N * patches) rows, draw-major, decoded, folded
        back and divided by each pixel's patch count. Returns (draws * N, C, H, W) in [0, 1];
        ``noise`` (draws * N * patches, D) replays the latent noise."""
        n, c, h, w = x.shape
        p, s, (hp, top, bottom), (wp, left, right) = self.grid(index, h, w)
        if draws > 1:
            mu, logvar = mu.repeat(draws, 1), logvar.repeat(draws, 1)
        z = gaussian_sample(mu, logvar, self.sample, self.noise_clip, noise)
        rec = torch.sigmoid(self.coders[index].decode_logits(z, (p, p)))
        count = rec.shape[0] // (draws * n)
        rec_cols = rec.reshape(draws * n, count, c * p * p).transpose(1, 2)
        summed = F.fold(rec_cols, (hp, wp), p, stride=s)
        cover = F.fold(torch.ones_like(rec_cols[:1]), (hp, wp), p, stride=s)
        return (summed / cover)[..., top:top + h, left:left + w]

    def purify(self, x: torch.Tensor, randomness: Randomness | None = None) -> torch.Tensor:
        noise = [randomness[f"latent_{p}"] if randomness else None for p in self.patch_sizes]
        out = torch.stack([self.purify_size(x, i, noise[i])
                           for i in range(len(self.coders))]).mean(0)
        return self._finish(out)

    def shared_part(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The posterior of every patch (``mu_P``, ``logvar_P`` per patch size P): all that a
        draw does not change. EOT encodes once and decodes each draw (the encoder and the two
        dense heads are over half of a patch VAE's work), and keeps one encoder graph."""
        check_images(x, channels=self.in_channels)
        shared = {}
        for i, p in enumerate(self.patch_sizes):
            shared[f"mu_{p}"], shared[f"logvar_{p}"] = self.encode_size(x, i)
        return shared

    def purify_from_shared(self, x: torch.Tensor, shared: dict[str, torch.Tensor],
                           draws: int) -> torch.Tensor:
        out = torch.stack([self.decode_size(x, i, shared[f"mu_{p}"], shared[f"logvar_{p}"],
                                            draws)
                           for i, p in enumerate(self.patch_sizes)]).mean(0)
        return self._finish(out)

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        """The optional Gaussian smoothing of the averaged reconstruction, clipped to [0, 1]."""
        if self.smooth > 0:
            from kornia.filters import gaussian_blur2d

            k = 2 * math.ceil(2 * self.smooth) + 1
            out = gaussian_blur2d(out, (k, k), (self.smooth, self.smooth), border_type="replicate")
        return out.clamp(0, 1)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor,
                      classifier: nn.Module | None = None) -> torch.Tensor:
        losses = [self.coder_loss(coder, random_patches(x, p, self.patches_per_image))
                  for coder, p in zip(self.coders, self.patch_sizes, strict=True)]
        return torch.stack(losses).sum()

    def fit(self, train: ImageDataset, settings: TrainSettings,
            classifier: nn.Module | None = None, device: torch.device | str = "cpu"
            ) -> dict[str, Any]:
        """Train every patch VAE on random patches of ``train`` (``train.extra``:
        ``patches_per_image``, default 4).

        Raises:
            ConfigError: an unknown or invalid ``extra`` option.
        """
        extra = dict(settings.extra)
        per_image = extra.pop("patches_per_image", PATCHES_PER_IMAGE)
        if extra:
            raise ConfigError(f"patch-vae: unknown train.extra option(s): {', '.join(extra)} "
                              "(known: patches_per_image)")
        if not isinstance(per_image, int) or per_image < 1:
            raise ConfigError(f"patch-vae: patches_per_image must be a positive integer; got "
                              f"{per_image!r}")
        self.patches_per_image = per_image
        metrics = super().fit(train, settings, classifier=classifier, device=device)
        return {**metrics, "patches_per_image": per_image}
