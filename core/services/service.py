"""``Service``: a deployed function as the caller holds it (``fn.deploy(...)`` returns one), and its
``ServiceStatus``. The backends (``shoal.services.local``, ``shoal.backends.ray.serving``) subclass it.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import ServiceError


@dataclass(frozen=True)
class ServiceStatus:
    """Where a service stands: ``state`` (Ray Serve's application states: RUNNING, DEPLOYING,
    DEPLOY_FAILED, UNHEALTHY, DELETING; NOT_RUNNING when nothing serves it), replicas running now and
    the autoscaler's target, the bounds, the function hash it serves and its URL."""

    name: str
    state: str
    replicas: int
    target: int | None
    min_replicas: int
    max_replicas: int
    version: str
    url: str
    message: str = ""


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def post_json(url: str, body: Any, timeout: float, what: str) -> Any:
    """POST ``body`` as JSON and return the JSON answer; ``ServiceError`` (with status and body) for
    an HTTP error, or for no answer at all."""
    data = json.dumps({} if body is None else body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST")
    try:
        with _opener.open(request, timeout=timeout) as answer:
            text = answer.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace").strip()
        detail = parsed.get("message", parsed) if isinstance(parsed, dict) else parsed
        kind = f"{parsed['error']}: " if isinstance(parsed, dict) and "error" in parsed else ""
        raise ServiceError(f"{what} answered HTTP {exc.code}: {kind}{detail}", status=exc.code, body=parsed) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceError(f"{what} at {url} cannot be reached: {reason}") from None
    return json.loads(text) if text.strip() else None


class Service:
    """A function served over HTTP at ``url``; ``invoke`` calls it, ``status`` reports on it,
    ``delete`` ends it, ``wait`` blocks until it ends (or Ctrl-C, which deletes it)."""

    backend_name: str = ""

    def __init__(self, name: str, url: str, function_hash: str, project: str, min_replicas: int, max_replicas: int):
        self.name = name
        self.url = url
        self.function_hash = function_hash
        self.project = project
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self._deleted = threading.Event()
        self._delete_lock = threading.Lock()

    def invoke(self, body: Any = None, timeout: float = 30.0) -> Any:
        """The handler's JSON answer to ``body`` (a JSON object of its parameters)."""
        return post_json(self.url, body, timeout, f"service {self.name!r}")

    def status(self) -> ServiceStatus:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    def delete(self) -> None:
        """End the service and record it deleted; a second call does nothing (Ctrl-C in ``wait``
        deletes it, and ``shoal serve`` deletes it again on its way out)."""
        with self._delete_lock:
            if self._deleted.is_set():
                return
            self._delete()
            self._deleted.set()

    def _delete(self) -> None:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    def _ended(self) -> bool:
        """True once nothing serves it any more (checked by ``wait``)."""
        return self._deleted.is_set()

    def wait(self, poll_s: float = 1.0) -> None:
        """Block until the service ends; Ctrl-C deletes it (``shoal serve`` in the foreground)."""
        try:
            while not self._deleted.wait(poll_s):
                if self._ended():
                    return
        except KeyboardInterrupt:
            self.delete()

    def __repr__(self) -> str:
        return f"<shoal.Service {self.name} {self.backend_name} {self.url} version={self.function_hash[:12]}>"
