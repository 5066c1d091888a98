"""Reaching Ray: what an address names, whether anything answers there (``ray.init`` itself waits
minutes on a bad address), and starting a local instance from a thread that outlives the call."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from shoal.errors import BackendError

from ._compat import GCS_PROBE_METHOD


def resolve_auto() -> str:
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


def probe(address: str, timeout: float) -> str:
    """Which Ray endpoint answers at ``host:port``: "gcs" (a head's GCS) or "client" (a Ray Client
    server); BackendError if nothing does within ``timeout`` s."""
    import grpc

    end = time.monotonic() + timeout
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        ask = channel.unary_unary(GCS_PROBE_METHOD)
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


def host_port(address: str) -> str:
    """ "ray://host:port" or "host:port" -> "host:port"."""
    bare = address.split("://", 1)[1] if "://" in address else address
    if ":" not in bare:
        raise BackendError(f"a ray address is host:port or ray://host:port, got {address!r}")
    return bare.rstrip("/")


def init_target(address: str, timeout: float) -> str:
    """The address to give ``ray.init`` for a user's ``address`` ("auto" included), checked first:
    a Ray Client server as ray://host:port, a head's GCS as host:port."""
    target = host_port(resolve_auto() if address == "auto" else address)
    return f"ray://{target}" if probe(target, timeout) == "client" else target


def init_in_keeper(ray: Any, **options: Any) -> threading.Event:
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


__all__ = ["host_port", "init_in_keeper", "init_target", "probe", "resolve_auto"]
