"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (what to build, how it was
trained, seed, code version). Never pickle.

Modules that can be checkpointed inherit :class:`Configurable`, which records the keyword
arguments they were built with (``hparams``), so a checkpoint can rebuild the same architecture
before loading weights, and loading checks every tensor's name and shape against it.

A checkpoint is untrusted input: its hyper-parameters are checked by name and type against the
architecture's signature, and the architecture is first built on PyTorch's ``meta`` device
(shapes only, no memory) and its tensors compared with those the safetensors header lists, so
hyper-parameters that ask for a model the file does not hold (a crafted ``width: 1000000``
asks for terabytes) are refused before anything is allocated.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import AepurifyError, CheckpointError, ConfigError
from .registry import Registry
from .utils import make_folder, preserved_rng
from .version import code_version

FORMAT = "aepurify-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class Configurable:
    """Mixin that records constructor arguments (defaults filled in) as ``self.hparams``.

    Put it before ``nn.Module`` in the bases. ``hparams`` must be JSON-serialisable (numbers,
    strings, lists, dicts) for the module to be saved.
    """

    hparams: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any):  # noqa: ANN204
        obj = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError:
            bound = None  # __init__ will raise the real error with a better message
        if bound is not None:
            bound.apply_defaults()
            params = {k: v for k, v in list(bound.arguments.items())[1:]}
            extra = params.pop("kwargs", {}) if "kwargs" in params else {}
            object.__setattr__(obj, "hparams", _jsonable({**params, **extra}))
        return obj


def save_checkpoint(module: torch.nn.Module, directory: str | Path, *, kind: str, name: str,
                    **metadata: Any) -> Path:
    """Save ``module`` as ``directory/model.safetensors`` + ``directory/config.json``.

    Args:
        module: a :class:`Configurable` module.
        directory: created if needed; existing files are replaced.
        kind: ``"classifier"`` or ``"purifier"``.
        name: the registry name that rebuilds the module.
        metadata: anything JSON-serialisable to record (data set, training settings and
            metrics, seed, ...). The code version and time are added.

    Returns:
        The checkpoint directory.
    """
    directory = make_folder(directory, "checkpoint folder")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "name": name,
        "hparams": getattr(module, "hparams", {}),
        **_jsonable(metadata),
        "code_version": code_version(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp_weights = directory / (WEIGHTS + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": FORMAT, "kind": kind, "name": name})
    tmp_weights.replace(directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``config.json`` of a checkpoint.

    Raises:
        CheckpointError: missing directory or files, unreadable JSON, not an aepurify checkpoint.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: not a directory")
    for fname in (WEIGHTS, CONFIG):
        if not (directory / fname).is_file():
            raise CheckpointError(f"no checkpoint at {directory}: {fname} is missing")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint config {directory / CONFIG}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{directory / CONFIG} is not an aepurify checkpoint config")
    return config


def stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, read from its header alone.

    Raises:
        CheckpointError: the file is missing or not a readable safetensors file.
    """
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt weights file {weights}: {exc}") from None


def expected_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict of ``build()``, built on the ``meta`` device (shapes
    only, no memory), so that a config that asks for terabytes allocates nothing; modules
    with an op that has no meta kernel are built for real.

    Raises:
        ConfigError: the factory refuses the parameters.
    """
    try:
        with torch.device("meta"):
            module = build()
    except AepurifyError:
        raise
    except Exception:  # noqa: BLE001 - an op without a meta kernel: build it for real
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _mismatch(expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]]
              ) -> str | None:
    """What differs between the architecture's tensors and the file's, or None."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}"
                         f"{' ...' if len(unexpected) > 3 else ''}")
        return "; ".join(parts)
    for key, shape in expected.items():
        if stored[key] != shape:
            return f"{key} has shape {list(stored[key])} in the file, {list(shape)} in the model"
    return None


def load_checkpoint(directory: str | Path, registry: Registry, *, kind: str,
                    expect_name: str | None = None, map_location: str | torch.device = "cpu",
                    ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a module from a checkpoint and load its weights, checking that they match.

    Args:
        directory: checkpoint directory.
        registry: the registry to rebuild from (classifiers or purifiers).
        kind: the kind expected (``"classifier"``/``"purifier"``).
        expect_name: if given, the registry name the checkpoint must hold.
        map_location: device for the weights.

    Returns:
        (module in eval mode, config dict).

    Raises:
        CheckpointError: missing/corrupt files, another kind or architecture, or weights whose
            names or shapes do not match the architecture.
    """
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    if config.get("kind") != kind:
        raise CheckpointError(f"checkpoint {directory} holds a {config.get('kind')} "
                              f"{config.get('name')!r}, expected a {kind}")
    name = config.get("name")
    if expect_name is not None and name != expect_name:
        raise CheckpointError(f"checkpoint {directory} holds {kind} {name!r}, "
                              f"but {expect_name!r} was asked for")
    hparams = config.get("hparams", {})
    if not isinstance(name, str) or not isinstance(hparams, dict):
        raise CheckpointError(f"{directory / CONFIG}: 'name' must be a string and 'hparams' a "
                              "mapping")
    weights = directory / WEIGHTS
    stored = stored_shapes(weights)
    try:
        # untrusted hyper-parameters: compare shapes before anything is allocated; building
        # draws initial weights, which the caller's random streams must not see (a model loaded
        # from the cache and one trained on the spot leave them alike)
        with preserved_rng():
            problem = _mismatch(expected_shapes(lambda: registry.create(name, **hparams)),
                                stored)
            if problem is None:
                module = registry.create(name, **hparams)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {directory} cannot be rebuilt: {exc}") from None
    if problem is not None:
        raise CheckpointError(f"checkpoint {directory} does not match architecture {name!r}: "
                              f"{problem}")
    _load_weights(module, weights, map_location)
    return module, config


def _load_weights(module: torch.nn.Module, weights: Path, map_location: str | torch.device
                  ) -> None:
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt weights file {weights}: {exc}") from None
    module.load_state_dict(state, strict=True)
    module.to(map_location).eval()


def load_checkpoint_into(module: torch.nn.Module, directory: str | Path, *, kind: str,
                         expect_name: str, map_location: str | torch.device = "cpu"
                         ) -> dict[str, Any]:
    """Load a checkpoint's weights into ``module``, built by the caller (a model of a user's
    entry point, which no registry rebuilds), after checking kind, name and every tensor's name
    and shape.

    Returns:
        The checkpoint's config; ``module`` is left in eval mode on ``map_location``.

    Raises:
        CheckpointError: missing/corrupt files, another kind or name, or weights that do not
            match the module's.
    """
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    if config.get("kind") != kind or config.get("name") != expect_name:
        raise CheckpointError(f"checkpoint {directory} holds {config.get('kind')} "
                              f"{config.get('name')!r}, not {kind} {expect_name!r}")
    weights = directory / WEIGHTS
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problem = _mismatch(expected, stored_shapes(weights))
    if problem is not None:
        raise CheckpointError(f"checkpoint {directory} does not match {expect_name!r}: {problem}")
    _load_weights(module, weights, map_location)
    return config
