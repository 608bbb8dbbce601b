"""Arithmetic precision: bf16 autocast and channels-last where the hardware runs them fast, fp32
elsewhere (docs/evaluation.md, "Precision and speed").

A CPU with AMX-BF16 or AVX512-BF16 runs bf16 convolutions (oneDNN) 2 to 4 times faster than fp32,
and channels-last activations roughly double the gain of bf16 alone; a GPU has bf16 tensor
cores. ``precision: auto`` picks ``bf16`` there and ``fp32`` elsewhere (a CPU without bf16 units
emulates it, slower than fp32). ``torch.backends.cpu.get_cpu_capability()`` says only "AVX512"
on such a CPU, so the bf16 units are detected through PyTorch's CPU feature probes, with the
kernel's ``/proc/cpuinfo`` flags as a fallback.

Where bf16 runs (``benchmarks/throughput.py`` measures the gain, ``benchmarks/precision_strength.py``
shows attacks lose no strength):

- training loops (parameters, optimiser, BatchNorm statistics and the loss stay fp32 under
  autocast);
- the forward and backward passes of the module an attack differentiates through a purifier
  (:class:`AutocastModule`: the attack's own arithmetic and the logits it reads stay fp32) and
  of adaptive attacks (:func:`autocast`); gray-box and transfer attacks, which differentiate a
  classifier alone, and gradient-free ones keep fp32
  (:func:`aepurify.attacks.attack_arithmetic`);
- inner optimisations of purifiers (APuDAE's refinement steps).

The verdict (the forward pass that decides whether an example counts as correct, N-evaluation
included) runs in fp32.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from torch import nn

from .errors import ConfigError
from .utils import channels_last_input

Precision = Literal["bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")
# Set to 0 to make ``auto`` pick fp32 on a bf16-capable CPU (to compare, or to reproduce
# weights trained on a CPU without bf16 units).
CPU_BF16_ENV = "AEPURIFY_CPU_BF16"


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """Whether this CPU runs bf16 arithmetic in hardware (AMX-BF16 tiles or AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:  # a build without the probe's backend
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device | str) -> Precision:
    """The precision ``precision`` means on ``device``.

    Args:
        precision: ``auto`` (or None): ``bf16`` on CUDA devices with bf16 support and on CPUs
            with bf16 units (:func:`cpu_has_bf16_units`, unless ``$AEPURIFY_CPU_BF16`` is 0),
            ``fp32`` elsewhere (MPS, other CPUs); ``bf16`` or ``fp32``: itself.
        device: where the work runs.

    Raises:
        ConfigError: another name, or ``$AEPURIFY_CPU_BF16`` not 0 or 1.
    """
    if precision in ("bf16", "fp32"):
        return precision  # type: ignore[return-value]
    if precision not in (None, "auto"):
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type != "cpu":
        return "fp32"
    env = os.environ.get(CPU_BF16_ENV, "").strip()
    if env not in ("", "0", "1"):
        raise ConfigError(f"{CPU_BF16_ENV} must be 0 or 1; got {env!r}")
    if env == "0":
        return "fp32"
    return "bf16" if cpu_has_bf16_units() else "fp32"


def fast_layout(precision: str, device: torch.device | str) -> bool:
    """Whether convolutions should run channels-last: under bf16, and on CUDA in any precision
    (cuDNN's tensor-core kernels want it). A CPU in fp32 keeps NCHW: oneDNN's fp32 kernels gain
    little from it, and the verdict's numbers stay those of earlier versions."""
    return precision == "bf16" or torch.device(device).type == "cuda"


def autocast(precision: str, device: torch.device | str) -> Any:
    """A context manager: bf16 autocast on ``device`` if ``precision`` is ``bf16`` (weights,
    activations and their gradients in bf16; reductions, BatchNorm statistics and the losses
    PyTorch lists as fp32 stay fp32), a no-op for ``fp32``."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


class AutocastModule(nn.Module):
    """``module`` run in ``precision``: under bf16, its input goes channels-last (the gradient
    with respect to it comes back as the caller's NCHW tensor) and its forward pass (and so its
    backward pass) runs under bf16 autocast; the output is cast back to fp32, so what reads it
    (an attack's loss, step and bookkeeping, EOT's average) computes in fp32. Under fp32 it is
    ``module`` itself. The wrapped module's train/eval mode is left alone (it is usually an
    :class:`~aepurify.purifiers.base.EvalWrapper`).

    Shapes: as ``module`` (images (N, C, H, W) -> logits (N, K) for an attack module).
    """

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        self.module = module
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision != "bf16":
            return self.module(x)
        if x.dim() == 4:
            x = channels_last_input(x)
        with autocast(self.precision, x.device):
            out = self.module(x)
        return out.float()

    def train(self, mode: bool = True) -> AutocastModule:
        """Set only this wrapper's flag; the wrapped (trained) module stays in eval mode. Attack
        engines switch their model's mode and restore it; through a plain module that would put
        BatchNorm layers in training mode (see :class:`~aepurify.purifiers.base.EvalWrapper`)."""
        self.training = mode
        self.module.eval()
        return self

    def __getattr__(self, name: str) -> Any:
        """Attributes the attack engines look up on their model (``num_classes``) are the
        wrapped module's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)


def with_precision(module: nn.Module, precision: str) -> nn.Module:
    """``module`` wrapped in :class:`AutocastModule` under bf16, itself under fp32."""
    return AutocastModule(module, precision) if precision == "bf16" else module


@contextmanager
def channels_last_weights(modules: list[nn.Module], enabled: bool) -> Iterator[None]:
    """4-D parameters of ``modules`` in channels-last layout inside the block (faster
    convolutions under bf16 and on tensor cores), each restored to its own layout afterwards,
    so code after it sees the usual NCHW layout. Values are untouched."""
    params = [p for m in modules for p in m.parameters() if p.dim() == 4] if enabled else []
    was_nchw = [p.is_contiguous() for p in params]
    for p in params:
        p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for p, nchw in zip(params, was_nchw):
            if nchw:
                p.data = p.data.contiguous()


def check_precision(value: Any) -> str:
    """``value`` if it names a precision (:data:`PRECISIONS`), for config validators.

    Raises:
        ValueError: another value (pydantic turns it into a one-line config error).
    """
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")
    return value
