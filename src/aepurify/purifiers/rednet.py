"""REDNet, the denoising autoencoder of APuDAE (Mao, Shen and Yang, NeurIPS 2016, as in the
code of Kalaria, Hazra and Chakrabarti, arXiv 2208.13838); the purifier is in :mod:`.apudae`."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .base import batchnorm_affine


class REDNet(nn.Module):
    """REDNet-style denoising autoencoder (Mao et al. 2016) as used by APuDAE.

    Args:
        in_channels: C of the images.
        layers: conv blocks in the encoder (and transposed-conv blocks in the decoder); 15 is
            REDNet-30.
        features: channels of every hidden layer (64 in the paper).

    Shapes:
        (N, C, H, W) -> (N, C, H, W), not clipped (>= 0 because of the final ReLU).
    """

    def __init__(self, in_channels: int = 3, layers: int = 15, features: int = 64) -> None:
        super().__init__()
        if layers < 1 or features < 1:
            raise ConfigError(f"REDNet needs layers >= 1 and features >= 1; got layers={layers}, "
                              f"features={features}")
        self.layers = layers

        def block(conv: nn.Module) -> nn.Sequential:
            # The authors' order: convolution, ReLU, then BatchNorm.
            return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(features))

        self.encoder = nn.ModuleList(
            [block(nn.Conv2d(in_channels, features, 3, stride=2, padding=1))]
            + [block(nn.Conv2d(features, features, 3, padding=1)) for _ in range(layers - 1)])
        self.decoder = nn.ModuleList(
            [block(nn.ConvTranspose2d(features, features, 3, padding=1))
             for _ in range(layers - 1)])
        self.last = nn.ConvTranspose2d(features, in_channels, 3, stride=2, padding=1)
        # Encoder outputs kept for the symmetric skips: after every second conv, at most
        # ceil(layers / 2) - 1 of them (REDNet's rule).
        self.n_skips = math.ceil(layers / 2) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        skips: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.encoder):
            h = self._block(layer, h)
            if (i + 1) % 2 == 0 and len(skips) < self.n_skips:
                skips.append(h)
        used = 0
        for i, layer in enumerate(self.decoder):
            h = self._block(layer, h)
            if (i + 1 + self.layers) % 2 == 0 and used < len(skips):
                used += 1
                h = F.relu(h + skips[-used])
        # output_size makes the stride-2 transposed conv undo the stride-2 conv for odd sizes too.
        size = residual.shape[-2:]
        h = self.last(h, output_size=size) if self.training else _subpixel_last(self.last, h, size)
        return F.relu(h + residual)

    def _block(self, block: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        """One conv, ReLU, BatchNorm block. In eval mode it takes a faster, equivalent path: the
        purifier runs the DAE forward and backward 13 times per image, and on CPU PyTorch's
        stride-1 transposed convolution and eval-mode BatchNorm backward are several times
        slower than a plain convolution and a per-channel affine map."""
        if self.training:
            return block(h)
        conv, _, bn = block
        if isinstance(conv, nn.ConvTranspose2d) and conv.stride == (1, 1):
            # A stride-1 transposed conv is a conv with the kernel flipped and in/out swapped.
            weight = conv.weight.flip(2, 3).transpose(0, 1)
            h = F.conv2d(h, weight, conv.bias, padding=conv.padding)
        else:
            h = conv(h)
        h = F.relu(h)
        scale, shift = batchnorm_affine(bn)
        # in h's dtype: under bf16 autocast, fp32 statistics would promote the activations to
        # fp32 and the next convolution would cast them back (twice the memory traffic)
        return h * scale.to(h.dtype).view(1, -1, 1, 1) + shift.to(h.dtype).view(1, -1, 1, 1)


def _subpixel_last(deconv: nn.ConvTranspose2d, h: torch.Tensor, size: torch.Size
                   ) -> torch.Tensor:
    """REDNet's last layer, a 3x3 transposed conv of stride 2 and padding 1, as a 2x2 conv that
    computes the four output phases followed by a pixel shuffle (sub-pixel convolution: the same
    sums in another order). On a CPU PyTorch runs this transposed conv, forward and backward,
    about 2.5 times slower than the equivalent conv (``benchmarks/throughput.py``'s APuDAE row
    runs it 13 times per purification).

    Shapes: h (N, F, H, W) -> (N, C, size[0], size[1]) with size in {2H - 1, 2H} per side.
    """
    if (deconv.stride, deconv.kernel_size, deconv.padding, deconv.dilation, deconv.groups) != \
            ((2, 2), (3, 3), (1, 1), (1, 1), 1):
        return deconv(h, output_size=size)
    # Output row 2m takes tap 1 of input row m; row 2m + 1 takes tap 2 of row m and tap 0 of
    # row m + 1. taps[phase][offset into the 2x2 window] indexes the taps, padded with a zero 4th.
    w = F.pad(deconv.weight, (0, 1, 0, 1))  # (F, C, 4, 4), taps 0-2 and a zero
    taps = torch.tensor([[1, 3], [2, 0]], device=w.device)
    # (F, C, a, di, b, dj) -> (C, a, b, F, di, dj) -> (C * 4, F, 2, 2): pixel_shuffle's order
    kernel = w[:, :, taps[:, :, None, None], taps[None, None]]
    kernel = kernel.permute(1, 2, 4, 0, 3, 5).reshape(-1, w.shape[0], 2, 2)
    bias = deconv.bias.repeat_interleave(4) if deconv.bias is not None else None
    out = F.pixel_shuffle(F.conv2d(F.pad(h, (0, 1, 0, 1)), kernel, bias), 2)
    return out[..., :size[0], :size[1]]
