"""Create things by name, as timm does: one registry per family (classifiers, purifiers, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory table with helpful errors.

    Args:
        kind: what the registry holds, used in error messages ("purifier", "attack", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str, replace: bool = False
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or factory under ``name`` (``replace``: over an
        earlier entry of that name, as a re-registered image folder does)."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``.

        Raises:
            ConfigError: ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the thing registered under ``name`` with ``kwargs``.

        Raises:
            ConfigError: unknown name, or keyword arguments the factory does not take.
        """
        factory = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as exc:  # wrong keyword names in a config
            raise ConfigError(f"bad parameters for {self.kind} {name!r}: {exc}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
