"""``RayBackend``: runs as Ray tasks, its bounds, and what it reports about its workers.

Each run is one Ray task of one CPU (so at most ``max x slots`` run at once) executing
``run_on_worker`` (``shoal.backends.ray.worker``), through a remote function per function version
that carries its code (``carrying``); Ray retries nothing (``max_retries=0``): shoal's own
``retries`` decide. Cancelling sends Ray's KeyboardInterrupt into a running task, which shoal records
as cancelled; a task that ignores it is killed after ``cancel_grace`` seconds. Starting and closing
(the four modes) are ``shoal.backends.ray.lifecycle``'s.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, ClassVar

from shoal.code import Code
from shoal.errors import BackendError
from shoal.execution import RunBatch, RunOutcome, RunTask

from ..base import Backend, BackendFuture, OnStart, ScalingEvent, WorkerInfo
from ..batching import BatchedRuns
from ..task_codec import encode
from ._compat import DirectRemote, available_resources_per_node
from .echo import EchoPipe
from .ends import EndWatch
from .future import RayFuture, first_line
from .lifecycle import RayLifecycle, autoscaler_events
from .start import StartPipe
from .worker import carrying, members, run_on_worker

log = logging.getLogger("shoal.backends.ray")

INLINE_CODE = 64 * 1024  # characters of code a remote function carries; larger code goes through the object store
MAX_REMOTES = 256  # remote functions kept (one per function version and options)


class RayBackend(RayLifecycle, Backend):
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
    min_scale: ClassVar[int] = 1  # scale(n) is adapt(n, n): an instance of no CPUs runs nothing

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
        self._bounds = None
        self._mode = None  # fixed, autoscale, join, adopted (a ray.init() of the user's)
        self._cluster = None  # LocalAutoscalingCluster when autoscaling
        self._autoscaler_log: list[ScalingEvent] = []  # its events, kept when it is stopped
        self._token = None  # marks the processes of a fixed instance
        self._release = None  # ends the thread that started the fixed instance
        self._watchdog = None  # stops the fixed instance if this process dies without closing
        self._temp_dir = None
        self._gcs_address = None
        self._size = 0  # CPUs of a fixed instance
        self._seen_nodes: int | None = None  # worker nodes of a joined cluster at the last look
        self._code_refs = {}  # function hash -> ObjectRef of its Code
        self._remotes = {}  # task options -> Ray remote function
        self._pip: tuple[str, ...] = ()
        self._inflight = set()  # submitted, not yet done
        self._starts: StartPipe | None = None
        self._ends: EndWatch | None = None  # tasks whose end comes through the start pipe (``.ends``)
        self._echo: EchoPipe | None = None  # watched runs' output, from workers on this machine
        self._on_start: dict[str, OnStart] = {}  # uid -> the driver's callback, until the run starts
        self._running = {}  # uid -> node id, from its start until its end
        self._lock = threading.RLock()
        self._closed = False

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

    # -- running --------------------------------------------------------------------------------
    def submit(
        self, task: RunTask | RunBatch, on_start: OnStart | None = None, *, after: tuple[Any, list] | None = None
    ) -> BackendFuture:
        """One Ray task per attempt (or per batch); ``on_start`` is called when a run starts on a
        worker of this machine (the own instance), not for joined clusters. ``after``: a pipeline
        step's ``prepare`` and its producers' ObjectRefs or outcomes (see ``.dependencies``)."""
        self.start()
        starts = self._starts if on_start is not None else None
        if starts is not None:
            with self._lock:
                for uid in task.uids:
                    self._on_start[uid] = on_start  # type: ignore[assignment]
        shipped, code, carried = self._code_arguments(task, step=after is not None)
        echo = self._echo if any(member.echo for member in members(task)) else None
        ends, pipe = self._ends, self._starts
        end = (pipe.path, ends.token()) if ends is not None and pipe is not None else None
        pipes = (starts.path if starts else None, echo.path if echo else None, end)
        remote = self._remote_for(task, step=after is not None, carried=carried)
        if after is not None:
            prepare, upstream = after
            shipped_code = [code] if code else []  # the list that holds the code's ref: not resolved by Ray
            ref = remote.remote(encode((shipped, *pipes, prepare, bool(code))), *shipped_code, *upstream)
        else:
            payload = encode((shipped, *pipes))
            ref = remote.remote(payload, code) if code else remote.remote(payload)
        future = RayFuture(task, ref, self, echo)
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._finished)
        if end is None or ends is None or not ends.watch(end[1], future, ref):
            future.listen()  # no end line will come, or it came already
        return future

    def submit_batch(self, tasks: list[RunTask], on_start: list[OnStart | None] | None = None) -> list[BackendFuture]:
        """The runs as one Ray task; cancelling all of them interrupts it (see ``execute_batch``)."""
        return BatchedRuns(self, tasks, on_start or [None] * len(tasks)).submit(self.submit)

    def _code_arguments(self, task: RunTask | RunBatch, step: bool) -> tuple[RunTask | RunBatch, list, Code | None]:
        """The task as it travels, the list of its code's reference if any, and the code its remote
        function carries if any. Small code goes with the remote function (``carrying``, or for a
        pipeline step ``carrying_after``), which Ray exports once and each worker loads once, so each
        task ships without it (measured: the 14 kB task of a no-op run of ``perf/dispatch.py``
        became 0.5 kB; a 1,000-step pipeline's workers used ~0.1 s less CPU). Large code goes once
        per function through Ray's object store."""
        runs = members(task)
        code = runs[0].code
        if code is None:
            return task, [], None
        small = len(code.text) + len(code.shipped_value() or "") <= INLINE_CODE
        shipped = [member.without_code() for member in runs]
        bare = RunBatch(shipped) if isinstance(task, RunBatch) else shipped[0]
        if small:
            return bare, [], code
        ref = self._code_refs.get(task.function_hash)
        if ref is None:
            import ray

            ref = self._code_refs[task.function_hash] = ray.put(code)
        return bare, [ref], None

    def _started(self, uid: str, started: float, node: str) -> None:
        with self._lock:
            callback = self._on_start.pop(uid, None)
            if callback is not None:
                self._running[uid] = node
        if callback is not None:
            callback(uid, started)

    def ended_unannounced(self, outcomes: list[RunOutcome]) -> None:
        """Runs that ended before a start line came (workers announce only runs that last, see
        ``.announce``). Their outcome carries their start; a failed attempt's start is also
        reported as a start, before its end, so a run that is retried keeps its first start."""
        if not self._on_start:
            return
        failed = [outcome for outcome in outcomes if outcome.state == "failed" and outcome.started_at is not None]
        if not failed:
            return
        with self._lock:
            callbacks = [(outcome, self._on_start.pop(outcome.uid, None)) for outcome in failed]
        for outcome, callback in callbacks:
            if callback is not None:
                callback(outcome.uid, outcome.started_at)  # type: ignore[arg-type]

    def _finished(self, future: BackendFuture) -> None:
        with self._lock:
            self._inflight.discard(future)
            for uid in future.uids:  # type: ignore[attr-defined]
                self._on_start.pop(uid, None)
                self._running.pop(uid, None)

    def submit_after(self, task: RunTask, after: Any, prepare: Any, on_start: OnStart | None = None) -> BackendFuture:
        """The producers' ObjectRefs are the task's arguments (see ``.dependencies``)."""
        from .dependencies import submit_after

        return submit_after(self, task, after, prepare, on_start)

    def _remote_for(self, task: RunTask | RunBatch, step: bool = False, carried: Code | None = None) -> Any:
        """The Ray remote function with this task's options and, if any, the code it carries
        (cached: ``.options()`` is not free, and Ray exports each remote function once)."""
        requirements = tuple(getattr(task, "requirements", None) or self._pip) if self._install else ()
        gpus = task.gpus
        key = (task.function, requirements, gpus, step, task.function_hash if carried is not None else None)
        remote = self._remotes.get(key)
        if remote is None:
            options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, "name": f"shoal:{task.function}"}
            if gpus:
                options["num_gpus"] = gpus
            if requirements:
                options["runtime_env"] = {"pip": list(requirements)}
            from .dependencies import carrying_after, run_after

            if step:
                function = carrying_after(carried) if carried is not None else run_after
            else:
                function = carrying(carried) if carried is not None else run_on_worker
            if len(self._remotes) >= MAX_REMOTES:
                self._remotes.clear()
            remote = self._remotes[key] = DirectRemote(function, options)
        return remote

    @property
    def cancel_grace(self) -> float:
        """Seconds a cancelled running task has to stop on its interrupt before it is killed."""
        return self._cancel_grace

    def kill_later(self, future: RayFuture) -> None:
        """Force-cancel ``future`` if it is still running ``cancel_grace`` s after its interrupt."""
        timer = threading.Timer(self._cancel_grace, future.kill)
        timer.daemon = True
        timer.start()

    # -- scaling (bounds checked by Backend.scale/adapt) ------------------------------------------
    def _scale(self, n: int) -> None:
        self._adapt(n, n)

    def _adapt(self, minimum: int, maximum: int) -> None:
        """Bounds for the workers. Before the first run they choose the instance (fixed when equal,
        autoscaling otherwise); an autoscaling cluster takes new bounds at once (Ray's autoscaler
        re-reads them); a fixed instance is restarted at once at the new size, or as an autoscaling
        cluster (a few seconds), if no run is in flight. A joined cluster is left as its operator
        configured it."""
        with self._lock:
            if self._bounds == (minimum, maximum):
                return
            previous, self._bounds = self._bounds, (minimum, maximum)
            if self._mode == "autoscale":
                self._cluster.set_bounds(minimum, maximum)  # type: ignore[union-attr]
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
        minimum, maximum = self._bounds  # type: ignore[misc]
        return minimum < maximum or maximum * self._slots_per_worker != self._size

    # -- observing ------------------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """The alive Ray nodes that can run tasks (a head without CPUs is not a worker); none
        before the engine is started (looking does not start it)."""
        if self._mode is None:
            return []
        import ray

        available = available_resources_per_node()
        with self._lock:
            running = dict(self._running)
        out = []
        for node in ray.nodes():
            total = node.get("Resources", {})
            if not node.get("Alive") or total.get("CPU", 0) <= 0:
                continue
            node_id = node["NodeID"]
            free = available.get(node_id, {}).get("CPU", total["CPU"])
            here = tuple(uid for uid, where in running.items() if where == node_id)
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
        autoscaler = autoscaler_events(cluster) if cluster is not None else self._autoscaler_log
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
            log.warning("ray: could not check requirements on a worker (%s)", first_line(exc))
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


__all__ = ["INLINE_CODE", "RayBackend"]
