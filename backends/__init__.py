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
from typing import Any

from shoal.errors import BackendError, UnknownBackendError

from .base import Backend, BackendFuture, ScalingEvent, WorkerInfo

__all__ = ["Backend", "BackendFuture", "ScalingEvent", "WorkerInfo", "available", "get", "register", "shared"]

_REGISTRY: dict[str, Any] = {
    "local": "shoal.backends.local:LocalBackend",
    "dask": "shoal.backends.dask:DaskBackend",
    "ray": "shoal.backends.ray:RayBackend",
    "dask-k8s": "shoal.backends.kubernetes.dask:DaskKubernetes",
    "ray-k8s": "shoal.backends.kubernetes.ray:RayKubernetes",
}
_shared: dict[str, Backend] = {}
_shared_lock = threading.Lock()


def register(name: str, target: "str | type[Backend]") -> None:
    """Register a backend class (or a lazy ``"module:Class"`` path) under ``name``."""
    _REGISTRY[name] = target


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
    """"dask://host:8786" -> ("dask", {"address": "dask://host:8786"}); each engine reads its own URL."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        return SCHEME_ALIASES.get(scheme, scheme), {"address": spec}
    return spec, {}


#: Address schemes that name an engine other than themselves (Dask schedulers speak tcp/tls).
SCHEME_ALIASES = {"tcp": "dask", "tls": "dask"}


def get(spec: "str | Backend | None" = "local", **options: Any) -> Backend:
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
    with _shared_lock:
        backend = _shared.get(spec)
        if backend is None:
            backend = _shared[spec] = get(spec)
        return backend


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
