"""The S2SNet's two-stage training bookkeeping (:mod:`aepurify.purifiers.s2snet`): stage 2's
options read from ``TrainSettings.extra`` and split from stage 1's, and the stage-1 results
this process keeps, so that several S2SNets of one run (one per classifier) share one stage-1
autoencoder, as in the paper, without training it again.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..data import ImageDataset
    from ..training.settings import TrainSettings

# Stage-2 options read from ``TrainSettings.extra`` (the rest of TrainSettings drives stage 1).
STAGE2_KEYS = ("stage2_epochs", "stage2_lr", "stage2_batch_size", "stage2_max_images",
               "stage2_schedule", "stage2_weight_decay", "target")
TARGETS = ("label", "prediction", "distill")


# Stage-1 results of this process: key -> (state dict on CPU, metrics); the latest few only.
_STAGE1_DONE: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
_STAGE1_KEEP = 4


def stage1_done(key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The stage-1 result (CPU state dict, metrics) this process keeps under ``key``, if any."""
    return _STAGE1_DONE.get(key)


def remember_stage1(key: str, state: dict[str, torch.Tensor], metrics: dict[str, Any]) -> None:
    """Keep a stage-1 result (a CPU copy of ``state``) under ``key``; the oldest beyond
    :data:`_STAGE1_KEEP` are dropped."""
    _STAGE1_DONE[key] = ({k: v.detach().cpu().clone() for k, v in state.items()}, metrics)
    while len(_STAGE1_DONE) > _STAGE1_KEEP:
        _STAGE1_DONE.pop(next(iter(_STAGE1_DONE)))


def check_target(target: str) -> None:
    """Raise ConfigError unless ``target`` is a stage-2 target (label, prediction, distill)."""
    if target not in TARGETS:
        raise ConfigError(f"s2snet target must be one of {', '.join(TARGETS)}; got {target!r}")


def stage1_key(net: nn.Module, train: ImageDataset, settings: TrainSettings) -> str:
    """Hash of what determines stage 1 of the S2SNet ``net``: architecture (its ``hparams``),
    initial weights, settings, images."""
    h = hashlib.sha256()
    h.update(json.dumps([net.hparams, settings.model_dump(), train.name, train.split],
                        sort_keys=True, default=str).encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy())  # hashed in place, no copy
    h.update(train.take(settings.max_images).images.contiguous().numpy())
    return h.hexdigest()


def split_settings(settings: TrainSettings) -> tuple[TrainSettings, TrainSettings, str]:
    """Stage 1's settings, stage 2's settings and the stage-2 target from ``settings``.

    Stage 1 takes ``settings`` without ``extra``; stage 2 takes the ``stage2_*`` keys of
    ``settings.extra``, each defaulting to stage 1's value.

    Raises:
        ConfigError: unknown keys in ``extra``, an unknown target or an invalid stage-2 value.
    """
    from pydantic import ValidationError

    extra = dict(settings.extra)
    unknown = sorted(set(extra) - set(STAGE2_KEYS))
    if unknown:
        raise ConfigError(f"unknown s2snet training option(s) {', '.join(unknown)} in "
                          f"train.extra; known: {', '.join(STAGE2_KEYS)}")
    target = extra.pop("target", "label")
    check_target(target)
    stage1 = settings.model_copy(update={"extra": {}})
    update = {k.removeprefix("stage2_"): v for k, v in extra.items()}
    try:
        stage2 = type(settings).model_validate({**stage1.model_dump(), **update})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"s2snet train.extra stage2_{err['loc'][0]}: {err['msg']}") from None
    return stage1, stage2, target
