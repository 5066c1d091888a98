"""Execution backends: one contract (``Backend``), a registry of engines found by name.

``get("local")``, ``get("dask", n_workers=4)``, ``get("dask://host:8786")`` make a backend the caller
owns; ``shared(name)`` gives the process-wide embedded one that ``fn.run(backend="...")`` uses and
that is closed at interpreter exit. Third-party engines register under the ``shoal.backends`` entry
point group or with ``register``.
"""

from __future__ import annotations

import atexit
import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.errors import BackendError, RegistryError, UnknownBackendError

from .base import Backend, BackendFuture, ScalingEvent, WorkerInfo

if TYPE_CHECKING:  # pragma: no cover
    from shoal.function import Function
    from shoal.project import Project

__all__ = [
    "Backend",
    "BackendFuture",
    "ScalingEvent",
    "WorkerInfo",
    "available",
    "for_function",
    "get",
    "register",
    "shared",
    "shared_keyed",
]

_REGISTRY: dict[str, Any] = {
    "local": "shoal.backends.local:LocalBackend",
    "dask": "shoal.backends.dask:DaskBackend",
    "ray": "shoal.backends.ray:RayBackend",
    "dask-k8s": "shoal.backends.kubernetes.dask:DaskKubernetes",
    "ray-k8s": "shoal.backends.kubernetes.ray:RayKubernetes",
}
_shared: dict[str, Backend] = {}
_shared_lock = threading.Lock()


def register(name: str, target: str | type[Backend], *, clobber: bool = False) -> None:
    """Register a backend class (or a lazy ``"module:Class"`` path) under ``name``.

    A name taken by another class is refused unless ``clobber=True`` (registering the same class
    again is a no-op), so that one package cannot silently replace another's engine."""
    if not isinstance(name, str) or not name:
        raise RegistryError(f"a backend is registered under a non-empty name, got {name!r}")
    _load_entry_points()
    current = _REGISTRY.get(name)
    if current is not None and not clobber and not _same(current, target):
        raise RegistryError(
            f"backend name {name!r} is registered already, to {_path(current)}; choose another name, "
            f"or pass clobber=True to replace it with {_path(target)}"
        )
    _REGISTRY[name] = target


def _path(target: str | type[Backend]) -> str:
    """``"module:Class"`` of a registry entry, resolved or not."""
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def _same(current: str | type[Backend], target: str | type[Backend]) -> bool:
    """Whether two entries name one class (a path may name a re-export of the class given)."""
    if _path(current) == _path(target):
        return True
    if isinstance(current, str) == isinstance(target, str):
        return False
    path = current if isinstance(current, str) else target
    module_name, _, attr = str(path).partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return found is (target if isinstance(current, str) else current)


def available() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for entry in entry_points(group="shoal.backends"):
        _REGISTRY.setdefault(entry.name, entry.value)


def _resolve(name: str) -> type[Backend]:
    target = _REGISTRY.get(name)
    if target is None:
        _load_entry_points()
        target = _REGISTRY.get(name)
    if target is None:
        raise UnknownBackendError(f"unknown backend {name!r}; available: {', '.join(available())}")
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise BackendError(
                f"backend {name!r} needs packages that are not installed ({exc.name or exc}); "
                f"install them with: pip install 'shoal[{name}]'"
            ) from None
        _REGISTRY[name] = target
    return target


def _parse(spec: str) -> tuple[str, dict[str, Any]]:
    """ "dask://host:8786" -> ("dask", {"address": "dask://host:8786"}); each engine reads its own URL."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        return SCHEME_ALIASES.get(scheme, scheme), {"address": spec}
    return spec, {}


#: Address schemes that name an engine other than themselves (Dask schedulers speak tcp/tls).
SCHEME_ALIASES = {"tcp": "dask", "tls": "dask"}


def get(spec: str | Backend | None = "local", **options: Any) -> Backend:
    """A new backend the caller owns (close it, or use it as a context manager)."""
    if isinstance(spec, Backend):
        if options:
            raise BackendError("options cannot be applied to an existing backend object")
        return spec
    if not isinstance(spec, str) or not spec:
        raise UnknownBackendError(f"a backend is a name such as 'local', 'dask' or 'ray', got {spec!r}")
    name, parsed = _parse(spec)
    parsed.update(options)
    return _resolve(name)(**parsed)


def shared(spec: str) -> Backend:
    """The process-wide embedded backend for ``spec``, started on first use, closed at exit."""
    return shared_keyed(spec, lambda: get(spec))


def shared_keyed(key: str, factory: Callable[[], Backend]) -> Backend:
    """The process-wide backend kept under ``key``, made by ``factory()`` on first use (once, even
    when threads race) and closed at exit with the others. For engines that share per something
    else than their name (the Kubernetes launchers: one per function version and project)."""
    with _shared_lock:
        backend = _shared.get(key)
        if backend is None:
            backend = _shared[key] = factory()
        return backend


def for_function(spec: str, fn: Function, project: Project | None) -> Backend:
    """The backend ``fn.run(backend=spec)`` runs on: the engine class registered for the name in
    ``spec`` decides (``Backend.for_function``), so that core names no engine."""
    if not isinstance(spec, str) or not spec:
        raise UnknownBackendError(f"a backend is a name such as 'local', 'dask' or 'ray', got {spec!r}")
    name, _ = _parse(spec)
    return _resolve(name).for_function(spec, fn, project)


def close_shared() -> None:
    """Close every shared backend (registered with atexit)."""
    with _shared_lock:
        backends = list(_shared.values())
        _shared.clear()
    for backend in backends:
        try:
            backend.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(close_shared)


def __getattr__(name: str) -> Any:
    """``shoal.backends.kubernetes`` on first use, so that ``import shoal.backends`` stays light."""
    if name == "kubernetes":
        return importlib.import_module(f"{__name__}.kubernetes")  # the import also sets the attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
