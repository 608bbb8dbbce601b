"""Training loops: one generic minibatch loop, used for classifiers and for purifiers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import inputs_validated
from ..data import ImageDataset
from ..precision import autocast, channels_last_weights, fast_layout
from ..utils import batches, progress, progress_bar
from .augment import CropFlipParams, crop_flip, draw_crop_flip
from .data_parallel import active_data_parallel
from .settings import TrainSettings


def make_optimizer(params: Iterable[nn.Parameter], settings: TrainSettings, fused: bool = False
                   ) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, nesterov) or Adam over the parameters that require gradients;
    ``fused`` picks PyTorch's one-kernel implementation (CUDA)."""
    params = [p for p in params if p.requires_grad]
    kwargs = {"fused": True} if fused else {}
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True,
                               weight_decay=settings.weight_decay, **kwargs)
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay, **kwargs)


# Read the smoothed loss back to the host (a device sync) for the progress bar every this many
# steps, not every step.
LOSS_READ_EVERY = 25
# Keep the training images on the accelerator when they take at most this share of its free
# memory (as uint8: CIFAR-10's 50,000 images are 154 MB).
RESIDENT_SHARE = 0.25
AUGMENT_PADDING = 4


def _resident(images: torch.Tensor, device: torch.device) -> bool:
    """Whether the uint8 training images should live on ``device`` for the whole run."""
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= RESIDENT_SHARE * free


@contextmanager
def _accelerator_flags(device: torch.device, precision: str) -> Iterator[None]:
    """cuDNN autotuning and, in fp32, TF32 matrix units for the block, restored afterwards (the
    attacks that follow run in true fp32)."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark = True
    if precision == "fp32":
        cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


@dataclass
class LoopHooks:
    """What a training recipe (:mod:`aepurify.training.airbench`) changes in
    :func:`run_minibatches`; the defaults are the plain loop's.

    Attributes:
        optimizer: used instead of :func:`make_optimizer` (parameter groups of their own).
        lr_factors: (steps + 1,) multipliers of every group's learning rate per step, or
            (groups, steps + 1) one row per parameter group (``LambdaLR``), instead of
            ``settings.schedule``.
        after_step: called with the number of steps done after each optimiser step.
        padding: pixels of reflect padding of the random-crop augmentation (a translation of
            up to that many pixels).
        alternate_flips: flip each image at random in the first epoch, then the opposite way
            of the epoch before (airbench's alternating flip: every image seen both ways in
            any two epochs), instead of a fresh coin per epoch.
    """

    optimizer: torch.optim.Optimizer | None = None
    lr_factors: torch.Tensor | None = None
    after_step: Callable[[int], None] | None = None
    padding: int = AUGMENT_PADDING
    alternate_flips: bool = False


def run_minibatches(params: Iterable[nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor],
                    torch.Tensor], train: ImageDataset, settings: TrainSettings, desc: str,
                    device: torch.device | str = "cpu", modules: Iterable[nn.Module] = (),
                    hooks: LoopHooks | None = None) -> dict[str, Any]:
    """Minimise ``loss_fn(x, y)`` over minibatches of ``train``.

    Inside :func:`aepurify.training.data_parallel.data_parallel` (torchrun) every rank trains
    on its part of each batch and DistributedDataParallel averages the gradients (see that
    module); the returned losses are then the global batch's.

    On CUDA the loop runs the way a hand-written fast loop does (``benchmarks/throughput.py``
    measures it against one): the uint8 images stay on the device when they fit
    (:data:`RESIDENT_SHARE` of free memory), augmentation runs there
    (:mod:`aepurify.training.augment`), the loss runs under bf16 autocast
    (``settings.precision``), activations and weights are channels-last, cuDNN autotunes, and the
    loss is read back to the host every :data:`LOSS_READ_EVERY` steps only. On a CPU with bf16
    units (``precision: auto`` resolves to ``bf16`` there, :mod:`aepurify.precision`) the loss
    runs under bf16 autocast with channels-last weights and activations too; in fp32 a CPU
    computes what it always did.
    Inputs are decoded uint8 data, so the models skip their per-call range check
    (:func:`aepurify.checks.inputs_validated`).

    Args:
        params: parameters to optimise (those with requires_grad).
        loss_fn: clean images (B, C, H, W) in [0, 1], labels (B,) -> scalar loss.
        train: training split; truncated to ``settings.max_images``.
        settings: epochs, batch size, optimiser, schedule, augmentation, seed, precision,
            compile.
        desc: progress-bar label.
        device: where to train.
        modules: modules to put in train mode while training (eval mode afterwards); their
            weights are channels-last while training under bf16 or on CUDA.
        hooks: a recipe's optimiser, schedule, callbacks and augmentation (default: none).

    Returns:
        ``{"final_loss", "smoothed_loss", "steps", "seconds", "images", "precision"}``.
    """
    device = torch.device(device)
    settings = settings.resolved(device)
    data = train.take(settings.max_images)
    n = len(data)
    steps_per_epoch = (n + settings.batch_size - 1) // settings.batch_size
    total = steps_per_epoch * settings.epochs
    modules = list(modules)
    params = [p for p in params if p.requires_grad]
    accelerated = device.type == "cuda"
    fast = fast_layout(settings.precision, device)  # channels-last weights and activations
    dp = active_data_parallel()
    hooks = hooks or LoopHooks()
    opt = hooks.optimizer or make_optimizer(params, settings, fused=accelerated)
    if hooks.lr_factors is not None:
        rows = hooks.lr_factors.view(-1, hooks.lr_factors.shape[-1]).expand(
            len(opt.param_groups), -1).tolist()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [lambda i, row=row: row[min(i, len(row) - 1)] for row in rows])
    else:
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
                 if settings.schedule == "cosine" else None)
    images, labels = data.images, data.labels
    resident = _resident(images, device)  # free memory differs by GPU: all ranks must agree
    if dp is not None:
        resident = dp.all_agree(resident, device)
    if resident:
        images, labels = images.to(device), labels.to(device)
    elif accelerated:
        images, labels = images.pin_memory(), labels.pin_memory()
    gen = torch.Generator().manual_seed(settings.seed)  # batch order, on the CPU as always
    aug_gen = torch.Generator(device=images.device).manual_seed(settings.seed)
    step_fn = torch.compile(loss_fn) if settings.compile else loss_fn
    base_flips = (torch.rand(n, generator=aug_gen, device=images.device) < 0.5
                  if settings.augment and hooks.alternate_flips else None)
    done = 0
    weight = 1.0
    for m in modules:
        m.train()
    start = time.perf_counter()
    last = ema = None
    bar = progress_bar(desc, total=total, unit="step")
    with inputs_validated(), _accelerator_flags(device, settings.precision), \
            channels_last_weights(modules, fast):
        if dp is not None:  # after the layout change: DDP's gradient buckets follow it
            step_fn = dp.wrap(params, step_fn, device)
        for epoch in range(settings.epochs):
            order = torch.randperm(n, generator=gen).to(images.device)
            for step, sl in enumerate(batches(n, settings.batch_size)):
                idx = order[sl]
                # drawn for the whole batch on every rank, so a rank's part gets the draws a
                # single process gives those images
                draw = (draw_crop_flip(len(idx), hooks.padding, aug_gen, images.device)
                        if settings.augment else None)
                if draw is not None and base_flips is not None:
                    draw = CropFlipParams(draw.offsets, base_flips[idx] ^ bool(epoch % 2))
                if dp is not None:
                    part, weight = dp.share(len(idx))
                    idx = idx[part]
                    if draw is not None:
                        draw = CropFlipParams(draw.offsets[part], draw.flips[part])
                x, y = images[idx], labels[idx]
                if draw is not None:
                    x = crop_flip(x, draw, hooks.padding)
                x = x.to(device, non_blocking=True)
                x = (x.contiguous(memory_format=torch.channels_last) if fast
                     else x.contiguous()).float().div_(255.0)
                y = y.to(device, non_blocking=True)
                with autocast(settings.precision, device):
                    loss = step_fn(x, y) * weight if dp is not None else step_fn(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                done += 1
                if hooks.after_step is not None:
                    hooks.after_step(done)
                last = loss.detach()
                # the smoothed loss stays on the device: no host sync per step
                ema = last.double() if ema is None else ema.mul_(0.95).add_(last, alpha=0.05)
                bar.update(1)
                if step % LOSS_READ_EVERY == 0 and not bar.disable:
                    bar.set_postfix(loss=f"{float(ema):.4f}", refresh=False)
    bar.close()
    for m in modules:
        m.eval()
    if dp is not None and last is not None:  # the global batch's loss: the ranks' mean
        last, ema = dp.mean(last), dp.mean(ema)
    final = float(last) if last is not None else float("nan")
    smoothed = float(ema) if ema is not None else None
    return {"final_loss": final, "smoothed_loss": smoothed, "steps": total,
            "images": n, "seconds": round(time.perf_counter() - start, 2),
            "precision": settings.precision}


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageDataset, batch_size: int = 500,
             device: torch.device | str = "cpu", desc: str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data`` (decoded uint8 images: the model skips
    its per-call range check, and the count is read back once)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    slices = list(batches(len(data), batch_size))
    with inputs_validated():
        for sl in progress(slices, desc=desc or "accuracy", unit="batch"):
            x, y = data.tensors(sl, device)
            correct += (model(x).argmax(1) == y).sum()
    return int(correct) / max(len(data), 1)


def fit_standard(model: nn.Module, train: ImageDataset, settings: TrainSettings,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train a classifier with cross-entropy (the ``standard`` recipe). Returns training
    metrics."""
    model.to(device)
    return run_minibatches(model.parameters(), lambda x, y: F.cross_entropy(model(x), y), train,
                           settings, desc=f"train {type(model).__name__}", device=device,
                           modules=[model])


@contextmanager
def frozen(*nets: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients for ``nets`` (the networks a loss reads but does not
    train: the defended classifier, a feature extractor, frozen encoder stages) inside the
    block; modes and flags restored after. ``None`` entries and repeats are ignored."""
    saved = []
    unique = {id(net): net for net in nets if net is not None}  # hgd passes one net twice
    for net in unique.values():
        saved.append((net, net.training, [(p, p.requires_grad) for p in net.parameters()]))
        net.eval().requires_grad_(False)
    try:
        yield
    finally:
        for net, mode, flags in saved:
            net.train(mode)
            for p, flag in flags:
                p.requires_grad_(flag)


def fit_purifier(purifier: nn.Module, train: ImageDataset, settings: TrainSettings,
                 classifier: nn.Module | None = None, device: torch.device | str = "cpu"
                 ) -> dict[str, Any]:
    """Train a purifier with its own ``training_loss``; the classifier stays frozen in eval
    mode. Returns training metrics."""
    purifier.to(device)
    if classifier is not None:
        classifier.to(device)
    fast = fast_layout(settings.resolved(device).precision, device)
    with frozen(classifier), channels_last_weights([classifier] if classifier is not None else [],
                                                   fast):
        return run_minibatches(
            purifier.parameters(),
            lambda x, y: purifier.training_loss(x, y, classifier), train, settings,
            desc=f"train {type(purifier).__name__}", device=device, modules=[purifier])