"""airbench's training recipe (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv
2404.00498, 2024) for :class:`aepurify.models.AirBench`, over the shared minibatch loop.

What it adds to the plain loop (:func:`aepurify.training.loops.run_minibatches`), each credited
by the paper's ablations with part of its 10-epoch schedule:

- the patch-whitening convolution set from the first 5,000 training images before training, its
  bias trained for the first 3 epochs only (then at a zero learning rate);
- Nesterov SGD (momentum 0.85) in airbench's conventions: ``settings.lr`` is the learning rate
  per 1,024 examples (11.5) and ``settings.weight_decay`` is decoupled from it (0.0153); the
  BatchNorm biases learn at 64x the rate (``bias_scaler``);
- a triangular learning-rate schedule (0.2 -> 1 at 23 % of the steps -> 0.07);
- lookahead: every 5 steps the weights move to an exponential moving average of themselves
  whose decay rises as 0.95^5 (t / T)^3, and the last step copies the average in;
- label smoothing 0.2;
- augmentation: translation by up to 2 px (reflect padding) and alternating flips.

The loss is the batch mean with the learning rate and weight decay rescaled by the batch size,
the same updates as airbench's summed loss (and what DistributedDataParallel averages right).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageDataset
from ..errors import ConfigError
from .loops import LoopHooks, run_minibatches
from .settings import TrainSettings

# settings.extra options of the recipe and their defaults (airbench94's hyper-parameters)
EXTRA_DEFAULTS: dict[str, Any] = {
    "momentum": 0.85, "bias_scaler": 64.0, "label_smoothing": 0.2, "whiten_bias_epochs": 3,
    "translate": 2, "alternate_flips": True, "lookahead": True, "whitening_images": 5000}
LOOKAHEAD_EVERY = 5


def triangle(steps: int, start: float, end: float, peak: float) -> torch.Tensor:
    """Piecewise-linear factors (steps + 1,): ``start`` at step 0, 1 at ``peak * steps``,
    ``end`` at the last step."""
    top = int(peak * steps)
    t = torch.arange(steps + 1, dtype=torch.float64)
    rise = start + (1 - start) * t / max(top, 1)
    fall = 1 + (end - 1) * (t - top) / max(steps - top, 1)
    return torch.where(t <= top, rise, fall).float()


class Lookahead:
    """airbench's lookahead state: an exponential moving average of the floating-point state
    (weights and BatchNorm statistics) that the model is reset to at every update."""

    def __init__(self, model: nn.Module) -> None:
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()
                        if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """average <- decay * average + (1 - decay) * model; model <- average."""
        for k, v in model.state_dict().items():
            if k in self.average:
                self.average[k].lerp_(v, 1 - decay)
                v.copy_(self.average[k])


def recipe_options(settings: TrainSettings) -> dict[str, Any]:
    """The recipe's ``settings.extra`` options, defaults filled in.

    Raises:
        ConfigError: an unknown option.
    """
    unknown = sorted(set(settings.extra) - set(EXTRA_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown airbench training option(s) {unknown}; use "
                          f"{sorted(EXTRA_DEFAULTS)}")
    return {**EXTRA_DEFAULTS, **settings.extra}


def fit_airbench(model: nn.Module, train: ImageDataset, settings: TrainSettings,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train an :class:`~aepurify.models.AirBench` with airbench's recipe (module docstring).

    Args:
        model: the classifier (has ``init_whitening`` and ``whitening``).
        train: training split, uint8 images; truncated to ``settings.max_images``.
        settings: epochs, batch size, ``lr`` (per 1,024 examples), ``weight_decay``
            (decoupled), augment, seed, precision; ``extra``: :data:`EXTRA_DEFAULTS`.
        device: where to train.

    Returns:
        The loop's metrics plus ``recipe``.

    Raises:
        ConfigError: an unknown option, or an optimizer other than sgd.
    """
    opts = recipe_options(settings)
    if settings.optimizer != "sgd":
        raise ConfigError("the airbench recipe trains with Nesterov SGD; set optimizer: sgd")
    device = torch.device(device)
    model.to(device)
    data = train.take(settings.max_images)
    x, _ = data.tensors(slice(0, min(int(opts["whitening_images"]), len(data))), device)
    model.init_whitening(x)  # type: ignore[operator]
    del x
    per_epoch = -(-len(data) // settings.batch_size)
    steps = per_epoch * settings.epochs
    momentum, batch = float(opts["momentum"]), settings.batch_size
    kilostep = 1024 * (1 + 1 / (1 - momentum))  # steps sized like gradients, whatever momentum
    lr = settings.lr / kilostep * batch  # x batch: a mean loss in place of airbench's sum
    decay = settings.weight_decay * batch / kilostep  # per step, decoupled from the rate
    whiten_bias = model.whitening.bias  # type: ignore[union-attr]
    biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)
              and m.bias is not None and m.bias.requires_grad]
    ids = {id(p) for p in [*biases, whiten_bias]}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    bias_lr = lr * float(opts["bias_scaler"])
    optimizer = torch.optim.SGD(
        [{"params": biases, "lr": bias_lr, "weight_decay": decay / bias_lr},
         {"params": others, "lr": lr, "weight_decay": decay / lr},
         {"params": [whiten_bias], "lr": lr, "weight_decay": decay / lr}],
        momentum=momentum, nesterov=True)
    factors = triangle(steps, 0.2, 0.07, 0.23)
    # the whitening bias stops learning after its epochs (airbench freezes it; a zero rate
    # moves it no more and keeps the parameter set fixed for DistributedDataParallel)
    frozen_from = per_epoch * int(opts["whiten_bias_epochs"])
    whiten_factors = torch.where(torch.arange(steps + 1) < frozen_from, factors, 0.0)
    lookahead = Lookahead(model) if opts["lookahead"] else None
    average_decay = 0.95 ** 5 * (torch.arange(steps + 1) / max(steps, 1)) ** 3

    def after_step(done: int) -> None:
        if lookahead is None:
            return
        if done == steps:  # the last step: the average becomes the model
            lookahead.update(model, decay=1.0)
        elif done % LOOKAHEAD_EVERY == 0:
            lookahead.update(model, decay=float(average_decay[done]))

    hooks = LoopHooks(optimizer=optimizer,
                      lr_factors=torch.stack([factors, factors, whiten_factors]),
                      after_step=after_step, padding=int(opts["translate"]),
                      alternate_flips=bool(opts["alternate_flips"]))
    smoothing = float(opts["label_smoothing"])
    metrics = run_minibatches(
        [*biases, *others, whiten_bias],
        lambda x, y: F.cross_entropy(model(x), y, label_smoothing=smoothing), train, settings,
        desc=f"train {type(model).__name__}", device=device, modules=[model], hooks=hooks)
    return {**metrics, "recipe": "airbench"}
