"""Reaching Ray: what an address names, whether anything answers there (``ray.init`` itself waits
minutes on a bad address), and starting a local instance from a thread that outlives the call."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from shoal.errors import BackendError

from ._compat import CLIENT_AUTH_PROBE_METHOD, GCS_PROBE_METHOD, raylet
from .future import first_line

log = logging.getLogger("shoal.backends.ray")


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


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def use_token_if_available() -> bool:
    """Token mode for joining a cluster when ``RAY_AUTH_MODE`` is unset and a Ray token exists
    (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``); True when token mode is on.

    Ray 2.60 does this itself when ``ray.init`` joins a head's GCS, but a Ray Client
    (``ray://``) sends the token only when ``RAY_AUTH_MODE=token`` is set: against a cluster that
    requires it, the client waits and fails with "ray client connection timeout". A cluster without
    authentication ignores the token. Like Ray's own step, this sets ``RAY_AUTH_MODE`` in this
    process and refreshes Ray's cached config (``ray._raylet``, not public API).
    """
    if not token_available():
        return False
    if os.environ.get(AUTH_MODE_ENV) is None:
        os.environ[AUTH_MODE_ENV] = "token"
        raylet().Config.initialize("")
    return True


def token_available() -> bool:
    """Whether joining should send Ray's token: ``RAY_AUTH_MODE=token``, or the mode unset and a
    token on this machine (nothing is changed here)."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None:
        return mode.strip().lower() == "token"
    return bool(raylet().AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True))


def _token_metadata() -> list[tuple[str, str]]:
    """The authorization header Ray's own clients send in token mode (none without a token)."""
    headers = raylet().AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)
    return [(key.lower(), value) for key, value in headers.items()]


def probe(address: str, timeout: float, token: bool = False) -> str:
    """Which Ray endpoint answers at ``host:port``: "gcs" (a head's GCS) or "client" (a Ray Client
    server); BackendError if nothing does within ``timeout`` s. ``token``: send Ray's token (a Ray
    Client server that requires one refuses the probe otherwise, as a GCS does)."""
    import grpc

    end = time.monotonic() + timeout
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        ask = channel.unary_unary(GCS_PROBE_METHOD)
        try:
            ask(b"", timeout=max(1.0, end - time.monotonic()), metadata=_token_metadata() if token else None)
            return "gcs"
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                _check_client_token(channel, address, token, max(1.0, end - time.monotonic()))
                return "client"
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                if token:
                    raise _refused(address, token) from None
                return "gcs"
            raise BackendError(f"the Ray endpoint at {address} did not answer ({code.name})") from None
    except grpc.FutureTimeoutError:
        raise BackendError(
            f"cannot reach a Ray cluster at {address} within {timeout:g} s; check the address, or start one "
            f"with `ray start --head`"
        ) from None
    finally:
        channel.close()


def _check_client_token(channel: Any, address: str, token: bool, timeout: float) -> None:
    """A Ray Client server checks the token only on the methods it serves (an unknown one is
    UNIMPLEMENTED first): ask one, so a missing or wrong token is an error now, not Ray Client's
    "connection timeout" after 30 s. Any answer other than UNAUTHENTICATED lets the client in."""
    import grpc

    ask = channel.unary_unary(CLIENT_AUTH_PROBE_METHOD)
    try:
        ask(b"", timeout=timeout, metadata=_token_metadata() if token else None)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise _refused(address, token) from None


def _refused(address: str, token: bool) -> BackendError:
    fix = "put the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on its head)"
    if token:
        return BackendError(f"the Ray cluster at {address} refused this machine's Ray token; {fix}")
    mode = os.environ.get(AUTH_MODE_ENV)
    sends = f"RAY_AUTH_MODE={mode}" if mode is not None else "no token on this machine"
    return BackendError(
        f"the Ray cluster at {address} requires token authentication and this process sends no token ({sends}); "
        f"{fix}, and set RAY_AUTH_MODE=token or leave it unset"
    )


def host_port(address: str) -> str:
    """ "ray://host:port" or "host:port" -> "host:port"."""
    bare = address.split("://", 1)[1] if "://" in address else address
    if ":" not in bare:
        raise BackendError(f"a ray address is host:port or ray://host:port, got {address!r}")
    return bare.rstrip("/")


def init_target(address: str, timeout: float) -> str:
    """The address to give ``ray.init`` for a user's ``address`` ("auto" included), checked first:
    a Ray Client server as ray://host:port, a head's GCS as host:port. A Ray token on this machine
    is used for either, as ``ray.init`` does for a GCS (see ``use_token_if_available``)."""
    target = host_port(resolve_auto() if address == "auto" else address)
    kind = probe(target, timeout, token_available())
    use_token_if_available()  # only once something answers: a bad address changes nothing
    return f"ray://{target}" if kind == "client" else target


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


JOIN_ATTEMPTS = 4
"""Ray Client's server forks a server for each new client while its own gRPC threads run, and the
child sometimes dies at once ("SpecificServer startup failed", a zombie, an ``epoll_wait`` error in
its log): seen here for about one connection in eight, and a try made right after a failure fails
more often. Each try gets a new child, after a pause that doubles (1, 2, 4 s)."""


def join(ray: Any, target: str, init_kwargs: dict[str, Any], pause: float = 1.0) -> None:
    """``ray.init(address=target)``, tried again while Ray Client's server fails to start a server
    for this client (after ``pause`` seconds, then twice that, ...); any other refusal (version
    mismatch, refused job, ...) ends it at once."""
    import tenacity

    def connect() -> None:
        try:
            ray.init(address=target, **init_kwargs)
        except ConnectionAbortedError:
            ray.shutdown()  # the half-made client connection, before the next try
            raise

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = server_refusal(error) if error else "no reason given"
        log.warning("ray: the client server at %s failed to serve this client (%s); trying again", target, reason)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConnectionAbortedError),
        stop=tenacity.stop_after_attempt(JOIN_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=pause, min=pause, max=4 * pause),
        before_sleep=warn,
        reraise=True,
    )
    try:
        retrying(connect)
    except ConnectionAbortedError as exc:
        raise BackendError(
            f"cannot join the ray cluster at {target}: {server_refusal(exc)} ({JOIN_ATTEMPTS} tries; its "
            "ray_client_server_*.err logs on the head say why)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - version mismatch, refused job, ...
        raise BackendError(f"cannot join the ray cluster at {target}: {first_line(exc)}") from None


def server_refusal(exc: BaseException) -> str:
    """Ray Client's refusal with the reason its server gave: the last line of the server's traceback
    (the first line only says that the server refused)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) < 2:
        return first_line(exc)
    return f"{lines[0]} {lines[-1]}"


__all__ = [
    "host_port",
    "init_in_keeper",
    "init_target",
    "join",
    "probe",
    "resolve_auto",
    "server_refusal",
    "token_available",
    "use_token_if_available",
]
