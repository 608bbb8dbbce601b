"""Input-transform baselines: JPEG compression, bit-depth reduction (feature squeezing) and
median smoothing. None of them is trained.

- JPEG (Dziugaite et al. 2016; Guo et al. 2018): the forward pass is real JPEG (Pillow); the BPDA
  surrogate is kornia's differentiable JPEG at the same quality.
- Bit-depth reduction (Xu, Evans and Qi, NDSS 2018): quantisation has zero gradient almost
  everywhere, so it is declared non-differentiable; its surrogate is the identity
  (straight-through), the standard BPDA choice.
- Median smoothing (Xu, Evans and Qi 2018): differentiable almost everywhere (the gradient
  routes to the selected pixel), computed with kornia.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import median_blur
from PIL import Image

from ..errors import ConfigError, InputError
from .base import Purifier


def jpeg_pillow(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip with Pillow (baseline JPEG, 4:2:0 chroma for colour).

    Args:
        x: (N, C, H, W) in [0, 1], C = 1 (grayscale JPEG) or 3 (RGB).
        quality: libjpeg quality 1..95.

    Returns:
        (N, C, H, W) in [0, 1] on x's device; no gradient.
    """
    if x.shape[1] not in (1, 3):
        raise InputError(f"JPEG needs 1 or 3 channels; got shape {tuple(x.shape)}")
    arr = x.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(
            img.transpose(1, 2, 0), "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as dec:
            dec_arr = np.asarray(dec)
        out[i] = dec_arr[None] if dec_arr.ndim == 2 else dec_arr.transpose(2, 0, 1)
    return torch.from_numpy(out).to(x.device, torch.float32).div_(255.0)


def jpeg_differentiable(x: torch.Tensor, quality: int) -> torch.Tensor:
    """kornia's differentiable JPEG at ``quality``; grayscale goes through the luma channel.

    Args:
        x: (N, C, H, W) in [0, 1], C = 1 or 3.

    Returns:
        (N, C, H, W) in [0, 1], differentiable in x.
    """
    gray = x.shape[1] == 1
    rgb = x.expand(-1, 3, -1, -1) if gray else x
    q = torch.tensor([float(quality)], device=x.device, dtype=x.dtype)
    out = jpeg_codec_differentiable(rgb, q)
    return (out.mean(dim=1, keepdim=True) if gray else out).clamp(0, 1)


class JPEG(Purifier):
    """JPEG compression at a fixed quality (purifier name ``jpeg``).

    Args:
        quality: libjpeg quality, 1..95 (the patch-VAE paper compares 10, 23, 50, 70).
        in_channels: 1 or 3, or None for either.
    """

    differentiable = False
    paper = "Dziugaite et al. 2016 / Guo et al. ICLR 2018 (JPEG as a defense)"

    def __init__(self, quality: int = 75, in_channels: int | None = None) -> None:
        super().__init__(in_channels)
        if not 1 <= int(quality) <= 95:
            raise ConfigError(f"JPEG quality must be in 1..95; got {quality}")
        self.quality = int(quality)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_pillow(x, self.quality)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_differentiable(x, self.quality)

    def surrogate_name(self) -> str:
        return "kornia differentiable JPEG"


class BitDepth(Purifier):
    """Reduce each pixel to ``bits`` bits: round(x * (2^b - 1)) / (2^b - 1).

    Args:
        bits: 1..8 (feature squeezing uses 1 on MNIST, 4-5 on CIFAR-10).
    """

    differentiable = False
    paper = "Xu, Evans and Qi, NDSS 2018 (feature squeezing)"

    def __init__(self, bits: int = 1, in_channels: int | None = None) -> None:
        super().__init__(in_channels)
        if not 1 <= int(bits) <= 8:
            raise ConfigError(f"bit depth must be in 1..8; got {bits}")
        self.bits = int(bits)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels

    def surrogate_name(self) -> str:
        return "identity"


class Median(Purifier):
    """Median smoothing over a ``kernel_size`` x ``kernel_size`` window (reflect padding).

    Args:
        kernel_size: odd window side in pixels. Feature squeezing used 2x2 windows; kornia's
            median needs an odd side, so 3 is the closest.
    """

    paper = "Xu, Evans and Qi, NDSS 2018 (feature squeezing)"

    def __init__(self, kernel_size: int = 3, in_channels: int | None = None) -> None:
        super().__init__(in_channels)
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ConfigError(f"median kernel size must be odd and positive; got {kernel_size}")
        self.kernel_size = int(kernel_size)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return median_blur(x, self.kernel_size)
