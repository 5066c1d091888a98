"""Ray Serve's state of a shoal service, read from the cluster: the version (function hash) a
deployment serves, its running and target replicas, and a watcher that records replica count
changes as scaling events of ``service:<name>``."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any

from shoal.services.service import ServiceStatus

log = logging.getLogger("shoal.backends.ray")

# Ray 2.60 deprecates ``metrics_interval_s`` for environment variables that were measured to change
# nothing (issue 16), and warns each time a config is parsed, serve.status() included.
warnings.filterwarnings("ignore", message="The `metrics_interval_s` field", category=DeprecationWarning)

HASH_KEY = "function_hash"  # in the deployment's user_config
WATCH_INTERVAL_S = 0.5


def serve_details() -> dict[str, Any] | None:
    """Serve's instance details (HTTP options, applications with their deployment configs and
    target replica counts), or None when Serve is not running on the cluster. ``serve.status()``
    has no configs nor targets, so this reads the controller's details through the client Ray's
    own ``serve.status()`` uses (non-public; kept to this one function)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return dict(client.get_serve_details())


def _deployment(details: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if not details:
        return None
    app = (details.get("applications") or {}).get(name)
    if not app:
        return None
    return (app.get("deployments") or {}).get(name)


def deployed_hash(details: dict[str, Any] | None, name: str) -> str | None:
    deployment = _deployment(details, name)
    if deployment is None:
        return None
    user_config = (deployment.get("deployment_config") or {}).get("user_config") or {}
    return user_config.get(HASH_KEY)


def running_replicas(deployment: Any) -> int:
    """RUNNING replicas of a ``serve.status()`` deployment (None: the deployment is gone)."""
    if deployment is None:
        return 0
    states: dict[str, int] = dict(deployment.replica_states)  # ReplicaState is a str enum
    return int(states.get("RUNNING", 0))


def current_status(name: str, url: str, version: str, bounds: tuple[int, int]) -> ServiceStatus:
    """The application's state and replica counts from ``serve.status()`` (target from the details)."""
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return ServiceStatus(name, "NOT_RUNNING", 0, 0, bounds[0], bounds[1], version, url)
    deployment = app.deployments.get(name)
    running = running_replicas(deployment)
    target = _deployment(serve_details(), name)
    return ServiceStatus(
        name=name,
        state=str(getattr(app.status, "value", app.status)),
        replicas=running,
        target=None if target is None else int(target.get("target_num_replicas", 0)),
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        version=deployed_hash(serve_details(), name) or version,
        url=url,
        message=app.message or (deployment.message if deployment is not None else ""),
    )


class ReplicaWatcher:
    """Polls ``serve.status()`` and records each change of running replicas as a scaling event."""

    def __init__(self, name: str, store: Any) -> None:
        self.name = name
        self._store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"shoal-serve-watch-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from ray import serve

        from ..base import ScalingEvent

        before: int | None = None
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                app = serve.status().applications.get(self.name)
            except Exception:  # noqa: BLE001 - Ray is gone: nothing more to watch
                return
            deployment = app.deployments.get(self.name) if app is not None else None
            running = running_replicas(deployment)
            if before is not None and running != before:
                direction = "up" if running > before else "down"
                event = ScalingEvent(time.time(), direction, before, running, f"ray serve autoscaler: {self.name}")
                try:
                    self._store.record_scaling_events(f"service:{self.name}", [event])
                except Exception as exc:  # noqa: BLE001 - recording must not end the watch
                    log.warning("service %s: scaling event not recorded: %s", self.name, exc)
            before = running
            if app is None:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
