"""Reading a config: YAML -> dict -> validated :class:`~aepurify.evaluation.config.ExperimentConfig`,
with every registry name, parameter name and parameter type checked before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .config import ExperimentConfig
from .config_checks import check_params, warn_large_linf


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``dotted.location: message`` on one line."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}"  # our validators' own words


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a config dict; raise ConfigError with the first problem on one line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {first_error(exc)}") from None
    try:
        config.check_names()
        check_params(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    warn_large_linf(config, source)
    return config


def _unshared(value: Any) -> Any:
    """A copy of parsed YAML with no shared sub-objects: anchors and aliases (``*dae``) make
    one dict appear in several places, and an override must change only the place it names."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def apply_override(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at the dotted ``path`` of a parsed config, in place.

    Keys are separated by dots; a number indexes a list (``purifiers.0.train.epochs``). Missing
    mapping keys on the way are created (a config need not spell out a default to override it);
    whether the result is a valid config is checked afterwards like any config.

    Raises:
        ConfigError: an empty key, a list index that is not a number or out of range, or a path
            that walks into a plain value; one line naming the path.
    """
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ConfigError(f"--set {path}: empty key in the dotted path")
    node: Any = data
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(walked) or "the config"
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"--set {path}: {where} is a list; index it with a number, "
                                  f"not {part!r}")
            index = int(part)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"--set {path}: index {index} is out of range ({where} has "
                                  f"{len(node)} entries)")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif part not in node and parts[i + 1].lstrip("-").isdigit():
                raise ConfigError(f"--set {path}: {where} has no list {part!r} to index")
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {path}: {where} is a value ({node!r}), not a mapping or "
                              "a list")
        walked.append(part)


def read_config_data(path: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """A YAML config file as parsed data, with ``overrides`` applied (see :func:`load_config`);
    not yet validated.

    Raises:
        ConfigError: missing file, a file that is not UTF-8 text, unreadable YAML, a bad
            override path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if isinstance(data, dict) and overrides:
        data = _unshared(data)
        for key, value in overrides.items():
            apply_override(data, key, value)
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML config.

    Args:
        path: the YAML file.
        overrides: values to set before validation, by dotted path into the config
            (``{"n_test": 200, "classifier.train.epochs": 1, "purifiers.0.train.epochs": 1}``;
            see :func:`apply_override`), applied in order; ``aepurify evaluate --set`` and
            ``--n-test`` come here.

    Raises:
        ConfigError: missing file, unreadable YAML, a bad override path, invalid or unknown
            entries (overridden ones included).
    """
    return parse_config(read_config_data(path, overrides), source=str(path))
