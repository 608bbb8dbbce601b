"""Create things by name, as timm does: one registry per family (classifiers, purifiers, ...)."""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from .errors import AepurifyError, ConfigError

T = TypeVar("T")

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
# Names an annotation may use although its module imports them only for type checking.
_TYPING_NAMES = {**vars(typing), **{k: getattr(collections.abc, k)
                                    for k in collections.abc.__all__}}


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
            ConfigError: ``name`` is unknown (or not a string); the message lists the known
                names.
        """
        if not isinstance(name, str):
            raise ConfigError(f"{self.kind} name must be a string; got {name!r}")
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self.names())}"
            ) from None

    def check_params(self, name: str, params: Mapping[str, Any],
                     supplied: Iterable[str] = ()) -> None:
        """Check keyword parameters against the factory's signature without building anything:
        every name must be one the factory takes, and every value must fit its annotation
        (pydantic, strict: ``quality: "high"`` or ``"50"`` is not an ``int``). Configs call this
        before any training, so a typo costs one line, not a run.

        Args:
            name: registry name.
            params: the keyword arguments a config or a checkpoint gives.
            supplied: names aepurify passes itself (an attack's ``model``, ``eps``, ``norm``),
                which ``params`` may not repeat.

        Raises:
            ConfigError: unknown name, a parameter the factory does not take or that aepurify
                supplies, or a value of the wrong type; one line that names it.
        """
        check_keywords(self.get(name), params, supplied,
                       f"bad parameters for {self.kind} {name!r}")

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build the thing registered under ``name`` with ``kwargs`` (``name`` is positional
        only, so a parameter called ``name`` is checked like any other).

        Raises:
            ConfigError: unknown name, parameters the factory does not take, values of the
                wrong type (see :meth:`check_params`), or values the factory refuses.
        """
        factory = self.get(name)
        self.check_params(name, kwargs)
        try:
            return factory(**kwargs)
        except AepurifyError:
            raise
        except (TypeError, ValueError, RuntimeError) as exc:  # values no annotation rules out
            # (a negative width: torch refuses the shape)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"bad parameters for {self.kind} {name!r}: {first}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def check_keywords(factory: Callable[..., Any], params: Mapping[str, Any],
                   supplied: Iterable[str] = (), what: str = "bad parameters") -> None:
    """Check keyword parameters against a factory's signature without calling it (what
    :meth:`Registry.check_params` does for a registered name); ``what`` starts the error.

    Raises:
        ConfigError: a parameter the factory does not take or that aepurify supplies, or a
            value of the wrong type; one line that names it.
    """
    accepted, takes_any = _keywords(factory)
    reserved = set(supplied)
    for key, value in params.items():
        if key in reserved:
            raise ConfigError(f"{what}: {key!r} is set by aepurify, not by params")
        if key not in accepted:
            if takes_any:
                continue
            options = sorted(set(accepted) - reserved)
            close = difflib.get_close_matches(key, options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{what}: unknown parameter {key!r}{hint}; it takes "
                              f"{', '.join(options) or 'none'}")
        adapter = _adapter(factory, key)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ConfigError(f"{what}: {key!r}: {msg}; got {value!r}") from None


def _target(factory: Callable[..., Any]) -> Callable[..., Any]:
    return factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]


@functools.lru_cache(maxsize=None)
def _keywords(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters of a factory (a class: its ``__init__`` without ``self``) and
    whether it takes ``**kwargs``."""
    params = list(inspect.signature(_target(factory)).parameters.values())
    if inspect.isclass(factory):
        params = params[1:]
    accepted = {p.name: p for p in params if p.kind in _KEYWORD}
    return accepted, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@functools.lru_cache(maxsize=None)
def _adapter(factory: Callable[..., Any], key: str) -> TypeAdapter | None:
    """A pydantic validator for one parameter's annotation, or None when it has none or it
    cannot be resolved here (a name imported only for type checking): then the factory's own
    checks decide."""
    annotation = _keywords(factory)[0][key].annotation
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):  # from __future__ import annotations
        namespace = {**_TYPING_NAMES, **getattr(_target(factory), "__globals__", {})}
        try:
            annotation = eval(annotation, namespace)  # noqa: S307 - the project's own source
        except Exception:  # noqa: BLE001 - unresolvable here; the factory checks it
            return None
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 - a type pydantic cannot validate; the factory checks it
        return None
