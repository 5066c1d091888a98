"""Real-time functions: a ``shoal.Function`` served over HTTP (``fn.deploy(...)``).

``backend="ray"`` (or ``"ray://host:10001"``, or a shoal Ray backend object) makes a Ray Serve
application per function that autoscales between the function's replicas; ``backend="local"``
serves it from one uvicorn process with the same HTTP contract (``shoal.services.handler``).
Deployments are recorded in the project's ``services`` table, with request metrics per interval and
recent failed requests; the functions below reach a service from any process (the CLI).

Importing this package imports no engine, no web server and no database driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError, ServiceError, ServiceSpecError
from .config import DEFAULT_HOST, DEFAULT_PORT, check_host, check_port, check_service_name, request_limits
from .service import Service, ServiceStatus

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function
    from ..project import Project
    from ..store.services import ServiceErrorRecord, ServiceMetricsRecord, ServiceRecord, ServiceRecords

__all__ = [
    "Service",
    "ServiceError",
    "ServiceSpecError",
    "ServiceStatus",
    "delete_service",
    "deploy",
    "get_service",
    "list_services",
    "service_errors",
    "service_metrics",
    "service_status",
]

RAY_SERVING = "shoal.backends.ray.serve_deploy"


def _project(project: Project | None) -> Project:
    if project is not None:
        return project
    from ..project import current_project

    return current_project()


def _records(project: Project | None) -> ServiceRecords:
    from ..store.services import ServiceRecords

    return ServiceRecords(_project(project).store)


def backend_kind(backend: Any) -> str:
    """``local`` or ``ray`` for what ``deploy(backend=...)`` was given; other engines cannot serve."""
    if backend is None or backend == "local":
        return "local"
    if isinstance(backend, str):
        if backend == "ray" or backend.startswith("ray://"):
            return "ray"
    elif getattr(backend, "name", None) in ("local", "ray"):
        return str(backend.name)
    raise ServiceSpecError(
        f"backend {backend!r} cannot serve a function; deploy with backend='local', 'ray' or 'ray://host:10001'"
    )


def deploy(
    fn: Function,
    backend: Any = "local",
    *,
    name: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    project: Project | None = None,
    scaling: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
) -> Service:
    """Serve ``fn`` at ``http://host:port/<name>`` (see ``Function.deploy``).

    Overload, as Ray Serve has it: a replica runs at most ``max_ongoing_requests`` at once (Ray's
    default 5), up to ``max_queued_requests`` more wait (default -1: no limit), and past both a
    request is answered HTTP 503 at once. Unset knobs keep Ray Serve's defaults (on the local
    backend: no limit at all when neither is set)."""
    kind = backend_kind(backend)
    service_name = check_service_name(name if name is not None else fn.name)
    host, port = check_host(host), check_port(port)
    limits = request_limits(max_ongoing_requests, max_queued_requests)
    proj = _project(project)
    if kind == "local":
        from .local import deploy_local

        return deploy_local(fn, service_name, host, port, proj, scaling, limits)
    serving = importlib.import_module(RAY_SERVING)
    return serving.deploy_ray(fn, service_name, host, port, proj, scaling, backend, limits)


def list_services(project: Project | None = None, include_deleted: bool = False) -> list[ServiceRecord]:
    """The project's services as recorded (deleted ones only when asked)."""
    return _records(project).list(include_deleted=include_deleted)


def get_service(name: str, project: Project | None = None) -> ServiceRecord:
    """The record of service ``name`` (``NotFoundError`` naming the fix when there is none)."""
    return _records(project).get(name)


def service_metrics(name: str, project: Project | None = None, limit: int | None = 100) -> list[ServiceMetricsRecord]:
    """Request metrics per replica and interval, newest first."""
    return _records(project).metrics(name, limit)


def service_errors(name: str, project: Project | None = None, limit: int | None = 50) -> list[ServiceErrorRecord]:
    """The service's most recent failed requests, newest first."""
    return _records(project).errors(name, limit)


def service_status(name: str, project: Project | None = None) -> ServiceStatus:
    """Where the service stands now, asked of what serves it (its process, or its Ray cluster)."""
    records = _records(project)
    record = records.get(name)
    if record.state == "deleted":
        raise NotFoundError(f"service {name!r} was deleted; deploy it again with fn.deploy(...) or `shoal deploy`")
    if record.backend == "local":
        from .local import LocalService

        return LocalService(record, records, None).status()
    return importlib.import_module(RAY_SERVING).status_of_record(record)


def delete_service(name: str, project: Project | None = None) -> None:
    """End service ``name`` where it runs (its local process, or its Ray Serve application on the
    cluster its record names) and mark it deleted. Deleting a deleted service does nothing."""
    records = _records(project)
    record = records.get(name)
    if record.state == "deleted":
        return
    if record.backend == "local":
        from .local import live_service, stop_pid

        mine = live_service(records.project, name)
        if mine is not None:
            mine.delete()
            return
        if record.pid is not None:
            stop_pid(record.pid, record.process_start)
    else:
        importlib.import_module(RAY_SERVING).delete_record(record)
    records.set_state(name, "deleted")
