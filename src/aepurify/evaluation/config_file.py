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


def _first_error(exc: ValidationError) -> str:
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
        raise ConfigError(f"{source}: {_first_error(exc)}") from None
    try:
        config.check_names()
        check_params(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    warn_large_linf(config, source)
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML config.

    Args:
        path: the YAML file.
        overrides: top-level keys to replace (e.g. ``{"n_test": 200}`` from the command line).

    Raises:
        ConfigError: missing file, unreadable YAML, invalid or unknown entries.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if isinstance(data, dict) and overrides:
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(data, source=str(path))
