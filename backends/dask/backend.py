"""The ``dask`` backend on the driver: a ``distributed.Client`` over an embedded cluster, a scheduler
address, or any ``distributed.deploy.Cluster`` the user passes; submitting, cancelling, scaling."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any

from shoal.errors import BackendError
from shoal.execution import RunBatch, RunTask

from ..base import Backend, BackendFuture, OnStart, ScalingEvent, WorkerInfo
from ..batching import BatchedRuns
from .clusters import EMBEDDED_CONFIG, connect, scheduler_workers, start_local_cluster
from .collector import Collector
from .future import DaskFuture, resources
from .requirements import check_workers, install_requirements
from .shipping import CodeShipper
from .worker import MAX_REFUSED, START_TOPIC, cancel_on_worker, run_on_worker

SCALE_DOWN_WAIT = 30.0  # seconds scale() waits for Dask to retire workers
CLOSE_GRACE = 3.0  # seconds close() gives stopped runs to report their outcome
STOP_COALESCE = 0.02  # seconds stop requests of single batched runs wait for others to go with them
# Dask queues a group of tasks and places them by load, not by where their dependencies are, once
# it holds more than this many tasks per thread of the cluster ("root-ish", see ``.shipping``).
ROOTISH_TASKS_PER_THREAD = 2
THREADS_TTL = 2.0  # seconds the cluster's thread count is reused before it is asked again


class DaskBackend(Backend):
    """Runs on Dask workers.

    ``DaskBackend()`` starts an embedded cluster of worker processes (one thread each) on first
    use, taking LocalCluster's options (``processes=False``: threads of this process);
    ``DaskBackend("tcp://host:8786")`` (or ``"dask://host:8786"``) connects to a scheduler;
    ``DaskBackend(cluster=KubeCluster(...))`` uses a cluster object. Only clusters it manages (the
    embedded one or a passed object) are scaled and adapted; a bare scheduler address is used as is.
    """

    name = "dask"
    batches = True
    prepares_queued = True  # ``.worker._prepare_queued``
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
                address = "tcp://" + address[len("dask://") :]
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
        self._collector: Collector | None = None
        self._adaptive: Any = None
        self._bounds: tuple[int, int] | None = None
        self._futures: dict[str, DaskFuture] = {}  # Dask key -> future of the attempt, until done
        self._cancelled: dict[str, None] = {}  # uids cancelled before they announced a start, newest last
        self._stops: list[str] = []  # single runs of batches to stop, sent together (stop_batched_run)
        self._shipper = CodeShipper(self._many_in_flight)  # each function's code, once per cluster
        self._threads_seen = (-THREADS_TTL, 1)  # (monotonic time, the cluster's threads then)
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
    def shipper(self) -> CodeShipper:
        """The code of each function with tasks in flight, shipped once (``.shipping``)."""
        return self._shipper

    @property
    def cluster(self) -> Any:
        self.start()
        return self._cluster

    def _many_in_flight(self) -> bool:
        """Whether the tasks in flight are enough for Dask to place them by load: only then does a
        function's code travel once, by reference (``.shipping``); fewer carry it inside."""
        return len(self._futures) > ROOTISH_TASKS_PER_THREAD * self._cluster_threads()

    def _cluster_threads(self) -> int:
        """The threads of the cluster's workers, asked again at most every ``THREADS_TTL`` seconds."""
        seen, threads = self._threads_seen
        if time.monotonic() - seen > THREADS_TTL:
            workers = scheduler_workers(self.client).values()
            threads = max(1, sum(int(worker.get("nthreads", 1)) for worker in workers))
            self._threads_seen = (time.monotonic(), threads)
        return threads

    def start(self) -> DaskBackend:
        with self._lock:
            if self._closed:
                raise BackendError("this dask backend is closed; create a new one")
            if self._client is not None:
                return self
            try:
                import dask
                from distributed import Client
            except ImportError as exc:
                raise BackendError(
                    f"the dask backend needs dask and distributed: pip install 'shoal[dask]' ({exc})"
                ) from None
            if self.address is not None:
                self._client = connect(self.address, self._connect_timeout)
            else:
                if self._cluster is None:
                    # A lost worker fails the task at once; shoal's own retries decide what happens next.
                    with dask.config.set({"distributed.scheduler.allowed-failures": 0, **EMBEDDED_CONFIG}):
                        self._cluster = self._local_cluster()
                    self._owns_cluster = True
                self._client = Client(self._cluster, set_as_default=False)
            self._client.subscribe_topic(START_TOPIC, self._on_start_event)
            # The embedded cluster's workers are on this machine: outcomes come straight from them.
            direct = True if self._owns_cluster else None
            self._collector = Collector(self._client, lambda: len(self._futures), direct)
            return self

    def _local_cluster(self) -> Any:
        """The cluster this backend starts and owns (a hook: the Kubernetes launcher makes its own)."""
        return start_local_cluster(self._n_workers, self._threads, self._memory_limit, self._cluster_options)

    def close(self) -> None:
        """Cancel what is in flight (queued tasks are dropped, running ones stopped: both come back
        cancelled), then close the client and, if this backend started it, the cluster."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, cluster = self._client, self._cluster if self._owns_cluster else None
        if client is not None:
            self._cancel_in_flight()
            if self._collector is not None:
                self._collector.stop()
            self._client = None
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not fail at exit
                pass
            self._shipper.clear()
            for future in list(self._futures.values()):  # not settled in time: never left hanging
                future.resolve(None, cf.CancelledError(f"run {future.uid} was cancelled: the backend closed"))
        if cluster is not None:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001
                pass

    def _cancel_in_flight(self) -> None:
        """Drop queued tasks first, then stop running ones (so a freed worker starts nothing new),
        and give their outcomes a moment to arrive."""
        live = [f for f in list(self._futures.values()) if not f.done()]
        if not live:
            return
        waiting = [f for f in live if not f.started]
        for future in live:
            future.cancel_requested = True
        self._remember_cancelled([uid for f in waiting for uid in f.task.uids])
        try:
            self._client.cancel([f._future for f in waiting])
        except Exception:  # noqa: BLE001 - scheduler gone: nothing to drop
            pass
        self._cancel_on_workers([uid for f in live for uid in f.task.uids])
        end = time.monotonic() + CLOSE_GRACE
        for future in live:
            future._done.wait(max(0.0, end - time.monotonic()))

    # -- running --------------------------------------------------------------------------------
    def submit(self, task: RunTask | RunBatch, on_start: OnStart | None = None) -> BackendFuture:
        """One task, after every task submitted before it (``shipping.SUBMISSION_ORDER``): the
        batches of a map start in the order they were sent."""
        self.start()
        future = DaskFuture(task, self, on_start)
        future.launch()
        return future

    def submit_many(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """All tasks in one graph update (``client.map``) rather than one message per task."""
        self.start()
        starts = on_start if on_start is not None else [None] * len(tasks)
        futures = [DaskFuture(task, self, start) for task, start in zip(tasks, starts)]
        keys = [future.next_key() for future in futures]
        by_need: dict[tuple[int, str], list[int]] = {}  # one client.map per GPU count and code
        for index, task in enumerate(tasks):
            by_need.setdefault((task.gpus, task.function_hash), []).append(index)
        for indexes in by_need.values():
            group = [tasks[i] for i in indexes]
            submitted, holds_code = self._shipper.map(
                self._client, run_on_worker, group, [keys[i] for i in indexes], resources=resources(group[0])
            )
            for i, dask_future in zip(indexes, submitted):
                futures[i].attach(dask_future, holds_code=holds_code)
        return list(futures)

    def submit_after(self, task: RunTask, after: Any, prepare: Any, on_start: OnStart | None = None) -> BackendFuture:
        """The producers' Dask futures are the task's dependencies (see ``.dependencies``)."""
        from .dependencies import submit_after

        return submit_after(self, task, after, prepare, on_start)

    def submit_batch(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """The runs as one Dask task; each can still be cancelled on its own (``stop_batched_run``)."""
        self.start()
        return BatchedRuns(self, tasks, on_start or [None] * len(tasks)).submit(self.submit)

    def stop_batched_run(self, uid: str) -> bool:
        """Stop the run where it runs, or keep its batch from starting it. Requests made together
        (Ctrl-C cancels every run of a map one by one) go to the workers in one ``client.run``."""
        self._remember_cancelled([uid])
        with self._lock:
            self._stops.append(uid)
            first = len(self._stops) == 1
        if first:
            threading.Thread(target=self._send_stops, name="shoal-dask-stop", daemon=True).start()
        return True

    def _send_stops(self) -> None:
        time.sleep(STOP_COALESCE)
        with self._lock:
            uids, self._stops = self._stops, []
        self._cancel_on_workers(uids)

    def _on_start_event(self, event: Any) -> None:
        """Runs started on a worker, reported together (``worker.StartReports``; Dask's event loop
        thread; events of other clients too)."""
        _, message = event
        worker = message.get("worker", "")
        for key, uid, started in message.get("starts", ()):
            if uid in self._cancelled:  # cancelled as it started: its Dask future may already be gone
                self._cancelled.pop(uid, None)
                self._stop_soon(uid)
            future = self._futures.get(key)
            if future is not None:
                future._announced(uid, started, worker)

    def _remember_cancelled(self, uids: list[str]) -> None:
        """Keep the uids of runs cancelled before they started, for a start event that may still
        come; bounded, as most never start."""
        for uid in uids:
            self._cancelled[uid] = None
        while len(self._cancelled) > MAX_REFUSED:
            self._cancelled.pop(next(iter(self._cancelled)), None)

    def _stop_soon(self, uid: str) -> None:
        """Stop a run that started after it was cancelled. Dask cannot stop a running task (it only
        drops its result), so without this the handler would hold its worker to the end. From
        another thread: ``client.run`` would block the event loop that delivers start events."""
        threading.Thread(target=self._cancel_on_workers, args=([uid],), name="shoal-dask-stop", daemon=True).start()

    def _cancel_on_workers(self, uids: list[str]) -> bool:
        """Stop these runs' attempts on whichever workers run them (and keep the workers from
        starting them later); True if any was stopped."""
        try:
            answers = self._client.run(cancel_on_worker, uids)
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

    def _scale(self, n: int) -> None:
        cluster = self._managed_cluster("scale")
        with self._lock:
            if self._adaptive is not None:
                self._adaptive.stop()
                self._adaptive = None
            before = len(self._accepting_workers())
            cluster.scale(n)
            self._bounds = (n, n)
        if n < before:
            self._wait_for_retirement(n)
        self._record_event(before, n, "scale")

    def _accepting_workers(self) -> list[str]:
        """Addresses of the workers the scheduler still sends tasks to."""
        info = scheduler_workers(self.client)
        return [address for address, worker in info.items() if worker.get("status", "running") == "running"]

    def _wait_for_retirement(self, n: int) -> None:
        """Dask retires workers asynchronously; tasks submitted meanwhile could still land on the
        leaving ones and exceed the new bound, so wait (bounded) until at most ``n`` accept tasks."""
        end = time.monotonic() + SCALE_DOWN_WAIT
        while len(self._accepting_workers()) > n and time.monotonic() < end:
            time.sleep(0.02)

    def _adapt(self, minimum: int, maximum: int) -> None:
        """Dask ``Adaptive`` between the bounds; equal bounds fix the size. A cluster known only by
        its address is left as its operator configured it."""
        if self.address is not None and self._cluster is None:
            return
        with self._lock:
            if self._bounds == (minimum, maximum):
                return
            if self._client is None and self._cluster is None and self._n_workers is None:
                self._n_workers = minimum  # start at the lower bound, not one worker per core
        if minimum == maximum:
            self._scale(maximum)
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
        """Workers as the scheduler lists them; ``running`` holds this backend's started runs."""
        client = self.client
        info = scheduler_workers(client)
        processing = client.processing()
        started: dict[str, list[str]] = {}
        for future in list(self._futures.values()):
            if future.started and not future.done():
                started.setdefault(future.worker, []).append(future.uid)
        out = []
        for address, worker in sorted(info.items()):
            running = tuple(started.get(address, ()))
            status = worker.get("status", "running")
            state = "closing" if status != "running" else ("busy" if running or processing.get(address) else "idle")
            out.append(
                WorkerInfo(
                    name=str(worker.get("name", address)),
                    address=address,
                    state=state,
                    slots=int(worker.get("nthreads", 1)),
                    running=running,
                    resources=dict(worker.get("resources", {})),
                )
            )
        return out

    @property
    def slots(self) -> int:
        if self._bounds:
            return self._bounds[1] * self._threads
        client = self.client
        return max(1, len(scheduler_workers(client))) * self._threads

    def ensure_gpus(self, gpus: int, function: str) -> None:
        """Dask runs a task needing resources {"GPU": n} only on workers that declare them, and
        waits otherwise: the embedded cluster's workers declare what the backend was given, so a
        shortfall there is an error now; other clusters may still add GPU workers."""
        if gpus <= 0 or self.remote:
            return
        declared = (self._cluster_options.get("resources") or {}).get("GPU", 0)
        if declared < gpus:
            raise BackendError(
                f"function {function!r} asks for {gpus} GPU(s) per run but the embedded dask workers "
                f"declare {declared:g}; on a machine with GPUs use shoal.backends.get('dask', "
                "resources={'GPU': N}), or drop gpu from the function's resources"
            )

    def ensure_requirements(self, requirements: tuple[str, ...]) -> None:
        """Install with Dask's PipInstall plugin when allowed, then check the workers (or, for the
        embedded cluster, this environment, which its workers share)."""
        if not requirements:
            return
        if self._install:
            install_requirements(self.client, requirements)
        if not self.remote:
            super().ensure_requirements(requirements)
            return
        check_workers(self.client, requirements)

    def __repr__(self) -> str:
        where = self.address or (type(self._cluster).__name__ if self._cluster is not None else "embedded cluster")
        return f"<shoal DaskBackend {where}>"


__all__ = ["DaskBackend"]
