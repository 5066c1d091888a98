"""What a deployment is made of, from the function's spec: name, route, replica bounds, Ray Serve's
autoscaling config with fast defaults, and the CPUs a replica reserves. No engine is imported here,
so the Kubernetes RayService rendering and the CLI share these rules with the Ray backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ServiceSpecError
from ..quantity import parse_quantity

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function
    from ..project import Project
    from ..secrets import SecretValues

#: Ray Serve's defaults push replica metrics every 10 s, so a request arriving at zero replicas
#: waited 9.3 s (measured with Ray 2.60); with these it waited 1.8 s, 2 replicas were up 3.4 s into
#: a load of 6 clients, and it was back at 0 replicas 8.6 s after the load ended.
FAST_AUTOSCALING: dict[str, float] = {
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2.0,
    "upscale_delay_s": 0.0,
    "downscale_delay_s": 2.0,
    "downscale_to_zero_delay_s": 2.0,
}

#: The autoscaling knobs ``deploy(scaling=...)`` may set (Ray Serve's ``AutoscalingConfig`` fields).
SCALING_KNOBS = frozenset(
    {
        *FAST_AUTOSCALING,
        "initial_replicas",
        "target_ongoing_requests",
        "upscaling_factor",
        "downscaling_factor",
        "upscale_smoothing_factor",
        "downscale_smoothing_factor",
        "aggregation_function",
    }
)

#: Ray Serve's default ``max_ongoing_requests`` per replica (its ``max_queued_requests`` default, -1,
#: queues without limit); the local backend applies the same when only the queue is bounded.
RAY_DEFAULT_MAX_ONGOING = 5
NO_QUEUE_LIMIT = -1
REQUEST_LIMITS = ("max_ongoing_requests", "max_queued_requests")  # recorded in a service's spec when given

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0  # how long a deployment may take to answer before deploy gives up


def check_service_name(name: str) -> str:
    """A service name is its URL path (``/name``) and its Ray Serve application name."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ServiceSpecError(
            f"invalid service name {name!r}: use up to 63 letters, digits, '-' or '_', starting with a letter "
            "or digit (pass name=... to deploy)"
        )
    return name


def check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ServiceSpecError(f"invalid port {port!r}: give a whole number between 1 and 65535 (port=8000)")
    return port


def check_host(host: Any) -> str:
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        raise ServiceSpecError(f"invalid host {host!r}: give an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
    return host


def url_of(host: str, port: int, name: str) -> str:
    """The URL clients call: a wildcard bind is reached on the loopback address from here."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/{name}"


def request_limits(max_ongoing_requests: Any = None, max_queued_requests: Any = None) -> dict[str, int]:
    """The overload knobs given (unset ones are left to Ray Serve's defaults): ``max_ongoing_requests``
    a replica runs at once, ``max_queued_requests`` waiting beyond them (-1: no limit); past both a
    request is answered 503."""
    limits: dict[str, int] = {}
    if max_ongoing_requests is not None:
        if not _whole(max_ongoing_requests) or max_ongoing_requests < 1:
            raise ServiceSpecError(
                f"max_ongoing_requests must be a positive whole number, got {max_ongoing_requests!r} "
                "(e.g. max_ongoing_requests=5, Ray Serve's default)"
            )
        limits["max_ongoing_requests"] = int(max_ongoing_requests)
    if max_queued_requests is not None:
        if not _whole(max_queued_requests) or (max_queued_requests < 1 and max_queued_requests != NO_QUEUE_LIMIT):
            raise ServiceSpecError(
                f"max_queued_requests must be a positive whole number or -1 (no limit), got {max_queued_requests!r} "
                "(e.g. max_queued_requests=100)"
            )
        limits["max_queued_requests"] = int(max_queued_requests)
    return limits


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def replica_bounds(fn: Function) -> tuple[int, int]:
    """The function's ``replicas`` (min 0 scales to zero); one replica when it sets none."""
    replicas = fn.replicas
    if replicas is None:
        return 1, 1
    return int(replicas.min), int(replicas.max)


def replica_cpus(fn: Function) -> float:
    """CPUs a replica reserves: the function's CPU request (else its limit), 1 when it sets none."""
    resources = fn.resources
    amount = resources.requests.cpu or resources.limits.cpu
    return float(parse_quantity(amount)) if amount is not None else 1.0


def autoscaling_config(fn: Function, scaling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Ray Serve's ``autoscaling_config``: the function's bounds, the fast defaults, then ``scaling``.

    ``initial_replicas`` is at least 1, so a handler whose constructor fails fails the deployment
    (Ray reports ``DEPLOY_FAILED``) even with min 0; an idle service then scales to zero.
    """
    minimum, maximum = replica_bounds(fn)
    config: dict[str, Any] = {"min_replicas": minimum, "max_replicas": maximum, "initial_replicas": max(minimum, 1)}
    config.update(FAST_AUTOSCALING)
    for key, value in dict(scaling or {}).items():
        if key in ("min_replicas", "max_replicas"):
            raise ServiceSpecError(
                f"scaling[{key!r}] is the function's replicas: set replicas=(min, max) on the function instead"
            )
        if key not in SCALING_KNOBS:
            known = ", ".join(sorted(SCALING_KNOBS))
            raise ServiceSpecError(f"unknown scaling knob {key!r}; known: {known}")
        if isinstance(value, bool) or (key != "aggregation_function" and not isinstance(value, (int, float))):
            raise ServiceSpecError(f"scaling[{key!r}] must be a number, got {value!r}")
        config[key] = value
    if not minimum <= config["initial_replicas"] <= maximum:
        raise ServiceSpecError(
            f"scaling['initial_replicas'] ({config['initial_replicas']}) must lie between the function's "
            f"replicas ({minimum}, {maximum})"
        )
    return config


def ray_actor_options(fn: Function) -> dict[str, Any]:
    """A replica's ``ray_actor_options``: its CPUs, and the function's plain environment variables."""
    options: dict[str, Any] = {"num_cpus": replica_cpus(fn)}
    env = plain_env(fn)
    if env:
        options["runtime_env"] = {"env_vars": env}
    return options


def service_secrets(fn: Function, project: Project) -> SecretValues:
    """The values of the function's env secret references, resolved as a run's are
    (``shoal.secrets``): ``SecretError`` naming the missing one, before anything is recorded."""
    from ..secrets import resolve

    return resolve({key: value for key, value in fn.spec.env.items() if not isinstance(value, str)}, project)


def plain_env(fn: Function) -> dict[str, str]:
    """The function's environment variables that hold values (secret references are not served)."""
    return {key: value for key, value in fn.spec.env.items() if isinstance(value, str)}
