"""The embedded Dask cluster of the ``dask`` backend: a scheduler and Nanny workers, each a program
of its own (``python -m dask spec ...``), in a ``SpecCluster`` so that ``scale`` and Dask's own
``Adaptive`` work on it as on a LocalCluster.

Why not ``LocalCluster(processes=True)``: its Nanny workers are multiprocessing *spawn* children of
the user's script, which re-import the script's ``__main__``; a script without an
``if __name__ == "__main__":`` guard then runs its top level again in every worker and hangs. Here
no process of the cluster is a child of the user's interpreter state: each runs ``dask spec``.

What a LocalCluster did in-process reaches the subprocesses through their environment: the
driver's Dask config (with the backend's housekeeping intervals, ``allowed-failures: 0`` and the
worker profiler off) as ``DASK_INTERNAL_INHERIT_CONFIG``, and the driver's ``sys.path`` as
``PYTHONPATH`` (spawn children had it, and shipped code may import modules next to the script).
Workers inherit the driver's stdout and relay their stderr through it, so handler output echoes
(``watch``) as before; the scheduler writes to a log file. Each process starts in a session of its
own (Ctrl-C at a terminal is the driver's to handle) and carries ``SHOAL_DASK_CLUSTER=<token>``;
a watchdog (``watchdog``) kills them all if the driver dies without closing the cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from distributed import LocalCluster, Nanny, Worker
from distributed.core import rpc
from distributed.deploy.spec import ProcessInterface, SpecCluster

from .watchdog import MARKER, kill_marked, marked_pids, release_watchdog, start_watchdog

START_TIMEOUT = 60.0  # seconds a scheduler or worker process may take to be ready
STOP_GRACE = 3.0  # seconds a process has to exit after SIGTERM before SIGKILL
TAIL_BYTES = 16_384  # of a process's error output kept to explain a failed start
POLL = 0.05

# LocalCluster-level options the embedded cluster understands; every other option is a worker's.
CLUSTER_OPTIONS = {
    "n_workers", "threads_per_worker", "processes", "name", "host", "ip", "scheduler_port", "protocol",
    "interface", "silence_logs", "dashboard_address", "worker_dashboard_address", "worker_class",
    "scheduler_kwargs", "blocked_handlers",
}  # fmt: skip
_NOT_WORKER_OPTIONS = {"self", "kwargs", "worker_kwargs", "scheduler_ip", "scheduler_port", "scheduler_file"}
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b[^:]*: ")


class EmbeddedClusterError(RuntimeError):
    """The embedded cluster could not start; the message says why."""


# -- the processes ---------------------------------------------------------------------------------
class _Program(ProcessInterface):
    """One ``dask spec`` process of the cluster."""

    def __init__(self, env: dict[str, str], timeout: float):
        self.env = env
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        super().__init__()

    def _spawn(self, args: list[str], **streams: Any) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", "spec", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C at a terminal is for the driver, which closes the cluster
            **streams,
        )

    def _failed(self, what: str, output: str) -> EmbeddedClusterError:
        code = self.process.poll() if self.process is not None else None
        how = f"exited with code {code}" if code is not None else f"was not ready within {self.timeout:g} s"
        return EmbeddedClusterError(f"the dask {what} {how}: {explain(output)}")

    async def close(self) -> None:
        if self.process is not None:
            await stop_process(self.process, STOP_GRACE)
        await super().close()


class SchedulerProcess(_Program):
    """The scheduler; ready once it wrote its address to its scheduler file."""

    def __init__(self, options: dict[str, Any], env: dict[str, str], root: str, timeout: float = START_TIMEOUT):
        self.options = options
        self.root = Path(root)
        super().__init__(env, timeout)

    async def start(self) -> None:
        address_file, log_file = self.root / "scheduler.json", self.root / "scheduler.log"
        spec = {"cls": "distributed.Scheduler", "opts": {**self.options, "scheduler_file": str(address_file)}}
        with open(log_file, "wb") as log:
            self.process = self._spawn(["--spec", json.dumps(spec)], stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + self.timeout
        while True:
            try:
                self.address = json.loads(address_file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                pass  # not written yet, or half written
            if self.process.poll() is not None or time.monotonic() > end:
                port = self.options.get("port") or ""
                where = f" on {self.options.get('host', '')}:{port}" if port else ""
                raise self._failed(f"scheduler{where}", log_file.read_text(errors="replace")[-TAIL_BYTES:])
            await asyncio.sleep(POLL)
        await super().start()


class WorkerProcess(_Program):
    """A Nanny and its worker; ready once the scheduler lists a worker of this name."""

    def __init__(
        self,
        scheduler: str,
        name: Any = None,
        *,
        options: dict[str, Any],
        env: dict[str, str],
        worker_class: str = "distributed.Nanny",
        timeout: float = START_TIMEOUT,
    ):
        self.scheduler, self.name = scheduler, name
        self.options, self.worker_class = options, worker_class
        self.relay: _Relay | None = None
        super().__init__(env, timeout)

    async def start(self) -> None:
        spec = {"cls": self.worker_class, "opts": {**self.options, "name": self.name}}
        # stdout is the driver's (handler output echoes there); stderr too, through a relay that
        # keeps its tail to explain a failed start.
        self.process = self._spawn([self.scheduler, "--spec", json.dumps(spec)], stderr=subprocess.PIPE)
        self.relay = _Relay(self.process.stderr)
        end = time.monotonic() + self.timeout
        scheduler = rpc(self.scheduler)
        try:
            while not await self._joined(scheduler):
                if self.process.poll() is not None or time.monotonic() > end:
                    self.relay.join(1.0)
                    raise self._failed(f"worker {self.name!r}", self.relay.tail())
                await asyncio.sleep(POLL)
        finally:
            await scheduler.close_rpc()
        await super().start()

    async def close(self) -> None:
        """Stop the worker; what it logs while it goes (a heartbeat that met the closing scheduler,
        under load, logs a CommClosedError with its traceback) is kept in the tail, not relayed: the
        user's runs ended or were cancelled before the cluster closes."""
        if self.relay is not None:
            self.relay.muted = True
        await super().close()

    async def _joined(self, scheduler: Any) -> bool:
        try:
            workers = (await scheduler.identity()).get("workers", {})
        except OSError:  # the scheduler is going away: the process check decides
            return False
        return any(info.get("name") == self.name for info in workers.values())


class _Relay:
    """Copies a worker's stderr to the driver's, keeping the last bytes."""

    def __init__(self, stream: Any):
        self._stream = stream
        self._tail = bytearray()
        self.muted = False  # set when the cluster closes the worker: Dask's shutdown noise stays out
        self._thread = threading.Thread(target=self._run, name="shoal-dask-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._tail += chunk
            del self._tail[:-TAIL_BYTES]
            if self.muted:
                continue
            try:
                os.write(2, chunk)
            except OSError:
                pass  # no stderr in the driver: keep reading so the worker never blocks
        self._stream.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def tail(self) -> str:
        return bytes(self._tail).decode(errors="replace")


async def stop_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM (``dask spec`` closes its servers), then SIGKILL for it and what it started."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
        except OSError:
            pass
        end = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < end:
            await asyncio.sleep(POLL)
    for leftover in [*children, process]:
        try:
            leftover.kill()
        except (psutil.Error, OSError):
            pass
    while process.poll() is None:
        await asyncio.sleep(POLL)


def explain(output: str) -> str:
    """The line of a process's output that says why it failed: its first exception (a Nanny's own
    "failed to start" only repeats that its worker failed), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line) and "failed to start" not in line]
    if errors:
        return errors[0]
    return lines[-1] if lines else "it printed nothing"


# -- the cluster -----------------------------------------------------------------------------------
class EmbeddedCluster(SpecCluster):
    """A SpecCluster of ``dask spec`` processes with a watchdog; closing it (or the driver's
    death) leaves none of its processes behind."""

    def __init__(self, *, token: str, root: str, watchdog: subprocess.Popen, **spec: Any):
        self.token, self.root = token, root
        self._watchdog: subprocess.Popen | None = watchdog
        super().__init__(name="shoal-embedded", **spec)

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Kill whatever of the cluster is still there, stop the watchdog, remove the folder."""
        kill_marked(self.token)
        for program in [self.scheduler, *self._created]:  # reap them: no zombie children left
            process = getattr(program, "process", None)
            if process is not None:
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            release_watchdog(watchdog)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    def pids(self) -> list[int]:
        """The live processes of this cluster (scheduler, Nannies, workers, what they started)."""
        return marked_pids(self.token)


def start_embedded(
    *,
    n_workers: int,
    threads_per_worker: int,
    options: dict[str, Any],
    config: dict[str, Any],
    preload: str,
) -> EmbeddedCluster:
    """Start the cluster: ``options`` are LocalCluster's (cluster-level, else worker options),
    ``config`` the Dask config its processes run with, ``preload`` a module every worker loads."""
    import dask.config

    level = options.get("silence_logs", logging.ERROR)
    scheduler_options, worker_options, worker_class = _split(options, threads_per_worker, level, preload)
    token = uuid.uuid4().hex
    root = tempfile.mkdtemp(prefix="shoal-dask-")
    env = _environment(dask.config.serialize(_quiet(config, level)), token)
    watchdog = start_watchdog(token, root)
    worker = {"cls": WorkerProcess, "options": {"options": worker_options, "env": env, "worker_class": worker_class}}
    try:
        return EmbeddedCluster(
            token=token,
            root=root,
            watchdog=watchdog,
            workers={i: worker for i in range(n_workers)},
            worker=worker,
            scheduler={"cls": SchedulerProcess, "options": {"options": scheduler_options, "env": env, "root": root}},
            silence_logs=level,
        )
    except BaseException as exc:
        kill_marked(token)
        release_watchdog(watchdog)
        shutil.rmtree(root, ignore_errors=True)
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, EmbeddedClusterError):
            raise cause from None
        raise


def _split(options: dict[str, Any], threads: int, level: Any, preload: str) -> tuple[dict, dict, str]:
    """(scheduler options, worker options, worker class) from LocalCluster-style options."""
    unknown = set(options) - CLUSTER_OPTIONS - worker_option_names()
    if unknown:
        local = unknown & set(inspect.signature(LocalCluster.__init__).parameters)
        what = "LocalCluster option(s) its processes cannot take" if local == unknown else "unknown option(s)"
        raise EmbeddedClusterError(
            f"{what} {', '.join(map(repr, sorted(unknown)))}: the embedded cluster takes plain-data options of "
            "LocalCluster and of its workers (dask.distributed.Worker); for anything else pass "
            "cluster=<a distributed Cluster object>"
        )
    host = options.get("host") or options.get("ip") or "127.0.0.1"
    dashboard = options.get("dashboard_address")
    scheduler = {
        "host": host,
        "port": options.get("scheduler_port", 0),
        "dashboard": dashboard is not None,
        # Without a dashboard the scheduler still serves HTTP: on a random local port, not 8787.
        "dashboard_address": dashboard if dashboard is not None else "127.0.0.1:0",
        **{k: options[k] for k in ("protocol", "interface", "blocked_handlers") if k in options},
        **(options.get("scheduler_kwargs") or {}),
    }
    worker = {k: v for k, v in options.items() if k not in CLUSTER_OPTIONS}
    worker.setdefault("host", host)
    worker["nthreads"] = threads
    given = worker.get("preload") or []
    worker["preload"] = [*([given] if isinstance(given, str) else given), preload]
    if level:
        worker.setdefault("silence_logs", level if isinstance(level, int) else logging.ERROR)
    for key in ("protocol", "interface"):
        if key in options:
            worker[key] = options[key]
    if options.get("worker_dashboard_address") is not None:
        worker["dashboard_address"], worker["dashboard"] = options["worker_dashboard_address"], True
    for what, values in (("scheduler", scheduler), ("worker", worker)):
        try:
            json.dumps(values)
        except (TypeError, ValueError) as exc:
            raise EmbeddedClusterError(
                f"a {what} option of the embedded cluster is not plain data ({exc}); the embedded cluster's "
                "processes take options as JSON: pass cluster=<a distributed Cluster object> for others"
            ) from None
    worker_class = options.get("worker_class") or "distributed.Nanny"
    if not isinstance(worker_class, str):
        worker_class = f"{worker_class.__module__}.{worker_class.__qualname__}"
    return scheduler, worker, worker_class


def worker_option_names() -> set[str]:
    """The keyword options a Nanny or a Worker takes."""
    names = set(inspect.signature(Nanny.__init__).parameters) | set(inspect.signature(Worker.__init__).parameters)
    return names - _NOT_WORKER_OPTIONS


def _quiet(config: dict[str, Any], level: Any) -> dict[str, Any]:
    """The config with Dask's loggers at ``level`` at least (the processes set them up from it)."""
    if not level or "version" in (config.get("logging") or {}):  # no level, or a dictConfig: as given
        return config
    want = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(want, int):
        return config
    logs = dict(config.get("logging") or {})
    for key in {"distributed", *(k for k in logs if str(k).startswith("distributed."))}:
        have = logging.getLevelName(str(logs.get(key, "info")).upper())
        if not isinstance(have, int) or have < want:
            logs[key] = logging.getLevelName(want).lower()
    return {**config, "logging": logs}


def _environment(serialized_config: str, token: str) -> dict[str, str]:
    """The driver's environment plus the config, the marker and the driver's import path."""
    env = dict(os.environ)
    env["DASK_INTERNAL_INHERIT_CONFIG"] = serialized_config
    env[MARKER] = token
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([*paths, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    )
    return env


__all__ = ["EmbeddedCluster", "EmbeddedClusterError", "start_embedded"]
