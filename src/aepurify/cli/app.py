"""The ``aepurify`` app and what its commands share: the typer app, the stderr console, common
options and the key=value parsing of ``--param``-style options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from ..errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Autoencoder-based adversarial purification: train purifiers, attack "
                       "them under every threat model, report what robustness is real.")
train_app = typer.Typer(no_args_is_help=True, help="Train a classifier or a purifier.")
app.add_typer(train_app, name="train")
console = Console(stderr=True)

INTERRUPTED = "interrupted: finished rows are kept in results.db; run again to resume"

DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder with the data files (else $AEPURIFY_DATA, then the cache; MNIST "
                       "falls back to the embedded copy).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")]


def _settings(**kwargs: Any):
    from ..training import TrainSettings

    try:
        return TrainSettings(**{k: v for k, v in kwargs.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: "
                          f"{err['msg']}") from None


def _params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{option} takes key=value; got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a config value: dotted.key=value (repeatable; list indices are "
                  "numbers, values are YAML), e.g. --set classifier.train.epochs=1 "
                  "--set purifiers.0.train.max_images=512.")]


def _overrides(items: list[str] | None) -> dict[str, Any]:
    """``--set key.path=value`` options as {dotted path: YAML value}, in order (last wins)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes dotted.key=value; got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: the value {text!r} is not valid YAML") from None
    return out
