"""The ``ray`` backend: Ray tasks on a local instance of its own, a local autoscaling cluster, or a
cluster the user names.

``RayBackend()`` starts its own instance on first use (``ray.init(address="local")``: it never joins
whatever ``RAY_ADDRESS`` or ``/tmp/ray/ray_current_cluster`` names). Its size is fixed: ``num_cpus``,
or ``max x slots_per_worker`` of the bounds given to ``adapt(min, max)``. Bounds with ``min < max``
start a local autoscaling cluster instead (Ray's own autoscaler with the fake multi-node provider,
worker nodes of ``slots_per_worker`` CPUs between the bounds). ``RayBackend("ray://host:10001")`` or
``RayBackend(address="auto")`` joins an existing cluster and uses it as its operator configured it.

Watched runs' output reaches the driver live through a pipe, and a watchdog process stops an
instance of our own if the driver dies without closing it (SIGTERM, SIGKILL): Ray's agents outlive a
killed driver by minutes otherwise.

The modules, by side:

- driver: ``backend`` (``RayBackend``: submitting, bounds, workers), ``lifecycle`` (its four modes:
  fixed, autoscale, join, adopted), ``connect`` (addresses, probing, ``ray.init``), ``future``
  (``RayFuture``, Ray's errors as the contract's), ``start`` (the start pipe's reader), ``autoscaling``
  (the local autoscaling cluster), ``processes`` (finding and stopping Ray's processes by PID, the
  watchdog), ``fifo`` (how the start and echo pipes are made and opened), ``_compat`` (Ray's
  non-public APIs shoal relies on);
- worker: ``worker`` (``run_on_worker``, the Ray task);
- both ends: ``echo`` (watched runs' output through a pipe).

Importing this package does not import Ray, nor the driver's modules: Ray workers import it on their
way to ``shoal.backends.ray.worker``, so its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .backend import INLINE_CODE, RayBackend
    from .future import RayFuture
    from .worker import run_on_worker

_HOMES = {"RayBackend": ".backend", "INLINE_CODE": ".backend", "RayFuture": ".future", "run_on_worker": ".worker"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)


__all__ = ["INLINE_CODE", "RayBackend", "RayFuture", "run_on_worker"]
