"""The ``ray`` backend: Ray tasks on a local instance of its own, a local autoscaling cluster, or a
cluster the user names.

``RayBackend()`` starts its own instance on first use (``ray.init(address="local")``: it never joins
whatever ``RAY_ADDRESS`` or ``/tmp/ray/ray_current_cluster`` names). Its size is fixed: ``num_cpus``,
or ``max x slots_per_worker`` of the bounds given to ``adapt(min, max)``. Bounds with ``min < max``
start a local autoscaling cluster instead (``shoal.backends.ray_cluster``: Ray's own autoscaler with
the fake multi-node provider, worker nodes of ``slots_per_worker`` CPUs between the bounds).
``RayBackend("ray://host:10001")`` or ``RayBackend(address="auto")`` joins an existing
cluster and uses it as its operator configured it.

Each run is one Ray task of one CPU (so at most ``max x slots`` run at once) executing
``execute_registered(task)`` on a worker; Ray retries nothing (``max_retries=0``): shoal's own
``retries`` decide. Cancelling sends Ray's KeyboardInterrupt into a running task, which shoal records
as cancelled; a task that ignores it is killed after ``cancel_grace`` seconds.

Watched runs' output reaches the driver live through a pipe (``shoal.backends.ray_echo``), and a
watchdog process stops an instance of our own if the driver dies without closing it (SIGTERM,
SIGKILL): Ray's agents outlive a killed driver by minutes otherwise.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import os
import pickle
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from shoal.errors import BackendError, WorkerLostError
from shoal.execution import RunBatch, RunOutcome, RunTask, execute_batch, execute_registered

from .base import Backend, BackendFuture, OnStart, ScalingEvent, WorkerInfo
from .batching import BatchedRuns
from .ray_echo import EchoPipe

log = logging.getLogger("shoal.backends.ray")

INLINE_CODE = 64 * 1024  # characters of code shipped inside each task; larger code goes once per function
#: Ray exceptions that mean the process or node running the task died.
_LOST = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError", "ObjectLostError")


# -- the worker side ---------------------------------------------------------------------------------
_code_cache: dict[str, Any] = {}  # function hash -> Code, in each worker process
_start_pipes: dict[str, int] = {}  # path of the driver's start pipe -> open fd (-1: unusable here)
_node_id: list[str] = []


def run_on_worker(payload: bytes, code: list | None = None) -> RunOutcome | bytes:
    """The Ray task: one attempt of one run, or a batch of short runs (their outcomes come back
    packed, see ``pack``).

    ``payload`` is ``(task, start pipe path, echo pipe path)`` pickled by the driver (see ``pack``).
    Large code travels once per function as an object in Ray's store: ``code`` then holds its
    reference inside a list, so Ray does not fetch it for every task, only a worker that has not seen
    the function yet. The pipes are the driver's, when the driver is on this machine; the echo pipe
    is given for watched runs only (see ``shoal.backends.ray_echo``).
    """
    from shoal.logcapture import echo_to

    from .ray_echo import sink

    task, starts, echo = pickle.loads(payload)
    announce = _announcer(starts) if starts else None
    with echo_to(sink(echo) if echo else None):
        if isinstance(task, RunBatch):
            for member in task.tasks:
                _fill_code(member, code)
            return pack(execute_batch(task, announce, cancel_ends_batch=True))
        _fill_code(task, code)
        return execute_registered(task, announce)


def _members(task: RunTask | RunBatch) -> list[RunTask]:
    return task.tasks if isinstance(task, RunBatch) else [task]


def _fill_code(task: RunTask, code: list | None) -> None:
    if task.code is None:
        cached = _code_cache.get(task.function_hash)
        if cached is None:
            import ray

            cached = _code_cache[task.function_hash] = ray.get(code[0])
        task.code = cached


def _announcer(path: str) -> Callable[[str, float], None]:
    """``on_start`` for a worker: one line into the driver's pipe (atomic, never blocks; a line that
    does not fit while the driver lags is dropped: the run then shows as running only when done)."""

    def announce(uid: str, started: float) -> None:
        fd = _start_pipes.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                fd = -1  # not on the driver's machine
            _start_pipes[path] = fd
        if fd >= 0:
            try:
                os.write(fd, f"{uid} {started!r} {_this_node()}\n".encode())
            except OSError:
                pass

    return announce


def _this_node() -> str:
    if not _node_id:
        import ray

        _node_id.append(ray.get_runtime_context().get_node_id())
    return _node_id[0]


# -- the driver side ---------------------------------------------------------------------------------
_MAIN_GLOBAL = b"\x8c\x08__main__"  # how a pickle names the module __main__ (a string exactly "__main__")


def pack(value: Any) -> bytes:
    """A task crosses Ray as one bytes argument rather than objects Ray pickles one by one.

    Measured here: Ray serialises each argument separately, and cloudpickle's per-class lookups cost
    more than the whole task submission; the standard pickler is C. Anything it cannot ship by
    reference (values of classes or functions defined in ``__main__``, lambdas) goes by cloudpickle.
    """
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if _MAIN_GLOBAL not in data:
            return data
    except Exception:  # noqa: BLE001 - not picklable by reference: cloudpickle ships it by value
        pass
    import cloudpickle

    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class _StartPipe:
    """Starts of runs, from workers on this machine, through a named pipe one thread reads.

    Ray does not tell the driver when a task starts; an actor or a streaming task would (measured:
    both cost more than the task itself), while a line into a local pipe costs microseconds. Joined
    clusters (workers on other machines) have no start reports.
    """

    def __init__(self, folder: str, deliver: Callable[[str, float, str], None]):
        self.path = os.path.join(folder, "starts.pipe")
        os.mkfifo(self.path, 0o600)
        self._fd = os.open(self.path, os.O_RDWR)  # read-write: no end-of-file while workers come and go
        try:
            import fcntl

            fcntl.fcntl(self._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass  # the default 64 KiB holds about a thousand lines
        self._deliver = deliver
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="shoal-ray-starts", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        rest = b""
        while not self._closed:
            chunk = os.read(self._fd, 1 << 16)
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                parts = line.decode(errors="replace").split()
                if len(parts) == 3:
                    try:
                        self._deliver(parts[0], float(parts[1]), parts[2])
                    except Exception:  # noqa: BLE001 - a driver callback must not end the reader
                        log.exception("ray: delivering a run start failed")
        os.close(self._fd)

    def close(self) -> None:
        self._closed = True
        try:
            os.write(self._fd, b"\n")  # wake the reader
        except OSError:
            pass
        self._thread.join(5)


class RayFuture(BackendFuture):
    """A Ray ObjectRef of a RunOutcome; its value (or Ray's error) arrives through Ray's completion
    callback and is kept."""

    def __init__(self, task: RunTask | RunBatch, ref: Any, backend: "RayBackend", echo: EchoPipe | None = None):
        self.uid = task.uid
        self._echo = echo  # the pipe its watched output comes through: shown before it settles
        self.uids = task.uids
        self._batch = isinstance(task, RunBatch)
        self._attempt = task.attempt
        self._ref = ref
        self._backend = backend
        self._killed = False  # force-cancelled while running
        self._value: Any = None
        self._done = threading.Event()
        self._callbacks: list[Callable[[BackendFuture], None]] = []
        self._lock = threading.Lock()
        ref._on_completed(self._settle)

    def _settle(self, value: Any) -> None:
        with self._lock:
            if self._done.is_set():
                return  # already settled (the backend closed before Ray answered)
            if self._echo is not None:
                self._echo.flush()
            if isinstance(value, bytes):  # a batch's outcomes
                try:
                    value = pickle.loads(value)
                except Exception as exc:  # noqa: BLE001 - reported as the engine's failure
                    value = exc
            self._value = value
            self._ref = None  # let Ray free the stored outcome
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call_safely(callback, self)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The RunOutcome (a list of them for a batch)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.uid} not done within {timeout} s")
        value = self._value
        if isinstance(value, (RunOutcome, list)):
            return value
        if self._killed:
            if self._batch:
                raise cf.CancelledError(f"batch {self.uid} was stopped by killing its worker")
            return self._killed_outcome()
        raise _engine_error(value)

    def _killed_outcome(self) -> RunOutcome:
        """A run stopped by killing its worker ran, so it is not "cancelled before it started"."""
        grace = self._backend._cancel_grace
        message = f"run was cancelled while running; it ignored the interrupt for {grace:g} s, so its worker was killed"
        return RunOutcome(
            uid=self.uid,
            state="cancelled",
            attempt=self._attempt,
            started_at=None,  # the driver knows it from the start report
            ended_at=time.time(),
            error={"type": "CancelledError", "message": message, "traceback": ""},
        )

    def cancel(self) -> bool:
        """Drop the task if pending; interrupt it if running (it ends as cancelled)."""
        ref = self._ref
        if ref is None or self.done():
            return False
        import ray

        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - finished or lost meanwhile: nothing left to cancel
            return False
        self._backend._kill_later(self)
        return True

    def _kill(self) -> None:
        """Force-cancel a task that did not stop on its KeyboardInterrupt (kills its worker)."""
        ref = self._ref
        if ref is None or self.done():
            return
        import ray

        self._killed = True
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001
            pass

    def add_done_callback(self, callback: Callable[[BackendFuture], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        _call_safely(callback, self)


def _call_safely(callback: Callable[[BackendFuture], None], future: BackendFuture) -> None:
    try:
        callback(future)
    except Exception:  # noqa: BLE001 - as concurrent.futures: a failing callback is logged
        log.exception("ray: a done callback failed")


def _engine_error(exc: BaseException) -> BaseException:
    """Ray's failure of a task as the contract names it."""
    import ray.exceptions as rex

    if not isinstance(exc, BaseException):
        return BackendError(f"ray returned {type(exc).__name__} where a run outcome was expected")
    if isinstance(exc, (cf.CancelledError, rex.TaskCancelledError)):
        return cf.CancelledError(str(exc).splitlines()[0] if str(exc) else "cancelled")
    names = {kind.__name__ for kind in type(exc).__mro__}
    if names & set(_LOST):
        return WorkerLostError(f"the ray worker running it died ({type(exc).__name__}: {_first_line(exc)})")
    if isinstance(exc, rex.RuntimeEnvSetupError):
        return BackendError(f"ray could not set up the run's environment (requirements): {_first_line(exc)}")
    if isinstance(exc, Exception):
        return BackendError(f"ray failed to run the task: {type(exc).__name__}: {_first_line(exc)}")
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# -- reaching a cluster ------------------------------------------------------------------------------
def _resolve_auto() -> str:
    """What ``address="auto"`` names: RAY_ADDRESS, else the cluster ``ray start`` last recorded."""
    named = os.environ.get("RAY_ADDRESS", "").strip()
    if named and named != "auto":
        return named
    recorded = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster")
    try:
        with open(recorded) as handle:
            text = handle.read().strip()
    except OSError:
        text = ""
    if not text:
        raise BackendError("address='auto' found no Ray cluster: RAY_ADDRESS is not set and `ray start` recorded none")
    return text


def _probe(address: str, timeout: float) -> str:
    """Which Ray endpoint answers at ``host:port``: "gcs" (a head's GCS) or "client" (a Ray Client
    server); BackendError if nothing does within ``timeout`` s (ray.init itself waits minutes)."""
    import grpc

    end = time.monotonic() + timeout
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        ask = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            ask(b"", timeout=max(1.0, end - time.monotonic()))
            return "gcs"
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "client"
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return "gcs"
            raise BackendError(f"the Ray endpoint at {address} did not answer ({code.name})") from None
    except grpc.FutureTimeoutError:
        raise BackendError(
            f"cannot reach a Ray cluster at {address} within {timeout:g} s; check the address, or start one "
            f"with `ray start --head`"
        ) from None
    finally:
        channel.close()


def _split(address: str) -> str:
    """"ray://host:port" or "host:port" -> "host:port"."""
    bare = address.split("://", 1)[1] if "://" in address else address
    if ":" not in bare:
        raise BackendError(f"a ray address is host:port or ray://host:port, got {address!r}")
    return bare.rstrip("/")


# -- the backend -------------------------------------------------------------------------------------
_owner: "RayBackend | None" = None  # Ray allows one connection per process
_owner_lock = threading.Lock()


class RayBackend(Backend):
    """Runs on Ray.

    ``RayBackend()`` starts a local instance of its own on first use: fixed-size (``num_cpus``, or
    ``max x slots_per_worker`` of the bounds), or autoscaling between the bounds when ``min < max``;
    ``adapt``/``scale`` to other bounds restart a fixed instance. ``RayBackend("ray://host:10001")``
    (a Ray Client server, or a head's GCS port) or ``RayBackend(address="auto")`` joins a cluster.
    Ray allows one connection per process, so one RayBackend at a time can be open in a process.
    """

    name = "ray"
    batches = True
    can_install = True

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        slots_per_worker: int = 1,
        include_dashboard: bool = False,
        connect_timeout: float = 15.0,
        install_requirements: bool = False,
        idle_timeout_s: float = 6.0,
        cancel_grace: float = 5.0,
        **init_options: Any,
    ):
        for label, value in (("num_cpus", num_cpus), ("slots_per_worker", slots_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BackendError(f"{label} must be a whole number of at least 1 for the ray backend, got {value!r}")
        self._address = None if address is None else str(address)
        self._num_cpus = num_cpus
        self._num_gpus = num_gpus
        self._slots_per_worker = slots_per_worker
        self._dashboard = include_dashboard
        self._connect_timeout = connect_timeout
        self._install = install_requirements
        self._idle_timeout = idle_timeout_s
        self._cancel_grace = cancel_grace
        self._init_options = init_options
        self._bounds: tuple[int, int] | None = None
        self._mode: str | None = None  # fixed, autoscale, join, adopted (a ray.init() of the user's)
        self._cluster: Any = None  # LocalAutoscalingCluster when autoscaling
        self._autoscaler_log: list[ScalingEvent] = []  # its events, kept when it is stopped
        self._token: str | None = None  # marks the processes of a fixed instance
        self._release: threading.Event | None = None  # ends the thread that started the fixed instance
        self._watchdog: Any = None  # stops the fixed instance if this process dies without closing
        self._temp_dir: str | None = None
        self._gcs_address: str | None = None
        self._size = 0  # CPUs of a fixed instance
        self._seen_nodes: int | None = None  # worker nodes of a joined cluster at the last look
        self._code_refs: dict[str, Any] = {}  # function hash -> ObjectRef of its Code
        self._remotes: dict[tuple, Any] = {}  # task options -> Ray remote function
        self._pip: tuple[str, ...] = ()
        self._inflight: set[RayFuture] = set()  # submitted, not yet done
        self._starts: _StartPipe | None = None
        self._echo: EchoPipe | None = None  # watched runs' output, from workers on this machine
        self._on_start: dict[str, OnStart] = {}  # uid -> the driver's callback, until the run starts
        self._running: dict[str, str] = {}  # uid -> node id, from its start until its end
        self._lock = threading.RLock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        """True when joined to a cluster the user named (its workers may be other machines)."""
        return self._address is not None

    @property
    def address(self) -> str | None:
        """How another process reaches the same cluster (``get("ray://...")``): the address given,
        or, once started, the GCS of the instance this backend started."""
        if self._address is not None:
            return self._address
        return f"ray://{self._gcs_address}" if self._gcs_address else None

    def start(self) -> "RayBackend":
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
            target = self._reachable_target() if self._address is not None else None
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

    def _reachable_target(self) -> str:
        """The address to give ray.init, checked first (ray.init waits minutes on a bad one): a
        Ray Client server as ray://host:port, a head's GCS as host:port."""
        address = _resolve_auto() if self._address == "auto" else self._address
        target = _split(address)
        return f"ray://{target}" if _probe(target, self._connect_timeout) == "client" else target

    def _join(self, ray: Any, target: str) -> None:
        for attempt in (1, 2):
            try:
                ray.init(address=target, **self._init_kwargs())
                break
            except ConnectionAbortedError as exc:
                # Ray Client's server sometimes fails to start the server for a new client (seen
                # here about one time in five); a second try gets a new one.
                if attempt == 2:
                    raise BackendError(f"cannot join the ray cluster at {target}: {_first_line(exc)}") from None
                log.warning("ray: the client server at %s failed to serve this client; trying again", target)
                ray.shutdown()
            except Exception as exc:  # noqa: BLE001 - version mismatch, refused job, ...
                raise BackendError(f"cannot join the ray cluster at {target}: {_first_line(exc)}") from None
        self._mode = "join"
        self.workers()  # the first look: changes from here on are scaling events

    def _start_fixed(self, ray: Any) -> None:
        import tempfile
        import uuid

        from pathlib import Path

        from .ray_cluster import MARKER, start_watchdog

        size = self._num_cpus or (self._bounds[1] * self._slots_per_worker if self._bounds else os.cpu_count() or 1)
        self._token = uuid.uuid4().hex
        self._temp_dir = tempfile.mkdtemp(prefix="shoal-ray-")
        # Ray's processes outlive a driver killed by a signal (its agents by minutes): a watchdog
        # stops them, by marker, and removes the folder once this process is gone.
        self._watchdog = start_watchdog(self._token, Path(self._temp_dir))
        options = {"include_dashboard": self._dashboard, "_temp_dir": self._temp_dir, **self._init_kwargs()}
        if self._num_gpus is not None:
            options["num_gpus"] = self._num_gpus
        try:
            with _marked_environment(MARKER, self._token):  # so that close() can find every process it made
                self._release = _init_in_keeper(ray, address="local", num_cpus=size, **options)
        except Exception as exc:  # noqa: BLE001
            self._mode = "fixed"
            self._stop_engine()
            raise BackendError(f"could not start a local ray instance: {_first_line(exc)}") from None
        self._mode, self._size = "fixed", size
        self._gcs_address = ray.get_runtime_context().gcs_address
        self._starts = _StartPipe(self._temp_dir, self._started)
        self._echo = EchoPipe(self._temp_dir)
        self._record_event(0, size, f"started a local ray instance of {size} CPUs")

    def _start_autoscaling(self, ray: Any) -> None:
        from .ray_cluster import LocalAutoscalingCluster

        minimum, maximum = self._bounds
        cluster = LocalAutoscalingCluster(
            minimum, maximum, cpus_per_worker=self._slots_per_worker, idle_timeout_s=self._idle_timeout
        )
        try:
            address = cluster.start()
            ray.init(address=address, **self._init_kwargs())
        except BaseException as exc:
            cluster.stop()
            if isinstance(exc, Exception):
                raise BackendError(f"could not start the local autoscaling ray cluster: {_first_line(exc)}") from None
            raise
        self._cluster, self._mode, self._gcs_address = cluster, "autoscale", address
        self._starts = _StartPipe(str(cluster.root), self._started)
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
        echo = self._echo
        doomed = self.pids()  # before Ray's own shutdown orphans the agents (they are found as children)
        self._mode = self._cluster = self._token = self._temp_dir = self._starts = self._echo = None
        self._code_refs.clear()
        self._remotes.clear()
        self._on_start.clear()
        self._running.clear()
        if mode is None:
            return
        if starts is not None:
            starts.close()
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
                future._settle(cf.CancelledError("the ray backend was closed"))
        if mode == "fixed":
            from .ray_cluster import cluster_pids, reap_watchdog, stop_processes

            release, self._release = self._release, None
            if release is not None:
                release.set()
            stop_processes(set(doomed) | set(cluster_pids(token)))
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None:
                reap_watchdog(watchdog)
            self._record_event(self._size, 0, "stopped the local ray instance")
        if cluster is not None:
            self._autoscaler_log = _autoscaler_events(cluster)
            cluster.stop()
        if temp_dir:
            import shutil

            shutil.rmtree(temp_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """PIDs of the Ray processes this backend started and that are still alive."""
        from .ray_cluster import cluster_pids

        if self._cluster is not None:
            return self._cluster.pids()
        return cluster_pids(self._token) if self._token else []

    # -- running --------------------------------------------------------------------------------
    def submit(self, task: RunTask | RunBatch, on_start: OnStart | None = None) -> BackendFuture:
        """One Ray task per attempt (or per batch); ``on_start`` is called when a run starts on a
        worker of this machine (the own instance), not for joined clusters."""
        self.start()
        starts = self._starts if on_start is not None else None
        if starts is not None:
            with self._lock:
                for uid in task.uids:
                    self._on_start[uid] = on_start
        shipped, code = self._code_arguments(task)
        echo = self._echo if any(member.echo for member in _members(task)) else None
        payload = pack((shipped, starts.path if starts else None, echo.path if echo else None))
        remote = self._remote_for(task)
        ref = remote.remote(payload, code) if code else remote.remote(payload)
        future = RayFuture(task, ref, self, echo)
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._finished)
        return future

    def submit_batch(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """The runs as one Ray task; cancelling all of them interrupts it (see ``execute_batch``)."""
        return BatchedRuns(self, tasks, on_start or [None] * len(tasks)).submit(self.submit)

    def _code_arguments(self, task: RunTask | RunBatch) -> tuple[RunTask | RunBatch, list]:
        """Small code inline in each task (cheapest, measured), large code once per function through
        Ray's object store."""
        members = _members(task)
        code = members[0].code
        if code is None or len(code.text) + len(code.shipped_value() or "") <= INLINE_CODE:
            return task, []
        ref = self._code_refs.get(task.function_hash)
        if ref is None:
            import ray

            ref = self._code_refs[task.function_hash] = ray.put(code)
        shipped = [copy.copy(member) for member in members]
        for member in shipped:
            member.code = None
        return (RunBatch(shipped) if isinstance(task, RunBatch) else shipped[0]), [ref]

    def _started(self, uid: str, started: float, node: str) -> None:
        with self._lock:
            callback = self._on_start.pop(uid, None)
            if callback is not None:
                self._running[uid] = node
        if callback is not None:
            callback(uid, started)

    def _finished(self, future: RayFuture) -> None:
        with self._lock:
            self._inflight.discard(future)
            for uid in future.uids:
                self._on_start.pop(uid, None)
                self._running.pop(uid, None)

    def _remote_for(self, task: RunTask) -> Any:
        """The Ray remote function with this task's options (cached: ``.options()`` is not free)."""
        requirements = tuple(getattr(task, "requirements", None) or self._pip) if self._install else ()
        gpus = task.gpus
        key = (task.function, requirements, gpus)
        remote = self._remotes.get(key)
        if remote is None:
            import ray

            options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, "name": f"shoal:{task.function}"}
            if gpus:
                options["num_gpus"] = gpus
            if requirements:
                options["runtime_env"] = {"pip": list(requirements)}
            remote = self._remotes[key] = ray.remote(run_on_worker).options(**options)
        return remote

    def _kill_later(self, future: RayFuture) -> None:
        """Force-cancel ``future`` if it is still running ``cancel_grace`` s after its interrupt."""
        timer = threading.Timer(self._cancel_grace, future._kill)
        timer.daemon = True
        timer.start()

    # -- scaling --------------------------------------------------------------------------------
    def scale(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BackendError(f"scale needs a whole number of workers >= 1 for the ray backend, got {n!r}")
        self.adapt(n, n)

    def adapt(self, minimum: int, maximum: int) -> None:
        """Bounds for the workers. Before the first run they choose the instance (fixed when equal,
        autoscaling otherwise); an autoscaling cluster takes new bounds at once (Ray's autoscaler
        re-reads them); a fixed instance is restarted at once at the new size, or as an autoscaling
        cluster (a few seconds), if no run is in flight. A joined cluster is left as its operator
        configured it."""
        if not (isinstance(minimum, int) and isinstance(maximum, int)) or minimum < 0 or maximum < max(minimum, 1):
            raise BackendError(f"adapt needs 0 <= minimum <= maximum and maximum >= 1, got ({minimum!r}, {maximum!r})")
        with self._lock:
            if self._bounds == (minimum, maximum):
                return
            previous, self._bounds = self._bounds, (minimum, maximum)
            if self._mode == "autoscale":
                self._cluster.set_bounds(minimum, maximum)
            elif self._mode == "fixed" and self._needs_restart():
                if self._inflight:
                    busy, size = len(self._inflight), self._size
                    log.warning("ray: %d runs in flight; the instance keeps its %d CPUs until they end", busy, size)
                    self._bounds = previous  # asked again by the next run
                    return
                self._num_cpus = None  # from now on the bounds size the instance
                self._stop_engine()
                self.start()

    def _needs_restart(self) -> bool:
        """A fixed instance of another size than the bounds, or bounds that want autoscaling."""
        minimum, maximum = self._bounds
        return minimum < maximum or maximum * self._slots_per_worker != self._size

    # -- observing ------------------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """The alive Ray nodes that can run tasks (a head without CPUs is not a worker); none
        before the engine is started (looking does not start it)."""
        if self._mode is None:
            return []
        import ray

        available = _available_per_node()
        with self._lock:
            running = dict(self._running)
        out = []
        for node in ray.nodes():
            total = node.get("Resources", {})
            if not node.get("Alive") or total.get("CPU", 0) <= 0:
                continue
            node_id = node["NodeID"]
            free = available.get(node_id, {}).get("CPU", total["CPU"])
            here = tuple(uid for uid, node in running.items() if node == node_id)
            out.append(
                WorkerInfo(
                    name=node_id[:12] if not node_id.startswith("ffffffff") else f"fake-node-{node_id[-5:]}",
                    address=f"{node.get('NodeManagerAddress')}:{node.get('NodeManagerPort')}",
                    state="busy" if here or free < total["CPU"] else "idle",
                    slots=int(total["CPU"]),
                    running=here,
                    resources={k: v for k, v in total.items() if not k.startswith("node:")},
                )
            )
        if self._mode == "join":
            self._observe_membership(len(out))
        return out

    def _observe_membership(self, count: int) -> None:
        """A joined cluster scales as its operator set it up; a change in its number of worker
        nodes since the last look is recorded as an event."""
        with self._lock:
            before, self._seen_nodes = self._seen_nodes, count
        if before is not None and before != count:
            change = f"{abs(count - before)} node(s) {'joined' if count > before else 'left'}"
            self._record_event(before, count, f"ray cluster: {change}")

    def scaling_events(self) -> list[ScalingEvent]:
        """Changes of size this backend made; every launch and removal of worker nodes that Ray's
        autoscaler logged (with its reason) when it autoscales, kept after close; for a joined
        cluster, changes in its number of nodes seen when asked."""
        cluster = self._cluster
        if self._mode == "join":
            self.workers()  # notices nodes that came or went
        autoscaler = _autoscaler_events(cluster) if cluster is not None else self._autoscaler_log
        return sorted(list(super().scaling_events()) + autoscaler, key=lambda e: e.time)

    @property
    def slots(self) -> int:
        if self._bounds is not None and self._mode != "join":
            return self._bounds[1] * self._slots_per_worker
        if self._mode == "fixed":
            return self._size
        if self._mode in ("join", "adopted"):
            import ray

            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self._num_cpus or (os.cpu_count() or 1)

    # -- requirements ---------------------------------------------------------------------------
    def ensure_gpus(self, gpus: int, function: str) -> None:
        """Ray would keep a task needing more GPUs than any node has pending forever (only a warning
        says why): refuse it on an instance of our own; on a joined cluster an autoscaler may yet
        add GPU nodes, so only warn."""
        if gpus <= 0:
            return
        import ray

        self.start()
        have = ray.cluster_resources().get("GPU", 0)
        if have >= gpus:
            return
        message = f"function {function!r} asks for {gpus} GPU(s) per run but this ray cluster has {have:g}"
        if self._mode in ("fixed", "autoscale"):
            raise BackendError(
                f"{message}; on a machine with GPUs start ray with shoal.backends.get('ray', num_gpus=N), "
                "or drop gpu from the function's resources"
            )
        log.warning("ray: %s; its runs wait until the cluster adds GPU nodes", message)

    def ensure_requirements(self, requirements: tuple[str, ...]) -> None:
        """With ``install_requirements=True`` Ray installs them (``runtime_env`` pip) for the tasks;
        otherwise they are checked: in this environment for the own instance (its workers share it),
        on a worker for a joined cluster."""
        if not requirements:
            return
        if self._install:
            with self._lock:
                self._pip = tuple(sorted(set(self._pip) | set(requirements)))
            return
        if not self.remote:
            super().ensure_requirements(requirements)
            return
        import ray

        from shoal.requirements import missing_requirements

        self.start()
        check = ray.remote(num_cpus=0, max_retries=0)(missing_requirements)
        try:
            missing = ray.get(check.remote(list(requirements)), timeout=max(self._connect_timeout, 30.0))
        except Exception as exc:  # noqa: BLE001 - no worker answered: the runs themselves will fail clearly
            log.warning("ray: could not check requirements on a worker (%s)", _first_line(exc))
            return
        if missing:
            raise BackendError(
                f"requirements missing on the ray workers: {', '.join(missing)}; install them in the "
                f"workers' image, or pass install_requirements=True to the backend"
            )

    def __repr__(self) -> str:
        kinds = {"fixed": f"local instance of {self._size} CPUs", "autoscale": "local autoscaling cluster"}
        where = self._address or kinds.get(self._mode or "", "not started")
        return f"<shoal RayBackend {where}>"


def _autoscaler_events(cluster: Any) -> list[ScalingEvent]:
    """The node launches and removals Ray's autoscaler logged, with running worker counts."""
    from .ray_cluster import node_changes

    events, count = [], 0
    for stamp, change, reason in node_changes(cluster.autoscaler_events()):
        before, count = count, max(0, count + change)
        events.append(ScalingEvent(stamp, "up" if change > 0 else "down", before, count, reason))
    return events


def _init_in_keeper(ray: Any, **options: Any) -> threading.Event:
    """``ray.init(**options)`` in a thread that lives until the returned event is set.

    Ray ties the life of every process it starts to the thread that started it (the kernel's
    parent-death signal): started from a short-lived thread, the instance dies with that thread.
    """
    release, ready, failure = threading.Event(), threading.Event(), []

    def keep() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
        finally:
            ready.set()
        if not failure:
            release.wait()

    threading.Thread(target=keep, name="shoal-ray-instance", daemon=True).start()
    ready.wait()
    if failure:
        raise failure[0]
    return release


def _available_per_node() -> dict[str, dict[str, float]]:
    """Free resources per node id (Ray's own accounting; empty if this Ray version lacks it)."""
    try:
        from ray._private.state import available_resources_per_node

        return available_resources_per_node()
    except Exception:  # noqa: BLE001 - a private API: degrade to "idle"
        return {}


@contextmanager
def _marked_environment(key: str, value: str) -> Iterator[None]:
    """Set one environment variable while Ray starts its processes, so they inherit it."""
    saved = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


__all__ = ["RayBackend", "RayFuture", "run_on_worker"]
