"""Name -> task lookup, so coordinator and participants agree on a task by a string.

A consortium can plug in its own task without touching this package by passing
``"package.module:object"``, where the object is a Task subclass, a Task instance, or a
zero-argument factory returning one.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode

from tasks.base import Task

T = TypeVar("T", bound=type[Task])

_REGISTRY: dict[str, type[Task]] = {}


class UnknownTaskError(ValueError):
    """The task spec names no registered task and no importable Task object."""


def register_task(cls: T) -> T:
    """Class decorator: make ``cls`` available to :func:`get_task` under ``cls.name``."""
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise TypeError(f"register_task expects a Task subclass, got {cls!r}")
    if inspect.isabstract(cls):
        raise TypeError(f"cannot register abstract task class {cls.__qualname__}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty string without ':'")
    existing = _REGISTRY.get(name)
    if existing is not None and _qualified(existing) != _qualified(cls):
        raise ValueError(f"task name {name!r} is already taken by {_qualified(existing)}")
    _REGISTRY[name] = cls  # same class again (e.g. a module reload) simply replaces it
    return cls


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_REGISTRY)


def get_task(spec: str | Task) -> Task:
    """A task instance from a registered name or a ``"package.module:object"`` spec."""
    if isinstance(spec, Task):
        return spec
    spec = spec.strip()
    if spec in _REGISTRY:
        return _REGISTRY[spec]()
    if "?" in spec:
        return _with_options(spec)
    if ":" in spec:
        return _from_import_path(spec)
    known = ", ".join(task_names()) or "(none)"
    raise UnknownTaskError(f"unknown task {spec!r}; known tasks: {known} (or use 'package.module:object')")


def task_ref(name: str, options: Mapping[str, object]) -> str:
    """The spec string for task ``name`` with ``options`` (``name?key=value&...``, sorted; just ``name`` without any).

    The typed options of a plan cross into this layer as this string, which also keys the data caches.
    """
    items = sorted((k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items())
    return f"{name}?{urlencode(items)}" if items else name


def _with_options(spec: str) -> Task:
    name, _, query = spec.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise UnknownTaskError(f"task spec {spec!r}: options must look like name?key=value&key=value") from None
    cls = _REGISTRY.get(name.strip())
    if cls is None:
        known = ", ".join(task_names()) or "(none)"
        raise UnknownTaskError(f"unknown task {name!r} (options are for registered tasks); known tasks: {known}")
    try:
        return cls.from_options(options)
    except UnknownTaskError:
        raise
    except ValueError as exc:
        raise UnknownTaskError(str(exc)) from None


def is_registered(task: Task) -> bool:
    """True if ``task``'s name maps to exactly its class (so the name identifies its data)."""
    return _REGISTRY.get(getattr(task, "name", None)) is type(task)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _from_import_path(spec: str) -> Task:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise UnknownTaskError(f"task spec {spec!r} must look like 'package.module:object'")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownTaskError(f"task spec {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise UnknownTaskError(f"task spec {spec!r}: {module_name!r} has no attribute {attr_path!r}") from None
    if isinstance(obj, Task):
        return obj
    if inspect.isclass(obj) and not issubclass(obj, Task):
        raise UnknownTaskError(f"task spec {spec!r}: {obj.__qualname__} is not a Task subclass")
    if not callable(obj):
        raise UnknownTaskError(f"task spec {spec!r}: {obj!r} is not a Task, class or factory")
    try:  # a factory takes no arguments: anything else (json:dumps, a class needing arguments) is not one
        inspect.signature(obj).bind()
    except TypeError:
        name = getattr(obj, "__qualname__", repr(obj))
        raise UnknownTaskError(
            f"task spec {spec!r}: {name} needs arguments; name a Task, a Task class or a factory that takes none"
        ) from None
    except ValueError:  # no signature to inspect (some builtins): let the call decide
        pass
    task = obj()
    if not isinstance(task, Task):
        raise UnknownTaskError(f"task spec {spec!r}: factory returned {type(task).__name__}")
    return task
