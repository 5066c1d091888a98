"""Services on Ray: deploying a function as a Ray Serve application (``fn.deploy(backend="ray")``),
the ``RayService`` the caller holds, and status/delete of a recorded service from another process.

The application's ``autoscaling_config`` comes from the function's replicas with fast defaults
(``shoal.services.config``). Deploying the hash a cluster serves already is a no-op (Ray Serve
restarts every replica on each ``serve.run``, even unchanged); a new hash rolls the replicas in place.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from shoal.errors import BackendError, ServiceError, ServiceSpecError
from shoal.services.config import (
    NO_QUEUE_LIMIT,
    RAY_DEFAULT_MAX_ONGOING,
    READY_TIMEOUT_S,
    autoscaling_config,
    ray_actor_options,
    replica_bounds,
    service_secrets,
    url_of,
)
from shoal.services.handler import ServiceSettings
from shoal.services.service import Service, ServiceStatus

from .serve_state import ReplicaWatcher, current_status, deployed_hash, serve_details
from .serving import deployment_of

if TYPE_CHECKING:  # pragma: no cover
    from shoal.function import Function
    from shoal.project import Project
    from shoal.store.services import ServiceRecord, ServiceRecords

    from .backend import RayBackend

log = logging.getLogger("shoal.backends.ray")


class RayService(Service):
    """A Ray Serve application serving one shoal function."""

    backend_name = "ray"

    def __init__(self, record: ServiceRecord, records: ServiceRecords, backend: RayBackend | None) -> None:
        super().__init__(
            record.name, record.url, record.function_hash, records.project, record.min_replicas, record.max_replicas
        )
        self.backend_name = record.backend
        self._records = records
        self._backend = backend
        self._watcher: ReplicaWatcher | None = None

    def status(self) -> ServiceStatus:
        return current_status(self.name, self.url, self.function_hash, (self.min_replicas, self.max_replicas))

    def _ended(self) -> bool:
        from ray import serve

        try:
            return self.name not in serve.status().applications
        except Exception:  # noqa: BLE001 - the cluster went away: nothing serves it
            return True

    def watch(self, store: Any) -> None:
        """Record replica count changes as scaling events while this process lives."""
        if self._watcher is None:
            self._watcher = ReplicaWatcher(self.name, store)

    def _delete(self) -> None:
        from ray import serve

        if self._watcher is not None:
            self._watcher.stop()
        serve.delete(self.name)
        self._records.set_state(self.name, "deleted")


def _ray_backend(backend: Any) -> RayBackend:
    import shoal.backends

    if isinstance(backend, str):
        chosen = shoal.backends.shared(backend)
    else:
        chosen = backend
    if getattr(chosen, "name", None) != "ray":
        raise ServiceSpecError(f"backend {backend!r} is not a ray backend; pass 'ray' or 'ray://host:10001'")
    chosen.start()
    return cast("RayBackend", chosen)


def _start_serve(backend: RayBackend, host: str, port: int, details: dict[str, Any] | None) -> None:
    """Start Serve's HTTP proxy on ``host:port`` (a port in use is refused here: Ray's proxy would
    retry forever while the application reports RUNNING), or check the running one listens there."""
    from ray import serve

    if details is not None and details.get("proxies"):
        http = details.get("http_options") or {}
        if (http.get("host"), http.get("port")) != (host, port):
            raise ServiceSpecError(
                f"Ray Serve on this cluster listens on {http.get('host')}:{http.get('port')}, not {host}:{port}; "
                f"deploy with host={http.get('host')!r}, port={http.get('port')} (one HTTP address per cluster)"
            )
        return
    if not backend.remote:
        from shoal.services.local import listen

        listen(host, port).close()
    serve.start(http_options={"host": host, "port": port})


def _wait_until_running(name: str, timeout: float) -> None:
    """Until the application is RUNNING; ``ServiceError`` for DEPLOY_FAILED (a constructor that
    raised) or for replicas that cannot be placed within ``timeout`` (Ray's message says why)."""
    from ray import serve

    deadline = time.monotonic() + timeout
    message = ""
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None:
            state = str(getattr(app.status, "value", app.status))
            deployment = app.deployments.get(name)
            message = (deployment.message if deployment is not None else "") or app.message
            if state == "RUNNING":
                return
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise ServiceError(
                    f"service {name!r} failed to deploy on ray ({state}): {message.strip()}", state="DEPLOY_FAILED"
                )
        time.sleep(0.1)
    raise ServiceError(
        f"service {name!r} was not running on ray after {timeout:g} s: {message.strip() or 'no replica started'}; "
        "a replica reserves the function's CPU request (cpu=...): lower it, raise max, or free the cluster",
        state="DEPLOYING",
    )


def _wait_for_route(host: str, port: int, name: str, timeout: float) -> None:
    """Until Serve's proxy on ``host:port`` lists the application's route."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with opener.open(f"http://{shown}:{port}/-/routes", timeout=5) as answer:
                text = answer.read().decode()
            if f'"/{name}"' in text:
                return
            last = text
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ServiceError(
        f"Ray Serve's proxy on {host}:{port} does not route /{name} after {timeout:g} s ({last[:200]}); is another "
        "server holding that port?"
    )


def deploy_ray(
    fn: Function,
    name: str,
    host: str,
    port: int,
    project: Project,
    scaling: Mapping[str, Any] | None,
    backend: Any,
    limits: Mapping[str, int] | None = None,
) -> RayService:
    """Deploy ``fn`` as the Ray Serve application ``name`` (see the module's docstring).

    ``limits`` (``max_ongoing_requests``, ``max_queued_requests``) go to the deployment's options:
    past both, Serve's proxy answers 503 with its own plain-text body before a replica sees the request."""
    from ray import serve

    from shoal.store.services import ServiceRecords

    config = autoscaling_config(fn, scaling)
    options = ray_actor_options(fn)  # plain env only: secret values travel in the settings below
    values = service_secrets(fn, project)  # a missing secret fails here, before any record
    ray_backend = _ray_backend(backend)
    records = ServiceRecords(project.store)
    details = serve_details()
    _start_serve(ray_backend, host, port, details)
    label = backend if isinstance(backend, str) else (ray_backend.address or "ray")
    minimum, maximum = replica_bounds(fn)
    base = {
        "name": name,
        "function": fn.name,
        "function_hash": fn.hash,
        "backend": label,
        "address": ray_backend.address,
        "pid": None,
        "process_start": None,
        "url": url_of(host, port, name),
        "min_replicas": minimum,
        "max_replicas": maximum,
        "spec": {
            "host": host,
            "port": port,
            "autoscaling_config": config,
            "ray_actor_options": options,
            **dict(limits or {}),
        },
    }
    app = (serve.status().applications or {}).get(name)
    running = app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING"
    current = serve_details()
    if running and deployed_hash(current, name) == fn.hash and _limits_served(current, name, limits):
        service = RayService(records.save(**base, state="running"), records, ray_backend)
        service.watch(project.store)
        return service  # the same version is served already: no serve.run, no replica restarted
    records.save(**base, state="deploying")
    settings = ServiceSettings.in_project(fn, project, name, secrets=values)
    application = deployment_of(
        settings, name=name, autoscaling_config=config, ray_actor_options=options, **dict(limits or {})
    )
    target = serve.RunTarget(application, name=name, route_prefix=f"/{name}")
    try:
        serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        _wait_until_running(name, READY_TIMEOUT_S)
    except Exception as exc:
        records.set_state(name, "failed")
        try:
            serve.delete(name)  # not a service that answers 503 forever
        except Exception:  # noqa: BLE001 - the deploy error is the one to report
            pass
        if isinstance(exc, ServiceError):
            raise
        raise ServiceError(f"service {name!r} failed to deploy on ray: {str(exc).strip()}") from None
    _wait_for_route(host, port, name, READY_TIMEOUT_S)
    service = RayService(records.save(**base, state="running"), records, ray_backend)
    service.watch(project.store)
    return service


def _limits_served(details: dict[str, Any] | None, name: str, limits: Mapping[str, int] | None) -> bool:
    """Whether the running deployment has these overload limits (unset ones: Serve's defaults)."""
    wanted = {"max_ongoing_requests": RAY_DEFAULT_MAX_ONGOING, "max_queued_requests": NO_QUEUE_LIMIT}
    wanted.update(limits or {})
    app = ((details or {}).get("applications") or {}).get(name) or {}
    deployment = (app.get("deployments") or {}).get(name) or {}
    served = deployment.get("deployment_config") or {}
    return all(served.get(key) == value for key, value in wanted.items())


# -- from another process ------------------------------------------------------------------------


def _connected(record: ServiceRecord) -> Any:
    """A context in which Ray is connected to the record's cluster: this process's own connection
    when it has one, else a backend joined for the call (closed after)."""

    import ray

    if ray.is_initialized():
        return contextlib.nullcontext()
    if not record.address:
        raise ServiceError(f"service {record.name!r} has no recorded ray address; it cannot be reached")
    import shoal.backends

    @contextlib.contextmanager
    def joined():
        backend = shoal.backends.get(record.address)
        try:
            backend.start()
            yield
        finally:
            backend.close()

    return joined()


def status_of_record(record: ServiceRecord) -> ServiceStatus:
    """A recorded Ray service's status, asked of its cluster."""
    bounds = (record.min_replicas, record.max_replicas)
    try:
        with _connected(record):
            return current_status(record.name, record.url, record.function_hash, bounds)
    except BackendError as exc:
        return ServiceStatus(
            record.name, "NOT_RUNNING", 0, 0, bounds[0], bounds[1], record.function_hash, record.url, str(exc)
        )


def delete_record(record: ServiceRecord) -> None:
    """Delete a recorded Ray service's application on its cluster (a cluster that is gone serves nothing)."""
    from ray import serve

    try:
        with _connected(record):
            if record.name in serve.status().applications:
                serve.delete(record.name)
    except BackendError as exc:
        log.warning("service %s: its ray cluster cannot be reached (%s); recorded as deleted", record.name, exc)
