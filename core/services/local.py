"""``backend="local"``: one server process (uvicorn + starlette), one replica, no autoscaling.

For development and tests: the same HTTP contract as Ray Serve. The deploying process binds the
port first (a port in use is an error at ``deploy``), starts ``shoal.services.local_server`` with the
socket, and keeps its stdin open: the server ends with the deploying process, with ``delete``, or
with SIGTERM from ``shoal services delete`` in another process (by PID, checked against the
process's start time so a reused PID is never signalled).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import ServiceError, ServiceSpecError
from .config import READY_TIMEOUT_S, REQUEST_LIMITS, plain_env, service_secrets, url_of
from .service import Service, ServiceStatus

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function
    from ..project import Project
    from ..store.services import ServiceRecord, ServiceRecords
    from .handler import ServiceSettings

STOP_TIMEOUT_S = 15.0

_live: dict[tuple[str, str], LocalService] = {}  # (project, name) -> the server this process started
_live_lock = threading.Lock()


def live_service(project: str, name: str) -> LocalService | None:
    """The server of ``name`` that this process started, if it is still serving."""
    with _live_lock:
        service = _live.get((project, name))
    return service if service is not None and service.alive() else None


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or ``ServiceSpecError`` naming what holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServiceSpecError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}; the port is in use (or the address is not "
            "this machine's): pass another port=, or stop what listens there"
        ) from None
    sock.set_inheritable(True)
    return sock


def process_start(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


class LocalService(Service):
    """A service served by a local server process."""

    backend_name = "local"

    def __init__(
        self,
        record: ServiceRecord,
        records: ServiceRecords,
        process: subprocess.Popen | None,
    ) -> None:
        super().__init__(
            record.name, record.url, record.function_hash, records.project, record.min_replicas, record.max_replicas
        )
        self.pid = record.pid
        self.host = record.spec.get("host")
        self.port = record.spec.get("port")
        self.limits = {key: record.spec[key] for key in REQUEST_LIMITS if key in record.spec}
        self._process_start = record.process_start
        self._records = records
        self._process = process

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self.pid is not None and process_start(self.pid) == self._process_start

    def _ended(self) -> bool:
        return not self.alive()

    def status(self) -> ServiceStatus:
        running = self.alive()
        return ServiceStatus(
            name=self.name,
            state="RUNNING" if running else "NOT_RUNNING",
            replicas=1 if running else 0,
            target=1 if running else 0,
            min_replicas=1,
            max_replicas=1,
            version=self.function_hash,
            url=self.url,
        )

    def stop(self) -> None:
        """End the server process (gracefully: its last request metrics are written)."""
        process = self._process
        if process is not None:
            if process.stdin is not None:
                try:
                    process.stdin.close()  # the server's stdin watcher ends it
                except OSError:
                    pass
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        elif self.pid is not None:
            stop_pid(self.pid, self._process_start)
        with _live_lock:
            if _live.get((self.project, self.name)) is self:
                del _live[(self.project, self.name)]

    def _delete(self) -> None:
        self.stop()
        self._records.set_state(self.name, "deleted")


def stop_pid(pid: int, started: float | None) -> bool:
    """SIGTERM the server ``pid`` if it is still the process recorded (same start time), and wait
    for it to end (SIGKILL after ``STOP_TIMEOUT_S``). False when it was gone already."""
    import psutil

    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) > 0.01:
            return False  # the PID was reused by another process
        process.send_signal(signal.SIGTERM)
        if not _ended(process, STOP_TIMEOUT_S):
            process.kill()
            _ended(process, STOP_TIMEOUT_S)
    except psutil.NoSuchProcess:
        return False
    return True


def _ended(process: Any, timeout: float) -> bool:
    """Whether ``process`` ends within ``timeout`` s; a zombie (ended, not yet reaped by the
    process that started it, which may be another) counts as ended."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            process.wait(0.1)
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return True
    return False


def _read_ready(process: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """The server's one line on stdout (``ready`` or ``error``), or an error if it died or hung."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            process.kill()
            process.wait()
            raise ServiceError(f"the local server did not start within {timeout:g} s")
        ready, _, _ = select.select([process.stdout], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                process.wait()
                raise ServiceError(f"the local server exited with code {process.returncode} before it was ready")
            buffer += chunk
    return json.loads(buffer.split(b"\n", 1)[0])


def _start(settings: ServiceSettings, listener: socket.socket) -> subprocess.Popen:
    import cloudpickle

    from .local_server import HEADER

    env = dict(os.environ)
    path = [os.getcwd(), *[p for p in sys.path if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    fd = listener.fileno()
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.services.local_server", str(fd)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(fd,),
        env=env,
    )
    payload = cloudpickle.dumps(settings)
    assert process.stdin is not None
    process.stdin.write(HEADER.pack(len(payload)) + payload)
    process.stdin.flush()
    return process


def deploy_local(
    fn: Function,
    name: str,
    host: str,
    port: int,
    project: Project,
    scaling: Any = None,
    limits: dict[str, int] | None = None,
) -> LocalService:
    """Serve ``fn`` from a local server process (see the module's docstring); ``limits``
    (``config.request_limits``) answer 503 past ``max_ongoing_requests`` + ``max_queued_requests``."""
    from ..store.services import ServiceRecords
    from .handler import ServiceSettings

    if scaling:
        raise ServiceSpecError(
            "the local backend serves one replica without autoscaling; drop scaling= or deploy with backend='ray'"
        )
    limits = dict(limits or {})
    values = service_secrets(fn, project)  # a missing secret fails here, before any record
    records = ServiceRecords(project.store)
    key = (project.name, name)
    with _live_lock:
        current = _live.get(key)
    if current is not None and current.alive():
        if current.function_hash == fn.hash and (current.host, current.port, current.limits) == (host, port, limits):
            return current  # the same version is served already: nothing to do
        current.stop()  # a new version (or address) replaces it: one process serves a name
    else:
        _stop_recorded(records, name)
    listener = listen(host, port)
    url = url_of(host, port, name)
    settings = ServiceSettings.in_project(fn, project, name, env=plain_env(fn), secrets=values, limits=limits)
    base = {
        "name": name,
        "function": fn.name,
        "function_hash": fn.hash,
        "backend": "local",
        "address": None,
        "url": url,
        "min_replicas": 1,
        "max_replicas": 1,
        "spec": {"host": host, "port": port, **limits},
    }
    records.save(**base, state="deploying", pid=None, process_start=None)
    try:
        process = _start(settings, listener)
        message = _read_ready(process, READY_TIMEOUT_S)
    except BaseException:
        records.set_state(name, "failed")
        raise
    finally:
        listener.close()  # the server holds its own copy
    if "error" in message:
        process.wait()
        records.set_state(name, "failed")
        error = message["error"]
        raise ServiceError(
            f"service {name!r} failed to deploy: its handler could not be loaded: {error['type']}: {error['message']}",
            body=error,
            state="DEPLOY_FAILED",
        )
    record = records.save(**base, state="running", pid=process.pid, process_start=process_start(process.pid))
    service = LocalService(record, records, process)
    with _live_lock:
        _live[key] = service
    return service


def _stop_recorded(records: ServiceRecords, name: str) -> None:
    """A server of this name that another process started (its deploying process is still alive)
    is stopped before a new one takes the name."""
    from ..errors import NotFoundError

    try:
        record = records.get(name)
    except NotFoundError:
        return
    if record.backend == "local" and record.state == "running" and record.pid is not None:
        stop_pid(record.pid, record.process_start)
