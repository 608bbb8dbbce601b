"""S2SNets: structure-to-signal autoencoders (Folz, Palacio, Hees, Borth and Dengel, "Adversarial
Defense based on Structure-to-Signal Autoencoders", arXiv 1803.07994, WACV 2020).

The autoencoder is SegNet-shaped (Badrinarayanan et al. 2017): an encoder of 3x3 conv +
BatchNorm + ReLU stages, each closed by a 2x2 max-pool that keeps its argmax indices, and a
mirrored decoder that max-unpools by those indices, runs the mirrored convs and ends in a 1x1
conv to the image's channels. There is no narrow latent vector: the pooling indices carry the
image's *structure*, and the decoder re-creates the *signal* from it.

Training has two stages (:meth:`S2SNet.fit`):

1. unsupervised: the whole autoencoder learns to reconstruct images (MSE);
2. signal: encoder and classifier are frozen (weights and BatchNorm statistics), and only the
   decoder is fine-tuned with the classifier's cross-entropy on the reconstruction,
   ``CE(f(D(E(x))), t)``, where the target ``t`` is the label or the classifier's own prediction
   on ``x`` (no labels needed), or (``distill``, not in the paper) ``KL(f(x) || f(D(E(x))))``
   with the classifier's softmax on ``x`` as a soft target. The decoder then re-creates only the
   signal the classifier uses.

The defense is ``x -> f(D(E(x)))``. The whole map is differentiable (max-pooling and unpooling
pass gradients to the argmax positions), so the paper's white-box setting applies exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..utils import channels_last_input
from .base import Purifier, batchnorm_affine
from .s2snet_training import (check_target, remember_stage1, split_settings, stage1_done,
                              stage1_key)

if TYPE_CHECKING:
    from ..data import ImageDataset
    from ..training.settings import TrainSettings

# Encoder stages as (channels, convs) at width 64, for the image sizes the issue names.
# 224 px is SegNet's VGG-16 encoder (13 convs, 64 to 512 channels, 5 pooling stages); 32 px keeps
# VGG-16's first three stages (32 -> 16 -> 8 -> 4); 28 px its first two (28 -> 14 -> 7).
PRESETS: dict[int, tuple[tuple[int, int], ...]] = {
    28: ((64, 2), (128, 2)),
    32: ((64, 2), (128, 2), (256, 3)),
    224: ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
}

def preset_for(image_size: int) -> tuple[tuple[int, int], ...]:
    """Encoder stages for ``image_size`` px: the 28, 32 or 224 px preset, or for other sizes the
    preset of the nearest of those three (28 up to 30 px, 32 up to 128 px, 224 beyond)."""
    if image_size in PRESETS:
        return PRESETS[image_size]
    return PRESETS[28 if image_size <= 30 else 32 if image_size <= 128 else 224]


class ConvBNReLU(nn.Module):
    """3x3 conv + BatchNorm + ReLU, SegNet's building block.

    In eval mode the BatchNorm is folded into the conv (w' = w g / sqrt(v + e), b' = (b - m) g /
    sqrt(v + e) + beta): the same function and the same input gradients, one pass over the
    activations instead of three (with channels-last activations and the contraction head, 1.2x
    to 1.4x faster white-box gradients on CPU: ``benchmarks/bench_s2snet.py``).

    Shapes: (N, cin, H, W) -> (N, cout, H, W).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.relu(self.bn(self.conv(x)))
        scale, _ = batchnorm_affine(self.bn)
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        # (b - mean) * scale + beta, not b * scale + shift: the same value, but this order of
        # float operations is the one the documented S2SNet numbers were measured with, and
        # the white-box rows through its masked gradient move with the last bit
        bias = (self.conv.bias - self.bn.running_mean) * scale + self.bn.bias
        return F.relu(F.conv2d(x, weight, bias, padding=1))


def _plain_stage(stage: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """A stage's blocks as conv, BatchNorm, ReLU in NCHW (no folding): the reference path."""
    for block in stage:
        h = F.relu(block.bn(F.conv2d(h, block.conv.weight.contiguous(), block.conv.bias,
                                     padding=1)))
    return h


def _stage(cin: int, cout: int, convs: int, mid: int | None = None) -> nn.Sequential:
    """``convs`` ConvBNReLU blocks: cin -> mid -> ... -> mid -> cout (mid defaults to cout)."""
    mid = cout if mid is None else mid
    widths = [cin] + [mid] * (convs - 1) + [cout]
    return nn.Sequential(*[ConvBNReLU(a, b) for a, b in zip(widths[:-1], widths[1:])])


class S2SNet(Purifier):
    """Structure-to-signal autoencoder (purifier name ``s2snet``).

    Args:
        in_channels: C of the images (1 for MNIST, 3 for CIFAR-10 / ImageNet).
        image_size: H = W the network is built for; chooses the depth preset (28 px: 2 pooling
            stages, 32 px: 3, 224 px: 5 as in SegNet). Other sizes work as long as every pooling
            stage sees at least 2 px (odd sizes are fine: unpooling restores the exact size).
        width: channels of the first stage; the preset's channels scale with ``width / 64``
            (64 gives VGG-16's 64..512).
        convs: 3x3 convs per encoder stage (and per mirrored decoder stage) instead of the
            preset's 2 or 3; 1 makes the quick, CPU-cheap variant of the demo.
        stages: explicit encoder stages ``[[channels, convs], ...]`` instead of the preset
            (used as given; ``width`` and ``convs`` are then ignored).

    Shapes:
        forward: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1] (a sigmoid after the 1x1
        conv keeps the range while staying differentiable).

    Raises:
        ConfigError: width or convs < 1, empty or malformed ``stages``, or an image too small
            for the number of pooling stages.
        InputError: (from forward) images that are not float (N, C, H, W) in [0, 1] with C
            channels.
    """

    trainable = True
    needs_classifier = True
    reconstructs = True
    paper = "Folz, Palacio, Hees, Borth and Dengel, WACV 2020 (S2SNets), arXiv 1803.07994"

    def __init__(self, in_channels: int = 1, image_size: int = 28, width: int = 64,
                 convs: int | None = None, stages: Sequence[Sequence[int]] | None = None
                 ) -> None:
        super().__init__(in_channels)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"s2snet needs in_channels (its first conv's input); got "
                              f"{in_channels!r}")
        if width < 1 or (convs is not None and convs < 1):
            raise ConfigError(f"s2snet width and convs must be >= 1; got width={width}, "
                              f"convs={convs}")
        if stages is None:
            plan = [(max(1, c * width // 64), convs or n) for c, n in preset_for(image_size)]
        else:
            try:
                plan = [(int(c), int(n)) for c, n in stages]
            except (TypeError, ValueError):
                raise ConfigError("s2snet stages must be a list of [channels, convs] pairs; "
                                  f"got {stages!r}") from None
            if not plan or any(c < 1 or n < 1 for c, n in plan):
                raise ConfigError(f"s2snet stages need >= 1 stage of >= 1 channel and >= 1 "
                                  f"conv each; got {stages!r}")
        if image_size < 2 ** len(plan):
            raise ConfigError(f"s2snet with {len(plan)} pooling stages needs images of at least "
                              f"{2 ** len(plan)} px; image_size is {image_size}")
        self.image_size = image_size
        self.plan = plan
        enc, dec = [], []
        cin = in_channels
        for c, n in plan:
            enc.append(_stage(cin, c, n))
            cin = c
        # decoder stage i mirrors encoder stage i: n convs at c channels, the last one mapping to
        # the channels of the stage above (SegNet); the top stage stays at its own width
        for i in reversed(range(len(plan))):
            c, n = plan[i]
            dec.append(_stage(c, plan[i - 1][0] if i > 0 else c, n, mid=c))
        self.encoder = nn.ModuleList(enc)
        self.decoder = nn.ModuleList(dec)
        self.head = nn.Conv2d(plan[0][0], in_channels, 1)
        # channels-last activations suit oneDNN's CPU convolutions (and cuDNN's) better
        self.to(memory_format=torch.channels_last)

    # -- the autoencoder ------------------------------------------------------------------------

    def encode(self, x: torch.Tensor
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Size]]:
        """Encoder: the deepest pooled feature maps, the argmax indices of every pooling stage
        (the "structure") and the pre-pooling sizes (so unpooling restores odd sizes).

        Shapes: x (N, C, H, W) in [0, 1] -> (N, c_last, H / 2^k, W / 2^k), k index tensors.
        """
        indices, sizes = [], []
        h = channels_last_input(x)  # the input gradient still leaves in NCHW
        for stage in self.encoder:
            h = stage(h)
            sizes.append(h.shape[-2:])
            h, idx = F.max_pool2d(h, 2, 2, return_indices=True)
            indices.append(idx)
        return h, indices, sizes

    def decode(self, h: torch.Tensor, indices: list[torch.Tensor], sizes: list[torch.Size]
               ) -> torch.Tensor:
        """Decoder: max-unpool by the encoder's indices, mirrored convs, 1x1 conv, sigmoid.

        Shapes: the outputs of :meth:`encode` -> (N, C, H, W) in [0, 1].
        """
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes)):
            h = F.max_unpool2d(h, idx, 2, 2, output_size=size)
            h = stage(h)
        # the 1x1 conv as a channel contraction: the same map, but oneDNN's kernels are slow for
        # a convolution with 1 or 3 output channels
        out = torch.einsum("nchw,oc->nohw", h, self.head.weight[:, :, 0, 0])
        return torch.sigmoid(out + self.head.bias.view(1, -1, 1, 1)).contiguous()

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))

    def reference_purify(self, x: torch.Tensor) -> torch.Tensor:
        """The same map computed plainly, layer by layer in NCHW (conv, BatchNorm, ReLU; 1x1
        conv head): the yardstick the fast path of :meth:`purify` is tested and benchmarked
        against. Shapes as :meth:`purify`."""
        indices, sizes = [], []
        h = x.contiguous()
        for stage in self.encoder:
            h = _plain_stage(stage, h)
            sizes.append(h.shape[-2:])
            h, idx = F.max_pool2d(h, 2, 2, return_indices=True)
            indices.append(idx)
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes)):
            h = _plain_stage(stage, F.max_unpool2d(h, idx, 2, 2, output_size=size))
        return torch.sigmoid(F.conv2d(h, self.head.weight.contiguous(), self.head.bias))

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per image (N,), the stage-1 loss."""
        return (self.purify(x) - x).pow(2).flatten(1).mean(1)

    # -- two-stage training -----------------------------------------------------------------------

    def fit(self, train: ImageDataset, settings: TrainSettings,
            classifier: nn.Module | None = None, device: torch.device | str = "cpu"
            ) -> dict[str, Any]:
        """Two-stage training: stage 1 reconstructs (MSE) with ``settings``; stage 2 fine-tunes
        the decoder against the frozen ``classifier`` with the options in ``settings.extra``.

        Args:
            train: training split (uint8 images, labels).
            settings: stage 1's epochs, batch size, learning rate, optimiser, schedule,
                max_images, seed. ``settings.extra`` holds stage 2's options, each defaulting to
                stage 1's value: ``stage2_epochs``, ``stage2_lr``, ``stage2_batch_size``,
                ``stage2_max_images``, ``stage2_schedule``, ``stage2_weight_decay``, and
                ``target``: ``label`` (default, the paper), ``prediction`` (the classifier's
                own prediction on the clean image, so no labels are needed) or ``distill``
                (its softmax on the clean image as a soft target, KL divergence; no labels).
            classifier: the defended classifier, (N, C, H, W) in [0, 1] -> logits (N, K).
            device: where to train.

        Returns:
            ``{"stage1": {...}, "stage2": {...}, "final_loss", "target", ...}``: the loop's
            metrics per stage and the reconstruction error after each stage.

        Raises:
            ConfigError: no classifier, unknown keys in ``settings.extra``, bad values.
        """
        if classifier is None:
            raise ConfigError("s2snet stage 2 trains the decoder against the defended "
                              "classifier; give one (--classifier DIR on the command line)")
        stage1, stage2, target = split_settings(settings)
        m1 = self._stage1_reused_or_trained(train, stage1, device)
        m2 = self.fit_stage2(train, stage2, classifier, target, device)
        return {"final_loss": m2["final_loss"], "target": target,
                "stage1_mse": m1["mse"], "stage2_mse": m2["mse"],
                "seconds": round(m1["seconds"] + m2["seconds"], 2),
                "steps": m1["steps"] + m2["steps"], "stage1": m1, "stage2": m2}

    def _stage1_reused_or_trained(self, train: ImageDataset, settings: TrainSettings,
                                  device: torch.device | str) -> dict[str, Any]:
        """Stage 1, or its result from earlier in this process.

        Stage 1 never sees the classifier, so with several classifiers in one run (one S2SNet
        per classifier) the paper's setup is one stage-1 autoencoder shared by all of them. The
        result is a function of the initial weights, the stage-1 settings and the training
        images, so it is kept in memory under a hash of exactly those and copied, not retrained.
        """
        key = stage1_key(self, train, settings)
        done = stage1_done(key)
        if done is not None:
            state, metrics = done
            self.load_state_dict(state)
            self.to(device).eval()
            return {**metrics, "seconds": 0.0, "reused": True}
        metrics = self.fit_stage1(train, settings, device)
        remember_stage1(key, self.state_dict(), metrics)
        return metrics

    def fit_stage1(self, train: ImageDataset, settings: TrainSettings,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
        """Stage 1: the whole autoencoder learns to reconstruct clean images (MSE).

        Returns:
            The loop's metrics plus ``mse``, the reconstruction MSE afterwards on the first
            1,000 training images.
        """
        from ..training.loops import run_minibatches

        self.to(device)
        metrics = run_minibatches(self.parameters(), lambda x, y: F.mse_loss(self.purify(x), x),
                                  train, settings, desc="s2snet stage 1 (reconstruction)",
                                  device=device, modules=[self])
        return {**metrics, "mse": self._probe_mse(train, device)}

    def fit_stage2(self, train: ImageDataset, settings: TrainSettings, classifier: nn.Module,
                   target: str = "label", device: torch.device | str = "cpu") -> dict[str, Any]:
        """Stage 2: freeze the encoder and the classifier, fine-tune the decoder (and the 1x1
        head) with ``CE(classifier(D(E(x))), t)``.

        The encoder and the classifier run in eval mode with ``requires_grad`` off, so their
        weights *and* BatchNorm running statistics stay bit-identical; the encoder runs without
        a graph (the authors detach its outputs).

        Args:
            train: training split.
            settings: stage 2's epochs, batch size, learning rate, ...
            classifier: the defended classifier, (N, C, H, W) in [0, 1] -> logits (N, K).
            target: ``label`` (t = y), ``prediction`` (t = argmax classifier(x), no labels) or
                ``distill`` (KL divergence to softmax classifier(x), no labels).

        Returns:
            The loop's metrics plus ``mse``, the reconstruction MSE afterwards on the first
            1,000 training images.

        Raises:
            ConfigError: unknown target.
        """
        from ..training.loops import frozen, run_minibatches

        check_target(target)
        self.to(device)
        classifier.to(device)

        def signal_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                code = self.encode(x)
                t = y if target == "label" else classifier(x)
            logits = classifier(self.decode(*code))
            if target == "distill":  # soft target: KL(softmax f(x) || softmax f(D(E(x))))
                return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(t, 1), log_target=True,
                                reduction="batchmean")
            return F.cross_entropy(logits, t if target == "label" else t.argmax(1))

        # eval mode for the frozen parts: BatchNorm uses, and does not update, its statistics
        try:
            with frozen(classifier, *self.frozen_modules()):
                metrics = run_minibatches(
                    [p for m in self.stage2_modules() for p in m.parameters()], signal_loss,
                    train, settings, desc=f"s2snet stage 2 (signal, target={target})",
                    device=device, modules=self.stage2_modules())
        finally:
            self.eval()
        return {**metrics, "mse": self._probe_mse(train, device)}

    def stage2_modules(self) -> list[nn.Module]:
        """The modules stage 2 trains: the decoder stages and the final 1x1 conv."""
        return [self.decoder, self.head]

    def frozen_modules(self) -> list[nn.Module]:
        """The part of the autoencoder stage 2 freezes: the encoder (weights and BatchNorm
        running statistics)."""
        return [self.encoder]

    @torch.no_grad()
    def _probe_mse(self, data: ImageDataset, device: torch.device | str, n: int = 1000
                   ) -> float:
        """Mean reconstruction MSE on the first ``n`` images of ``data`` (eval mode)."""
        was_training = self.training
        self.eval()
        x, _ = data.tensors(slice(0, n), device)
        mse = float(self.reconstruction_error(x).mean())
        self.train(was_training)
        return mse
