"""How a ``RayBackend`` comes to have a Ray, and how it lets go of it: its four modes.

- ``fixed``: a local instance of its own (``ray.init(address="local")``, never whatever
  ``RAY_ADDRESS`` names), its processes marked so that closing finds and stops every one by PID;
- ``autoscale``: a local autoscaling cluster (``shoal.backends.ray.autoscaling``) for bounds with
  ``min < max``;
- ``join``: a cluster the user named (a Ray Client server or a head's GCS), used as its operator
  configured it;
- ``adopted``: a ``ray.init()`` the user made in this process: used, owned by nobody here.

Ray allows one connection per process, so one backend at a time is open in a process (``_owner``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.errors import BackendError
from shoal.execution import swapped_environment

from ._compat import temp_dir_option
from .connect import init_in_keeper, init_target, join
from .echo import EchoPipe
from .ends import EndWatch
from .future import first_line
from .start import StartPipe

if TYPE_CHECKING:  # pragma: no cover
    from .autoscaling import LocalAutoscalingCluster
    from .future import RayFuture

log = logging.getLogger("shoal.backends.ray")

_owner: RayLifecycle | None = None  # Ray allows one connection per process
_Self = TypeVar("_Self", bound="RayLifecycle")  # typing.Self needs Python 3.11
_owner_lock = threading.RLock()  # re-entered when a failed start stops what it began (_stop_engine)


class RayLifecycle:
    """Starting, joining, closing: the part of ``RayBackend`` that owns Ray's processes."""

    # Set by RayBackend.__init__ (see there).
    _address: str | None
    _num_cpus: int | None
    _num_gpus: int | None
    _slots_per_worker: int
    _dashboard: bool
    _connect_timeout: float
    _idle_timeout: float
    _init_options: dict[str, Any]
    _bounds: tuple[int, int] | None
    _mode: str | None
    _cluster: LocalAutoscalingCluster | None
    _autoscaler_log: list
    _token: str | None
    _release: threading.Event | None
    _watchdog: Any
    _temp_dir: str | None
    _gcs_address: str | None
    _size: int
    _code_refs: dict[str, Any]
    _remotes: dict[tuple, Any]
    _inflight: set[RayFuture]
    _starts: StartPipe | None
    _ends: EndWatch | None
    _echo: EchoPipe | None
    _on_start: dict
    _running: dict[str, str]
    _lock: threading.RLock
    _closed: bool

    def start(self: _Self) -> _Self:
        """Connect on first use, in the mode the constructor and the bounds given so far ask for."""
        global _owner
        with self._lock:
            if self._closed:
                raise BackendError("this ray backend is closed; create a new one")
            if self._mode is not None:
                return self
            try:
                import ray
            except ImportError as exc:
                raise BackendError(f"the ray backend needs ray: pip install 'shoal[ray]' ({exc})") from None
            target = init_target(self._address, self._connect_timeout) if self._address is not None else None
            with _owner_lock:
                if _owner is not None and _owner is not self:
                    raise BackendError(
                        "another RayBackend is open in this process and Ray allows one connection per "
                        "process; close it first (or reuse it)"
                    )
                if ray.is_initialized():
                    self._mode = "adopted"  # the user's own ray.init(): use it, own nothing
                elif target is not None:
                    self._join(ray, target)
                elif self._wants_autoscaling():
                    self._start_autoscaling(ray)
                else:
                    self._start_fixed(ray)
                _owner = self
            return self

    def _wants_autoscaling(self) -> bool:
        return self._num_cpus is None and self._bounds is not None and self._bounds[0] < self._bounds[1]

    def _init_kwargs(self) -> dict[str, Any]:
        """Quiet by default: no worker output or Ray logs on the user's terminal (shoal captures
        the handler's output itself)."""
        return {
            "log_to_driver": False,
            "logging_level": logging.ERROR,
            "configure_logging": True,
            "namespace": "shoal",
            **self._init_options,
        }

    def _join(self, ray: Any, target: str) -> None:
        join(ray, target, self._init_kwargs())
        self._mode = "join"
        self.workers()  # type: ignore[attr-defined]  # the first look: changes from here on are scaling events

    def _start_fixed(self, ray: Any) -> None:
        import tempfile
        import uuid
        from pathlib import Path

        from .processes import MARKER, start_watchdog

        size = self._num_cpus or (self._bounds[1] * self._slots_per_worker if self._bounds else os.cpu_count() or 1)
        self._token = uuid.uuid4().hex
        self._temp_dir = tempfile.mkdtemp(prefix="shoal-ray-")
        # Ray's processes outlive a driver killed by a signal (its agents by minutes): a watchdog
        # stops them, by marker, and removes the folder once this process is gone.
        self._watchdog = start_watchdog(self._token, Path(self._temp_dir))
        options = {"include_dashboard": self._dashboard, **temp_dir_option(self._temp_dir), **self._init_kwargs()}
        if self._num_gpus is not None:
            options["num_gpus"] = self._num_gpus
        try:
            with swapped_environment({MARKER: self._token}):  # Ray's processes inherit it: close() finds them
                self._release = init_in_keeper(ray, address="local", num_cpus=size, **options)
        except Exception as exc:  # noqa: BLE001
            self._mode = "fixed"
            self._stop_engine()
            raise BackendError(f"could not start a local ray instance: {first_line(exc)}") from None
        self._mode, self._size = "fixed", size
        self._gcs_address = ray.get_runtime_context().gcs_address
        self._ends = EndWatch()
        self._starts = StartPipe(self._temp_dir, self._started, self._ends.ended)  # type: ignore[attr-defined]
        self._echo = EchoPipe(self._temp_dir)
        self._record_event(0, size, f"started a local ray instance of {size} CPUs")  # type: ignore[attr-defined]

    def _start_autoscaling(self, ray: Any) -> None:
        from .autoscaling import LocalAutoscalingCluster

        minimum, maximum = self._bounds  # type: ignore[misc]
        cluster = LocalAutoscalingCluster(
            minimum, maximum, cpus_per_worker=self._slots_per_worker, idle_timeout_s=self._idle_timeout
        )
        try:
            address = cluster.start()
            ray.init(address=address, **self._init_kwargs())
        except BaseException as exc:
            cluster.stop()
            if isinstance(exc, Exception):
                raise BackendError(f"could not start the local autoscaling ray cluster: {first_line(exc)}") from None
            raise
        self._cluster, self._mode, self._gcs_address = cluster, "autoscale", address
        self._ends = EndWatch()
        self._starts = StartPipe(str(cluster.root), self._started, self._ends.ended)  # type: ignore[attr-defined]
        self._echo = EchoPipe(str(cluster.root))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_engine()

    def _stop_engine(self) -> None:
        """Disconnect, then stop every process this backend started (by PID)."""
        global _owner
        mode, cluster, token, temp_dir, starts = self._mode, self._cluster, self._token, self._temp_dir, self._starts
        echo, ends = self._echo, self._ends
        doomed = self.pids()  # before Ray's own shutdown orphans the agents (they are found as children)
        self._mode = self._cluster = self._token = self._temp_dir = self._starts = self._echo = self._ends = None
        self._code_refs.clear()
        self._remotes.clear()
        self._on_start.clear()
        self._running.clear()
        if mode is None:
            return
        if starts is not None:
            starts.close()
        if ends is not None:
            ends.close()
        if echo is not None:
            echo.close()
        with _owner_lock:
            if _owner is self:
                _owner = None
        if mode != "adopted":
            import ray

            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - closing must not fail at exit
                pass
            for future in list(self._inflight):  # Ray will not answer for them any more
                future.settle(cf.CancelledError("the ray backend was closed"))
        if mode == "fixed":
            from .processes import cluster_pids, reap_watchdog, stop_processes

            release, self._release = self._release, None
            if release is not None:
                release.set()
            stop_processes(set(doomed) | set(cluster_pids(token) if token else ()))
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None:
                reap_watchdog(watchdog)
            self._record_event(self._size, 0, "stopped the local ray instance")  # type: ignore[attr-defined]
        if cluster is not None:
            self._autoscaler_log = autoscaler_events(cluster)
            cluster.stop()
        if temp_dir:
            import shutil

            shutil.rmtree(temp_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """PIDs of the Ray processes this backend started and that are still alive."""
        from .processes import cluster_pids

        if self._cluster is not None:
            return self._cluster.pids()
        return cluster_pids(self._token) if self._token else []


def autoscaler_events(cluster: LocalAutoscalingCluster) -> list:
    """The node launches and removals Ray's autoscaler logged, with running worker counts."""
    from ..base import ScalingEvent
    from .autoscaling import node_changes

    events, count = [], 0
    for stamp, change, reason in node_changes(cluster.autoscaler_events()):
        before, count = count, max(0, count + change)
        events.append(ScalingEvent(stamp, "up" if change > 0 else "down", before, count, reason))
    return events


__all__ = ["RayLifecycle", "autoscaler_events"]
