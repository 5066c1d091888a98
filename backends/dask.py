"""The ``dask`` backend: a ``distributed.Client`` over an embedded cluster, a scheduler address, or
any ``distributed.deploy.Cluster`` the user passes (e.g. a dask-kubernetes ``KubeCluster``).

The embedded cluster's scheduler and workers are programs of their own, never children that
re-import the user's ``__main__`` (``dask_embedded``), watched by a process that ends them if the
driver dies (``dask_watchdog``).

Workers run ``execute_registered(task)`` in their own processes; the driver records the outcomes.
Elasticity is Dask's own ``Adaptive`` (``cluster.adapt(minimum, maximum)``); its log is the record of
scaling events. Starts of runs reach the driver as Dask events (``log_event``/``subscribe_topic``);
a running attempt is cancelled with ``client.run(cancel_on_worker, [uid])`` on the workers, which
also keeps a cancelled task that waits on a worker from starting there.

Worker deaths: the embedded cluster lets a task fail at once when its worker dies
(``allowed-failures: 0``), so shoal's own ``retries`` decide whether a run that was executing is run
again. A task that had not started yet when its worker died (it was only queued there) never ran:
it is submitted again, so a dying worker loses only the run it was executing.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import logging
import pickle
import queue
import threading
import time
from typing import Any, Callable

from shoal.errors import BackendError, WorkerLostError
from shoal.execution import RunBatch, RunOutcome, RunTask, execute_batch, execute_registered, never_started, stop_attempt

from .base import Backend, BackendFuture, OnStart, ScalingEvent, SettledFuture, WorkerInfo
from .batching import BatchedRuns

START_TOPIC = "shoal-run-start"
KEY_PREFIX = "shoal-run-"
MAX_RESUBMITS = 3  # a task lost this often with its worker before starting fails as worker lost
SCALE_DOWN_WAIT = 30.0  # seconds scale() waits for Dask to retire workers
CLOSE_GRACE = 3.0  # seconds close() gives stopped runs to report their outcome
MAX_BATCH = 1000  # outcomes fetched by one gather
STOP_COALESCE = 0.02  # seconds stop requests of single batched runs wait for others to go with them
# The embedded cluster's housekeeping, less often than Dask's defaults (event-loop tick 20 ms, system
# monitor 500 ms, memory monitor 100 ms, work stealing 100 ms). Measured here, an idle embedded
# cluster of 2 workers took 11% of a core with the defaults and 5% with these, CPU that runs beside
# the users' CPU-bound runs on a small machine. Memory limits still hold within half a second.
EMBEDDED_CONFIG = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.scheduler.work-stealing-interval": "500ms",
}

log = logging.getLogger("shoal.backends.dask")


def run_on_worker(packed: bytes, key: str) -> RunOutcome | list[RunOutcome]:
    """The task Dask executes: one attempt (or a batch of short runs), announcing each start (and
    where) to the driver. The attempt arrives pickled (see ``pack_task``)."""
    task: RunTask | RunBatch = pickle.loads(packed)

    def announce(uid: str, started: float) -> None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:  # not inside a worker (e.g. client.run): nothing to announce
            return
        worker.log_event(START_TOPIC, {"key": key, "uid": uid, "time": started, "worker": worker.address})

    isolate = _shares_process()
    if isinstance(task, RunBatch):
        return execute_batch(task, announce, refused=_refused_here, isolate=isolate)
    if _refused_here(task.uid):  # cancelled while it waited on this worker: the user's code must not run
        return never_started(task)
    return execute_registered(task, announce, isolate=isolate)


def _shares_process() -> bool:
    """True when another run may execute in this worker's process at the same time: a worker with
    several threads, several workers in one process, or a client (the driver) in it
    (``processes=False``). Runs that set env then run in a process of their own (``isolate``)."""
    from distributed import Client, Worker, get_worker

    try:
        worker = get_worker()
    except ValueError:
        return True
    return worker.state.nthreads > 1 or len(Worker._instances) > 1 or len(Client._instances) > 0


def pack_task(task: RunTask | RunBatch) -> bytes:
    """The attempt as one opaque value. Given the dataclass itself, Dask walks every nested field
    of it looking for collections, in the scheduler, at each submission: measured here ~9 ms of the
    driver's CPU per tuning trial (whose task carries its search space and sampler)."""
    import cloudpickle

    return cloudpickle.dumps(task)


def _refused_here(uid: str) -> bool:
    """True (once) if run ``uid`` was cancelled before it started on this worker."""
    with _refused_lock:
        if uid in _refused:
            del _refused[uid]
            return True
    return False


# Worker side: runs cancelled before they started here, newest last (bounded: most never arrive).
_refused: dict[str, None] = {}
_refused_lock = threading.Lock()
MAX_REFUSED = 10_000


def cancel_on_worker(uids: list[str]) -> list[str]:
    """Run on every worker by ``client.run``: stop these runs where they run, and refuse to start
    the others here. Dask's own cancel reaches a worker later than this call, by another channel,
    so a task queued on a worker could otherwise start after it was cancelled."""
    stopped = []
    with _refused_lock:
        for uid in uids:
            if stop_attempt(uid):
                stopped.append(uid)
            else:
                _refused[uid] = None
        while len(_refused) > MAX_REFUSED:
            del _refused[next(iter(_refused))]
    return stopped


def dask_setup(worker: Any) -> None:
    """Worker preload of the embedded cluster: ignore SIGINT in worker processes.

    Ctrl-C in a terminal reaches the whole process group; the driver then cancels the runs and
    shuts the cluster down itself. A worker killed by the same signal would turn the runs it was
    executing into "worker lost" failures instead of cancelled runs.
    """
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the worker process: leave the default
        pass


class DaskFuture(SettledFuture):
    """One attempt of one run on Dask; resolves when the attempt has ended.

    It owns its callbacks (rather than handing Dask's future out) so that a task lost with its
    worker before it started can be submitted again under a new key without the caller noticing.
    """

    def __init__(self, task: RunTask, backend: "DaskBackend", on_start: OnStart | None):
        super().__init__(task.uid)
        self._task = task
        self._backend = backend
        self._on_start = on_start
        self._future: Any = None
        self._key = ""
        self._submissions = 0
        self.started = False
        self.worker = ""
        self.cancel_requested = False

    # -- driving the Dask future ----------------------------------------------------------------
    def _launch(self) -> None:
        """Submit the attempt (again, after a loss before it started) under a fresh key."""
        key = self._next_key()
        self._attach(
            self._backend.client.submit(
                run_on_worker, pack_task(self._task), key, key=key, pure=False, resources=_resources(self._task)
            )
        )

    def _next_key(self) -> str:
        """A new Dask key per submission: a resubmission must not reuse the erred one."""
        self._submissions += 1
        suffix = f"-{self._submissions}" if self._submissions > 1 else ""
        self._key = f"{KEY_PREFIX}{self.uid}-{self._task.attempt}{suffix}"
        self._backend._futures[self._key] = self
        return self._key

    def _attach(self, future: Any) -> None:
        self._future = future
        future.add_done_callback(self._on_dask_done)

    def _announced(self, uid: str, started: float, worker: str) -> None:
        """The start event of this attempt (of one run of this batch) arrived (Dask's event loop
        thread)."""
        self.started, self.worker = True, worker
        if self._on_start is not None:
            self._on_start(uid, started)

    def _on_dask_done(self, future: Any) -> None:
        """Dask's callback thread: hand the finished task to the backend's collector."""
        self._backend._collector.put(self, future)

    def _settle(self, future: Any, gathered: Any = None) -> None:
        """Resubmit a task lost before it started; else keep its outcome (``gathered``, when the
        collector fetched it in a batch) or error, release Dask's copy and resolve. Dask's copy
        goes at once so idle workers can be retired, and ``result()`` needs no client later."""
        self._backend._futures.pop(str(future.key), None)
        if self._lost_before_start(future) and self._resubmit(future):
            return
        if gathered is not None:
            settled: tuple[RunOutcome | None, BaseException | None] = (gathered, None)
        else:
            try:
                settled = (self._fetch(future), None)
            except BaseException as exc:  # noqa: BLE001 - kept and re-raised by every result() call
                settled = (None, exc)
        future.release()
        self._resolve(*settled)

    def _lost_before_start(self, future: Any) -> bool:
        if future.status != "error" or self.started or self.cancel_requested or self._backend._closed:
            return False
        if self._submissions > MAX_RESUBMITS:
            return False
        from distributed import KilledWorker

        return isinstance(future.exception(), KilledWorker)

    def _resubmit(self, future: Any) -> bool:
        future.release()
        try:
            self._launch()
        except Exception:  # noqa: BLE001 - cannot resubmit (scheduler gone): report the loss instead
            log.debug("could not resubmit run %s", self.uid, exc_info=True)
            return False
        return True

    def _fetch(self, future: Any) -> RunOutcome:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        try:
            return future.result()
        except FutureCancelledError as exc:
            if self.cancel_requested or self._backend._closed:
                raise cf.CancelledError(f"run {self.uid} was cancelled") from None
            # Nobody here cancelled it: Dask dropped it (e.g. the connection to the scheduler was lost).
            raise BackendError(f"dask dropped run {self.uid} ({exc.reason}): {exc.msg or exc}") from None
        except cf.CancelledError:
            raise
        except KilledWorker as exc:
            if self.cancel_requested and not self.started:
                raise cf.CancelledError(f"run {self.uid} was cancelled") from None
            raise WorkerLostError(f"the dask worker running it died ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - execute() never raises for user code: this is Dask's
            raise BackendError(f"dask failed to run the task: {type(exc).__name__}: {exc}") from exc

    # -- the contract ---------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Stop the attempt where it runs (its outcome, with what it logged, comes back as
        cancelled), or drop it from Dask's queue and from any worker holding it if it has not
        started. A started one is never cancelled in Dask: that would drop an outcome just made."""
        if self.done():
            return False
        self.cancel_requested = True
        uids = list(self._task.uids)
        if not self.started:
            self._backend._remember_cancelled(uids)  # it may be starting right now: see _on_start_event
            self._future.cancel()
        self._backend._cancel_on_workers(uids)
        return True


class _Collector:
    """Fetches the outcomes of finished tasks in batches and resolves their futures.

    Dask runs every done-callback on one thread; fetching each outcome there costs a round trip per
    run. Here one ``gather`` fetches all that finished meanwhile. Callbacks of the resolved futures
    (the runner's recording and retries) run on this collector's thread.
    """

    def __init__(self, client: Any):
        self._client = client
        self._queue: queue.Queue[tuple[DaskFuture, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="shoal-dask-collector", daemon=True)
        self._thread.start()

    def put(self, future: DaskFuture, dask_future: Any) -> None:
        self._queue.put((future, dask_future))

    def stop(self) -> None:
        """Settle what is queued, then end the thread (not waited for when called from it)."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_GRACE)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._settle(batch)

    def _next_batch(self) -> list[tuple[DaskFuture, Any]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _settle(self, batch: list[tuple[DaskFuture, Any]]) -> None:
        finished = [(f, d) for f, d in batch if d.status == "finished"]
        try:
            values = self._client.gather([d for _, d in finished]) if finished else []
        except Exception:  # noqa: BLE001 - one could not be fetched: fetch each on its own below
            finished, values = [], []
        gathered = {id(d): value for (_, d), value in zip(finished, values)}
        for future, dask_future in batch:
            try:
                future._settle(dask_future, gathered.get(id(dask_future)))
            except Exception:  # noqa: BLE001 - a failing callback must not stop the collector
                log.exception("settling run %s failed", future.uid)


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
        self._collector: _Collector | None = None
        self._adaptive: Any = None
        self._bounds: tuple[int, int] | None = None
        self._futures: dict[str, DaskFuture] = {}  # Dask key -> future of the attempt, until done
        self._cancelled: dict[str, None] = {}  # uids cancelled before they announced a start, newest last
        self._stops: list[str] = []  # single runs of batches to stop, sent together (stop_batched_run)
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
                    with dask.config.set({"distributed.scheduler.allowed-failures": 0, **EMBEDDED_CONFIG}):
                        self._cluster = self._local_cluster()
                    self._owns_cluster = True
                self._client = Client(self._cluster, set_as_default=False)
            self._client.subscribe_topic(START_TOPIC, self._on_start_event)
            self._collector = _Collector(self._client)
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
        """The embedded cluster: its scheduler and workers are programs of their own (never
        children that re-import the user's ``__main__``; see ``dask_embedded``); with
        ``processes=False``, an in-process LocalCluster of threads."""
        import dask.config
        from dask.system import CPU_COUNT

        options = {"silence_logs": logging.ERROR, "memory_limit": self._memory_limit, **self._cluster_options}
        n_workers = self._n_workers if self._n_workers is not None else max(1, CPU_COUNT // max(1, self._threads))
        if not options.pop("processes", True):
            return self._threads_cluster(n_workers, options)
        from .dask_embedded import EmbeddedClusterError, start_embedded

        # Dask's sampling profiler interrupts each worker every 10 ms for a dashboard this
        # cluster does not serve; measured here it cost CPU-bound runs about 5% of their core.
        unprofiled = {"distributed": {"worker": {"profile": {"enabled": False}}}}
        try:
            return start_embedded(
                n_workers=n_workers,
                threads_per_worker=self._threads,
                options=options,
                config=dask.config.merge(dask.config.config, unprofiled),
                preload=__name__,  # dask_setup: worker processes leave Ctrl-C to the driver
            )
        except EmbeddedClusterError as exc:
            raise BackendError(f"the embedded dask cluster did not start: {exc}") from None

    def _threads_cluster(self, n_workers: int, options: dict[str, Any]) -> Any:
        from distributed import LocalCluster

        # Without a dashboard the scheduler still serves HTTP, on port 8787 unless told otherwise:
        # a random local port avoids "port in use" warnings and exposing it on every interface.
        options["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **(options.get("scheduler_kwargs") or {})}
        options.setdefault("dashboard_address", None)
        try:
            return LocalCluster(n_workers=n_workers, threads_per_worker=self._threads, processes=False, **options)
        except (TypeError, RuntimeError) as exc:
            raise BackendError(f"the embedded dask cluster did not start (check its options): {_root_cause(exc)}") from None

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
            self._collector.stop()
            self._client = None
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not fail at exit
                pass
            for future in list(self._futures.values()):  # not settled in time: never left hanging
                future._resolve(None, cf.CancelledError(f"run {future.uid} was cancelled: the backend closed"))
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
        self._remember_cancelled([uid for f in waiting for uid in f._task.uids])
        try:
            self._client.cancel([f._future for f in waiting])
        except Exception:  # noqa: BLE001 - scheduler gone: nothing to drop
            pass
        self._cancel_on_workers([uid for f in live for uid in f._task.uids])
        end = time.monotonic() + CLOSE_GRACE
        for future in live:
            future._done.wait(max(0.0, end - time.monotonic()))

    # -- running --------------------------------------------------------------------------------
    def submit(self, task: RunTask, on_start: OnStart | None = None) -> BackendFuture:
        self.start()
        future = DaskFuture(task, self, on_start)
        future._launch()
        return future

    def submit_many(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """All tasks in one graph update (``client.map``) rather than one message per task."""
        self.start()
        starts = on_start if on_start is not None else [None] * len(tasks)
        futures = [DaskFuture(task, self, start) for task, start in zip(tasks, starts)]
        keys = [future._next_key() for future in futures]
        by_need: dict[int, list[int]] = {}  # one client.map per GPU count (resources apply to a whole map)
        for index, task in enumerate(tasks):
            by_need.setdefault(task.gpus, []).append(index)
        for indexes in by_need.values():
            submitted = self._client.map(
                run_on_worker,
                [pack_task(tasks[i]) for i in indexes],
                [keys[i] for i in indexes],
                key=[keys[i] for i in indexes],
                pure=False,
                resources=_resources(tasks[indexes[0]]),
            )
            for i, dask_future in zip(indexes, submitted):
                futures[i]._attach(dask_future)
        return futures

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
        """A run started on a worker (Dask's event loop thread; events of other clients too)."""
        _, message = event
        uid = message.get("uid")
        if uid in self._cancelled:  # cancelled as it started: its Dask future may already be gone
            self._cancelled.pop(uid, None)
            self._stop_soon(uid)
        future = self._futures.get(message.get("key"))
        if future is not None:
            future._announced(uid, message["time"], message.get("worker", ""))

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

    def scale(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BackendError(f"scale needs a whole number of workers >= 0, got {n!r}")
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
        info = self.client.scheduler_info(**_all_workers(self.client)).get("workers", {})
        return [address for address, worker in info.items() if worker.get("status", "running") == "running"]

    def _wait_for_retirement(self, n: int) -> None:
        """Dask retires workers asynchronously; tasks submitted meanwhile could still land on the
        leaving ones and exceed the new bound, so wait (bounded) until at most ``n`` accept tasks."""
        end = time.monotonic() + SCALE_DOWN_WAIT
        while len(self._accepting_workers()) > n and time.monotonic() < end:
            time.sleep(0.02)

    def adapt(self, minimum: int, maximum: int) -> None:
        """Dask ``Adaptive`` between the bounds; equal bounds fix the size. A cluster known only by
        its address is left as its operator configured it."""
        if not (_whole(minimum) and _whole(maximum)) or minimum < 0 or maximum < max(minimum, 1):
            raise BackendError(f"adapt needs 0 <= minimum <= maximum and maximum >= 1, got ({minimum!r}, {maximum!r})")
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
        """Workers as the scheduler lists them; ``running`` holds this backend's started runs."""
        client = self.client
        info = client.scheduler_info(**_all_workers(client)).get("workers", {})
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
        return max(1, len(client.scheduler_info(**_all_workers(client)).get("workers", {}))) * self._threads

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
            self._install_requirements(requirements)
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

    def _install_requirements(self, requirements: tuple[str, ...]) -> None:
        """Register PipInstall under a name per requirement set: Dask skips a plugin whose name is
        already registered, so one fixed name would install only the first function's packages."""
        from distributed.diagnostics.plugin import PipInstall

        name = requirements_plugin_name(requirements)
        try:
            self.client.register_plugin(PipInstall(packages=list(requirements)), name=name)
        except Exception as exc:  # noqa: BLE001 - pip's failure, relayed by Dask
            raise BackendError(
                f"installing requirements {', '.join(requirements)} on the dask workers failed: "
                f"{str(exc).strip()[-500:]}"
            ) from None

    def __repr__(self) -> str:
        where = self.address or (type(self._cluster).__name__ if self._cluster is not None else "embedded cluster")
        return f"<shoal DaskBackend {where}>"


def _resources(task: RunTask) -> dict[str, int] | None:
    """Dask worker resources one run holds (only GPUs: CPU slots are the worker threads)."""
    return {"GPU": task.gpus} if task.gpus else None


def requirements_plugin_name(requirements: tuple[str, ...]) -> str:
    """The name of the PipInstall plugin of one set of requirements (same set, same name)."""
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    return f"shoal-requirements-{digest}"


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@functools.cache
def _lists_all_workers(client_class: type) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client_class.scheduler_info).parameters


def _all_workers(client: Any) -> dict[str, Any]:
    """``scheduler_info`` lists only a few workers unless asked for all (newer distributed)."""
    return {"n_workers": -1} if _lists_all_workers(type(client)) else {}


__all__ = ["DaskBackend", "cancel_on_worker", "dask_setup", "requirements_plugin_name", "run_on_worker"]
