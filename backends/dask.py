"""The ``dask`` backend: a ``distributed.Client`` over an embedded LocalCluster, a scheduler address,
or any ``distributed.deploy.Cluster`` the user passes (e.g. a dask-kubernetes ``KubeCluster``).

Workers run ``execute_registered(task)`` in their own processes; the driver records the outcomes.
Elasticity is Dask's own ``Adaptive`` (``cluster.adapt(minimum, maximum)``); its log is the record of
scaling events. Starts of runs reach the driver as Dask events (``log_event``/``subscribe_topic``);
a running attempt is cancelled with ``client.run(stop_attempt, uid)`` on the workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
from typing import Any, Callable

from shoal.errors import BackendError, WorkerLostError
from shoal.execution import RunOutcome, RunTask, execute_registered, stop_attempt

from .base import Backend, BackendFuture, OnStart, ScalingEvent, WorkerInfo

START_TOPIC = "shoal-run-start"
KEY_PREFIX = "shoal-run-"


def run_on_worker(task: RunTask) -> RunOutcome:
    """The task Dask executes: one attempt, announcing its start to the driver."""

    def announce(uid: str, started: float) -> None:
        from distributed import get_worker

        try:
            get_worker().log_event(START_TOPIC, {"uid": uid, "time": started})
        except ValueError:  # not inside a worker (e.g. client.run): nothing to announce
            pass

    return execute_registered(task, announce)


def _uid_of(key: Any) -> str | None:
    text = str(key)
    return text[len(KEY_PREFIX):].split("-")[0] if text.startswith(KEY_PREFIX) else None


class DaskFuture(BackendFuture):
    def __init__(self, uid: str, future: Any, backend: "DaskBackend"):
        self.uid = uid
        self._future = future
        self._backend = backend
        self._settled: tuple[RunOutcome | None, BaseException | None] | None = None
        self._settle_lock = threading.Lock()

    def done(self) -> bool:
        return self._settled is not None or self._future.done()

    def result(self, timeout: float | None = None) -> RunOutcome:
        """The outcome; once fetched, Dask's copy is released so idle workers can be retired."""
        with self._settle_lock:
            if self._settled is None:
                try:
                    self._settled = (self._fetch(timeout), None)
                except TimeoutError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - kept and re-raised on every call
                    self._settled = (None, exc)
                self._future.release()
        outcome, error = self._settled
        if error is not None:
            raise error
        return outcome

    def _fetch(self, timeout: float | None) -> RunOutcome:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        try:
            return self._future.result(timeout=timeout)
        except FutureCancelledError as exc:
            if self._backend._lost_scheduler():
                raise BackendError(f"the dask scheduler went away: {exc}") from None
            raise cf.CancelledError(str(exc)) from None
        except cf.CancelledError:
            raise
        except KilledWorker as exc:
            raise WorkerLostError(f"the dask worker running it died ({exc})") from None
        except TimeoutError:
            raise TimeoutError(f"run {self.uid} not done within {timeout} s") from None
        except Exception as exc:  # noqa: BLE001 - execute() never raises for user code: this is Dask's
            raise BackendError(f"dask failed to run the task: {type(exc).__name__}: {exc}") from exc

    def cancel(self) -> bool:
        """Stop the attempt on the worker running it, or drop it from the queue if none runs it."""
        if self.done():
            return False
        if self._backend._stop_remote(self.uid):
            return True
        self._future.cancel()
        return True

    def add_done_callback(self, callback: Callable[[BackendFuture], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))


class DaskBackend(Backend):
    """Runs on Dask workers.

    ``DaskBackend()`` starts an embedded LocalCluster of worker processes (one thread each) on first
    use; ``DaskBackend("tcp://host:8786")`` (or ``"dask://host:8786"``) connects to a scheduler;
    ``DaskBackend(cluster=KubeCluster(...))`` uses a cluster object. Only clusters it manages (the
    embedded one or a passed object) are scaled and adapted; a bare scheduler address is used as is.
    """

    name = "dask"
    can_install = True

    def __init__(
        self,
        address: str | None = None,
        *,
        cluster: Any = None,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        memory_limit: str | int | None = "auto",
        adapt_interval: float = 1.0,
        adapt_wait_count: int = 3,
        adapt_target_duration: float = 1.0,
        connect_timeout: float = 10.0,
        install_requirements: bool = False,
        **cluster_options: Any,
    ):
        if address is not None and cluster is not None:
            raise BackendError("give the dask backend an address or a cluster, not both")
        if address is not None:
            address = str(address)
            if address.startswith("dask://"):
                address = "tcp://" + address[len("dask://"):]
        self.address = address
        self._cluster = cluster
        self._owns_cluster = False
        self._n_workers = n_workers
        self._threads = threads_per_worker
        self._memory_limit = memory_limit
        self._interval = adapt_interval
        self._wait_count = adapt_wait_count
        self._target_duration = adapt_target_duration
        self._connect_timeout = connect_timeout
        self._install = install_requirements
        self._cluster_options = cluster_options
        self._client: Any = None
        self._adaptive: Any = None
        self._bounds: tuple[int, int] | None = None
        self._starts: dict[str, OnStart] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return self.address is not None or (self._cluster is not None and not self._owns_cluster)

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (started on first use)."""
        self.start()
        return self._client

    @property
    def cluster(self) -> Any:
        self.start()
        return self._cluster

    def start(self) -> "DaskBackend":
        with self._lock:
            if self._closed:
                raise BackendError("this dask backend is closed; create a new one")
            if self._client is not None:
                return self
            try:
                import dask
                from distributed import Client
            except ImportError as exc:
                raise BackendError(f"the dask backend needs dask and distributed: pip install 'shoal[dask]' ({exc})") from None
            if self.address is not None:
                self._client = self._connect(Client)
            else:
                if self._cluster is None:
                    # A lost worker fails the task at once; shoal's own retries decide what happens next.
                    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                        self._cluster = self._local_cluster()
                    self._owns_cluster = True
                self._client = Client(self._cluster, set_as_default=False)
            self._client.subscribe_topic(START_TOPIC, self._on_start_event)
            return self

    def _connect(self, client_class: Any) -> Any:
        try:
            return client_class(self.address, timeout=self._connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise BackendError(
                f"cannot reach the dask scheduler at {self.address} within {self._connect_timeout:g} s "
                f"({type(exc).__name__}); check the address, or start one with `dask scheduler`"
            ) from None

    def _local_cluster(self) -> Any:
        from distributed import LocalCluster

        options = {
            "n_workers": self._n_workers,  # None: one per core, until adapt() or scale() says otherwise
            "threads_per_worker": self._threads,
            "processes": True,
            "dashboard_address": None,
            "silence_logs": logging.ERROR,
            "memory_limit": self._memory_limit,
        }
        options.update(self._cluster_options)
        try:
            return LocalCluster(**options)
        except TypeError as exc:
            raise BackendError(f"invalid option for the embedded dask cluster: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, cluster = self._client, self._cluster if self._owns_cluster else None
            self._client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not fail at exit
                pass
        if cluster is not None:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001
                pass

    def _lost_scheduler(self) -> bool:
        client = self._client
        return client is None or client.status not in ("running", "connecting")

    # -- running --------------------------------------------------------------------------------
    def submit(self, task: RunTask, on_start: OnStart | None = None) -> BackendFuture:
        client = self.client
        if on_start is not None:
            self._starts[task.uid] = on_start
        key = f"{KEY_PREFIX}{task.uid}-{task.attempt}"
        future = client.submit(run_on_worker, task, key=key, pure=False)
        result = DaskFuture(task.uid, future, self)
        result.add_done_callback(lambda _: self._starts.pop(task.uid, None))
        return result

    def _on_start_event(self, event: Any) -> None:
        _, message = event
        callback = self._starts.pop(message.get("uid"), None)
        if callback is not None:
            callback(message["uid"], message["time"])

    def _stop_remote(self, uid: str) -> bool:
        try:
            answers = self._client.run(stop_attempt, uid)
        except Exception:  # noqa: BLE001 - no workers or scheduler gone: nothing is running it
            return False
        return any(answers.values())

    # -- scaling --------------------------------------------------------------------------------
    def _managed_cluster(self, action: str) -> Any:
        cluster = self.cluster
        if cluster is None or not hasattr(cluster, "adapt"):
            raise BackendError(
                f"cannot {action} a dask cluster given only by its scheduler address; "
                f"pass cluster=<a distributed Cluster object> to let shoal scale it"
            )
        return cluster

    def scale(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BackendError(f"scale needs a whole number of workers >= 0, got {n!r}")
        cluster = self._managed_cluster("scale")
        with self._lock:
            if self._adaptive is not None:
                self._adaptive.stop()
                self._adaptive = None
            before = len(cluster.scheduler_info.get("workers", {}))
            cluster.scale(n)
            self._bounds = (n, n)
        self._record_event(before, n, "scale")

    def adapt(self, minimum: int, maximum: int) -> None:
        """Dask ``Adaptive`` between the bounds; equal bounds fix the size. A cluster known only by
        its address is left as its operator configured it."""
        if minimum < 0 or maximum < max(minimum, 1):
            raise BackendError(f"adapt needs 0 <= minimum <= maximum and maximum >= 1, got ({minimum}, {maximum})")
        if self.address is not None and self._cluster is None:
            return
        with self._lock:
            if self._bounds == (minimum, maximum):
                return
            if self._client is None and self._cluster is None and self._n_workers is None:
                self._n_workers = minimum  # start at the lower bound, not one worker per core
        if minimum == maximum:
            self.scale(maximum)
            return
        cluster = self._managed_cluster("adapt")
        with self._lock:
            if self._adaptive is not None:
                self._adaptive.stop()
            self._adaptive = cluster.adapt(
                minimum=minimum,
                maximum=maximum,
                interval=f"{self._interval}s",
                wait_count=self._wait_count,
                # Dask's default (5 s of backlog per worker) leaves short batches on one worker.
                target_duration=f"{self._target_duration}s",
            )
            self._bounds = (minimum, maximum)

    def scaling_events(self) -> list[ScalingEvent]:
        """Fixed-size changes plus every decision of Dask's Adaptive (from its own log)."""
        events = list(super().scaling_events())
        adaptive = self._adaptive
        for stamp, entry in list(getattr(adaptive, "log", ())):
            status = entry.get("status")
            if status == "up":
                events.append(ScalingEvent(stamp, "up", -1, int(entry.get("n", 0)), "adaptive: backlog"))
            elif status == "down":
                gone = entry.get("workers", [])
                events.append(ScalingEvent(stamp, "down", -1, -1, f"adaptive: {len(gone)} idle worker(s) retired"))
        return sorted(events, key=lambda e: e.time)

    def workers(self) -> list[WorkerInfo]:
        client = self.client
        info = client.scheduler_info(n_workers=-1).get("workers", {}) if _accepts_n_workers(client) else client.scheduler_info().get("workers", {})
        processing = client.processing()
        out = []
        for address, worker in sorted(info.items()):
            running = tuple(uid for uid in (_uid_of(k) for k in processing.get(address, ())) if uid)
            out.append(
                WorkerInfo(
                    name=str(worker.get("name", address)),
                    address=address,
                    state="busy" if running else "idle",
                    slots=int(worker.get("nthreads", 1)),
                    running=running,
                    resources=dict(worker.get("resources", {})),
                )
            )
        return out

    @property
    def slots(self) -> int:
        upper = self._bounds[1] if self._bounds else max(1, len(self.workers()))
        return upper * self._threads

    def ensure_requirements(self, requirements: tuple[str, ...]) -> None:
        """Install with Dask's PipInstall worker plugin when allowed; else check the workers (or,
        for the embedded cluster, this environment, which its workers share)."""
        if not requirements:
            return
        if self._install:
            from distributed.diagnostics.plugin import PipInstall

            self.client.register_plugin(PipInstall(packages=list(requirements)), name="shoal-requirements")
            return
        if not self.remote:
            super().ensure_requirements(requirements)
            return
        from shoal.requirements import missing_requirements

        try:
            answers = self.client.run(missing_requirements, list(requirements))
        except Exception:  # noqa: BLE001 - no workers yet: the workers themselves will fail clearly
            return
        missing = sorted({item for found in answers.values() for item in found})
        if missing:
            raise BackendError(
                f"requirements missing on the dask workers: {', '.join(missing)}; install them in the "
                f"workers' image, or pass install_requirements=True to the backend"
            )

    def __repr__(self) -> str:
        where = self.address or (type(self._cluster).__name__ if self._cluster is not None else "embedded LocalCluster")
        return f"<shoal DaskBackend {where}>"


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


__all__ = ["DaskBackend", "run_on_worker"]
