"""Training loops: one generic minibatch loop, used for classifiers and for purifiers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageDataset
from ..utils import batches, progress
from .settings import TrainSettings


def make_optimizer(params: Iterable[nn.Parameter], settings: TrainSettings
                   ) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True,
                               weight_decay=settings.weight_decay)
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _augmenter(settings: TrainSettings, shape: tuple[int, int, int]) -> nn.Module | None:
    if not settings.augment:
        return None
    import kornia.augmentation as K

    return nn.Sequential(K.RandomCrop(shape[1:], padding=4, padding_mode="reflect"),
                         K.RandomHorizontalFlip())


def run_minibatches(params: Iterable[nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor],
                    torch.Tensor], train: ImageDataset, settings: TrainSettings, desc: str,
                    device: torch.device | str = "cpu", modules: Iterable[nn.Module] = ()
                    ) -> dict[str, Any]:
    """Minimise ``loss_fn(x, y)`` over minibatches of ``train``.

    Args:
        params: parameters to optimise (those with requires_grad).
        loss_fn: clean images (B, C, H, W) in [0, 1], labels (B,) -> scalar loss.
        train: training split; truncated to ``settings.max_images``.
        settings: epochs, batch size, optimiser, schedule, augmentation, seed.
        desc: progress-bar label.
        modules: modules to put in train mode while training (eval mode afterwards).

    Returns:
        ``{"final_loss", "steps", "seconds", "images"}``.
    """
    data = train.take(settings.max_images)
    n = len(data)
    steps_per_epoch = (n + settings.batch_size - 1) // settings.batch_size
    total = steps_per_epoch * settings.epochs
    opt = make_optimizer(params, settings)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
             if settings.schedule == "cosine" else None)
    augment = _augmenter(settings, data.image_shape)
    gen = torch.Generator().manual_seed(settings.seed)
    modules = list(modules)
    for m in modules:
        m.train()
    start, last, ema = time.perf_counter(), float("nan"), None
    bar = progress(range(total), desc=desc, total=total, unit="step")
    step_iter = iter(bar)
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=gen)
        for sl in batches(n, settings.batch_size):
            next(step_iter, None)
            idx = order[sl]
            x = data.images[idx].to(device=device, dtype=torch.float32).div_(255.0)
            y = data.labels[idx].to(device)
            if augment is not None:
                x = augment(x).clamp_(0, 1)
            loss = loss_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            last = float(loss.detach())
            ema = last if ema is None else 0.95 * ema + 0.05 * last
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
    for m in modules:
        m.eval()
    return {"final_loss": last, "smoothed_loss": ema, "steps": total,
            "images": n, "seconds": round(time.perf_counter() - start, 2)}


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageDataset, batch_size: int = 500,
             device: torch.device | str = "cpu", desc: str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``data``."""
    model.eval()
    correct = 0
    slices = list(batches(len(data), batch_size))
    for sl in progress(slices, desc=desc or "accuracy", unit="batch"):
        x, y = data.tensors(sl, device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(data), 1)


def fit_classifier(model: nn.Module, train: ImageDataset, settings: TrainSettings,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train a classifier with cross-entropy. Returns training metrics."""
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
    with frozen(classifier):
        return run_minibatches(
            purifier.parameters(),
            lambda x, y: purifier.training_loss(x, y, classifier), train, settings,
            desc=f"train {type(purifier).__name__}", device=device, modules=[purifier])