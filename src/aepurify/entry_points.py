"""Entry points: a user's own classifier or purifier named as ``"package.module:factory"``, as a
config entry (``entry_point:`` with ``kwargs:``) or on the command line (``aepurify audit
--classifier my_models:small_cnn``).

The module is imported from the current directory first, then from ``sys.path`` (the way
``python -m`` finds it), so a file ``my_models.py`` beside the config works without installing
anything. Every failure is one line that names the entry point: a malformed name, a module that
is not found or fails to import, a missing or non-callable factory, keyword arguments the
factory does not take (checked against its signature before anything is built) and a factory
that raises.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .errors import AepurifyError, ConfigError
from .registry import Registry


def is_entry_point(text: str) -> bool:
    """Whether ``text`` names an entry point (``module:factory``) rather than a registry name or
    a path (a Windows drive letter ``C:\\...`` is a path)."""
    head, sep, tail = text.partition(":")
    return bool(sep) and bool(head) and bool(tail) and not (len(head) == 1 and tail[:1] in "\\/")


def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not is_entry_point(spec):
        raise ConfigError(f"entry point {spec!r} must read 'package.module:factory'")
    module, factory = spec.split(":", 1)
    if not all(part.isidentifier() for part in module.split(".")) or \
            not all(part.isidentifier() for part in factory.split(".")):
        raise ConfigError(f"entry point {spec!r} must read 'package.module:factory' (Python "
                          "names separated by dots)")
    return module, factory


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` (``"package.module:factory"``; the factory may be a dotted
    attribute path such as ``Net.build``) names.

    Raises:
        ConfigError: malformed spec; the module not found or raising on import; no such
            attribute; an attribute that is not callable.
    """
    module_name, attr = _split(spec)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # the current directory first, as `python -m` does
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise ConfigError(f"entry point {spec!r}: no module named {missing!r} (looked in the "
                          "current directory and sys.path)") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed on import
        raise ConfigError(f"entry point {spec!r}: importing {module_name} failed: "
                          f"{_first_line(exc)}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"entry point {spec!r}: module {module_name} has no attribute "
                              f"{attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"entry point {spec!r}: {attr} is a {type(obj).__name__}, not a "
                          "callable factory")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _registry(spec: str, kind: str) -> Registry[Any]:
    registry: Registry[Any] = Registry(f"{kind} entry point")
    registry.register(spec)(load_factory(spec))
    return registry


def check_entry_point(spec: str, kwargs: Mapping[str, Any], kind: str = "model") -> None:
    """Import the factory of ``spec`` and check ``kwargs`` against its signature (names and
    annotated types), building nothing.

    Raises:
        ConfigError: as :func:`load_factory`, or a keyword the factory does not take, or a value
            of the wrong type.
    """
    _registry(spec, kind).check_params(spec, dict(kwargs))


def call_entry_point(spec: str, kwargs: Mapping[str, Any] | None = None,
                     kind: str = "model") -> Any:
    """``factory(**kwargs)`` of the entry point ``spec``, with its errors in one line.

    Args:
        spec: ``"package.module:factory"``.
        kwargs: keyword arguments of the factory (checked against its signature first).
        kind: ``classifier`` or ``purifier``, for the messages.

    Raises:
        ConfigError: as :func:`check_entry_point`, or the factory raised (its message's first
            line is kept).
    """
    registry = _registry(spec, kind)
    registry.check_params(spec, dict(kwargs or {}))
    factory = registry.get(spec)
    try:
        return factory(**dict(kwargs or {}))
    except AepurifyError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything the user's factory raises
        raise ConfigError(f"{kind} entry point {spec!r} raised {_first_line(exc)}") from None


def _is_the_purifier(obj: Any) -> bool:
    """Whether an entry point's object is a purifier itself rather than a factory: an
    ``nn.Module`` instance, or a function (or callable object) whose one required parameter
    is the images."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return True
    if isinstance(obj, type):
        return False  # a class: building it is the factory call
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    required = [p for p in params if p.default is p.empty and
                p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


def build_purifier(spec: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    """What a purifier entry point names, ready to use. Either form works:

    - a factory: ``factory(**kwargs)`` is called and returns the purifier (a Purifier, an
      ``nn.Module`` or a callable images -> images);
    - the purifier itself: an ``nn.Module`` instance, or a function (callable object) whose
      one required argument is the images (N, C, H, W) in [0, 1], given no ``kwargs``.

    Raises:
        ConfigError: as :func:`call_entry_point`; keyword arguments for a purifier that is not
            a factory; a factory that returns something not callable.
    """
    obj = load_factory(spec)
    if _is_the_purifier(obj):
        if kwargs:
            raise ConfigError(f"purifier entry point {spec!r} is a purifier (it takes the "
                              "images), not a factory: it takes no keyword arguments")
        return obj
    built = call_entry_point(spec, kwargs, "purifier")
    if not callable(built):
        raise ConfigError(f"purifier entry point {spec!r} returned a {type(built).__name__}, "
                          "not a callable purifier (images -> images)")
    return built


def own_label(obj: Any, spec: str) -> str:
    """A row label for what an entry point built: the name it declares (a ``name`` string,
    as ``as_purifier(..., name=)`` and aepurify's models set), else the class of a module or
    of a callable object (``TotalVarMin``), else, for a plain function or lambda, whose own
    name says little (``purify``), the factory's name (:func:`factory_label`)."""
    from types import BuiltinFunctionType, FunctionType, MethodType

    name = getattr(obj, "name", None)
    if isinstance(name, str) and name.strip() and not name.startswith("classifier "):
        return name.strip()
    if not isinstance(obj, (FunctionType, BuiltinFunctionType, MethodType, functools.partial,
                            type)):
        return type(obj).__name__
    return factory_label(spec)


def factory_label(spec: str) -> str:
    """A short row label for an entry point: the factory's name (``small_cnn`` of
    ``my_models:small_cnn``)."""
    return spec.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
