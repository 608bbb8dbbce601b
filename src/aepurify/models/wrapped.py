"""Bring your own classifier (docs/audit.md): any module that maps images
to logits, wrapped so that aepurify's attacks, threat models and reports can use it.

:func:`as_classifier` puts the normalisation inside the module (attacks see pixels in [0, 1]),
reads the number of classes from one forward pass instead of assuming it, and refuses outputs
that are not logits: probabilities (rows in [0, 1] summing to 1, the softmax check of
AutoAttack's ``checks.py``, Croce and Hein, ICML 2020), a wrong shape, NaN. :func:`check_labels`
validates labels against the number of classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..checks import RANGE_TOLERANCE, check_images
from ..errors import ConfigError, InputError

PROBE_IMAGES = 8      # images of a sample batch the probe forward pass reads
PROBE_SEED = 0        # seed of the random probe images built from input_shape
SOFTMAX_SUM_TOL = 1e-3


def check_logits(out: object, n: int, num_classes: int | None = None,
                 what: str = "classifier") -> int:
    """Validate a classifier's output for a batch of ``n`` images; return its number of classes.

    Args:
        out: expected float logits (n, K), K >= 2, finite, not probabilities.
        num_classes: the K the output must have, or None for any.
        what: name used in the error message.

    Raises:
        ConfigError: not a tensor, not (n, K), fewer than 2 classes, another K than
            ``num_classes``, not floating point, NaN or infinite values, or rows in [0, 1]
            that sum to 1 (probabilities from a final softmax instead of logits).
    """
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{what} must return a logits tensor (N, K); got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != n:
        raise ConfigError(f"{what} must return logits of shape (N, K) with N = {n}; got shape "
                          f"{tuple(out.shape)}")
    k = int(out.shape[1])
    if k < 2:
        raise ConfigError(f"{what} returns {k} logit(s) per image; a classifier needs at least 2")
    if num_classes is not None and k != num_classes:
        raise ConfigError(f"{what} returns {k} logits per image, but num_classes={num_classes}")
    if not out.is_floating_point():
        raise ConfigError(f"{what} must return floating-point logits; got dtype {out.dtype}")
    v = out.detach().float()
    if not bool(torch.isfinite(v).all()):
        raise ConfigError(f"{what} returns NaN or infinite logits")
    lo, hi = float(v.min()), float(v.max())
    sums = v.sum(1)
    if lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE and \
            float((sums - 1).abs().max()) <= SOFTMAX_SUM_TOL:
        raise ConfigError(f"{what} returns probabilities (rows in [0, 1] summing to 1), not "
                          "logits: remove its final softmax")
    return k


def check_labels(y: object, num_classes: int, n: int | None = None) -> torch.Tensor:
    """Validate labels and return them unchanged.

    Args:
        y: expected integer class indices (N,) in [0, num_classes).
        num_classes: K, the classifier's number of classes.
        n: the number of images they label, or None.

    Raises:
        InputError: not a tensor, not 1-D, not integers, another count than ``n``, or a label
            outside [0, num_classes).
    """
    if not isinstance(y, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor of shape (N,); got {type(y).__name__}")
    if y.dim() != 1:
        raise InputError(f"labels must have shape (N,); got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices; got dtype {y.dtype}")
    if n is not None and y.shape[0] != n:
        raise InputError(f"got {y.shape[0]} labels for {n} images")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(f"labels must be class indices in [0, {num_classes - 1}] "
                             f"({num_classes} classes); got min {lo}, max {hi}")
    return y


class _Call(nn.Module):
    """A plain callable as a module (so .to() and .eval() reach what they can)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class WrappedClassifier(nn.Module):
    """A user's classifier with the normalisation inside and a known number of classes.

    Made by :func:`as_classifier`; attacks find ``num_classes`` on it (through threat-model
    wrappers too).

    Attributes:
        module: the wrapped module (reads normalised images).
        num_classes: K, read from a forward pass.
        input_shape: (C, H, W) of the probe, or None.

    Shapes:
        (N, C, H, W) in [0, 1] -> logits (N, num_classes).

    Raises:
        InputError: (forward) images not a float (N, C, H, W) tensor in [0, 1], or another C
            than the probe's.
        ConfigError: (forward) the module's output is not (N, num_classes) logits (checked in
            full, probabilities included, on the first call; its shape on every call).
    """

    def __init__(self, module: nn.Module, num_classes: int | None,
                 mean: torch.Tensor | None, std: torch.Tensor | None,
                 input_shape: tuple[int, ...] | None, name: str) -> None:
        super().__init__()
        self.module = module
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.name = name
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self._checked = False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, channels=self.input_shape[0] if self.input_shape else None)
        out = self.module(self.normalize(x))
        if not self._checked:
            self.num_classes = check_logits(out, x.shape[0], self.num_classes, self.name)
            self._checked = True
        elif not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], self.num_classes):
            check_logits(out, x.shape[0], self.num_classes, self.name)
        return out


def _stats(value: float | Sequence[float] | torch.Tensor | None, what: str,
           device: torch.device) -> torch.Tensor | None:
    if value is None:
        return None
    try:
        t = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number or one number per channel; got "
                          f"{value!r}") from None
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{what} must be finite numbers, one or one per channel; got {value!r}")
    return t.view(1, -1, 1, 1).to(device)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def as_classifier(module: nn.Module | Callable[[torch.Tensor], torch.Tensor], *,
                  mean: float | Sequence[float] | None = None,
                  std: float | Sequence[float] | None = None, num_classes: int | None = None,
                  sample: torch.Tensor | None = None,
                  input_shape: Sequence[int] | None = None) -> WrappedClassifier:
    """Wrap any module (or callable) that maps images to logits as an aepurify classifier.

    The number of classes is read from one forward pass, never assumed: on the first images of
    ``sample``, else on two random images of ``input_shape`` (or of the module's own
    ``input_shape`` attribute), run without gradients in eval mode (the module's mode is
    restored). With none of these, ``num_classes`` must be given, and the first real call
    checks the output (shape, probabilities) instead.

    Args:
        module: maps normalised images (N, C, H, W) to logits (N, K).
        mean, std: per-channel statistics (one number, or one per channel) of the normalisation
            ``(x - mean) / std`` applied to pixels in [0, 1] before ``module``; None: none.
        num_classes: K if known; the forward pass must agree.
        sample: images (N, C, H, W) in [0, 1] for the probe forward pass.
        input_shape: (C, H, W) of a probe input, when no sample is at hand.

    Returns:
        A :class:`WrappedClassifier`: (N, C, H, W) in [0, 1] -> logits (N, K), with
        ``num_classes``. A module already wrapped, with no option given, is returned as is.

    Raises:
        ConfigError: not callable; no way to know the number of classes (none of sample,
            input_shape, num_classes); bad mean/std (not finite, std <= 0, another count than the
            channels); output not (N, K) logits: probabilities (a final softmax), fewer than 2
            classes, NaN, another K than ``num_classes``.
        InputError: ``sample`` not a float (N, C, H, W) tensor in [0, 1].
    """
    options = (mean, std, num_classes, sample, input_shape)
    if isinstance(module, WrappedClassifier) and all(o is None for o in options):
        return module
    if not callable(module):
        raise ConfigError(f"a classifier must be an nn.Module or callable; got "
                          f"{type(module).__name__}")
    name = f"classifier {type(module).__name__}"
    if not isinstance(module, nn.Module):
        name = f"classifier {getattr(module, '__name__', type(module).__name__)}"
        module = _Call(module)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise ConfigError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    device = _device_of(module)
    mean_t, std_t = _stats(mean, "mean", device), _stats(std, "std", device)
    if std_t is not None and bool((std_t <= 0).any()):
        raise ConfigError(f"std must be positive; got {std!r}")
    if sample is not None:
        probe = check_images(sample, what="sample")[:PROBE_IMAGES].to(device)
    else:
        shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
        probe = None
        if shape is not None:
            if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
                raise ConfigError(f"input_shape must be (C, H, W) positive integers; got {shape}")
            gen = torch.Generator().manual_seed(PROBE_SEED)
            probe = torch.rand(2, *shape, generator=gen).to(device)
    if probe is None and num_classes is None:
        raise ConfigError(f"cannot read the number of classes of {name}: pass sample=images, "
                          "input_shape=(C, H, W) or num_classes=K")
    channels = int(probe.shape[1]) if probe is not None else None
    for t, what in ((mean_t, "mean"), (std_t, "std")):
        if t is not None and channels is not None and t.shape[1] not in (1, channels):
            raise ConfigError(f"{what} has {t.shape[1]} values for images of {channels} "
                              "channel(s)")
    wrapped = WrappedClassifier(module, num_classes, mean_t, std_t,
                                tuple(probe.shape[1:]) if probe is not None else None, name)
    if probe is not None:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                wrapped(probe)
        finally:
            module.train(was_training)
    return wrapped
