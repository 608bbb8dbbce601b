"""Files the project ships: the embedded MNIST copy and the experiment configs.

In a checkout they sit at the repository root (``data/mnist``, ``configs``); an installed wheel
carries them under ``aepurify/_resources``. Look in the package first, then in the checkout.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parents[1]


def resource_path(relative: str) -> Path | None:
    """Path of a shipped resource such as ``"configs/demo-mnist.yaml"``, or None if absent."""
    for base in (_PACKAGE / "_resources", _CHECKOUT):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return None


def find_config(name_or_path: str | Path) -> Path:
    """Resolve a config given as a path or as the name of a shipped config.

    ``"demo-mnist"``, ``"demo-mnist.yaml"`` and ``"papers/s2snet-mnist.yaml"`` name shipped
    configs; anything that exists on disk is taken as is.

    Raises:
        ConfigError: neither a file on disk nor a shipped config.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    rel = str(name_or_path)
    if not rel.endswith((".yaml", ".yml")):
        rel += ".yaml"
    shipped = resource_path(f"configs/{rel}")
    if shipped is not None and shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {name_or_path}")
