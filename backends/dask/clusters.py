"""The clusters the ``dask`` backend runs on: reaching a scheduler by address, starting the embedded
cluster (processes of their own, see ``embedded``, or threads of this process), and asking a
scheduler for all of its workers."""

from __future__ import annotations

import functools
import logging
from typing import Any

from shoal.errors import BackendError

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
# The module every embedded worker preloads (its ``dask_setup``: leave Ctrl-C to the driver).
WORKER_PRELOAD = "shoal.backends.dask.worker"


def connect(address: str, timeout: float) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise BackendError(
            f"cannot reach the dask scheduler at {address} within {timeout:g} s "
            f"({type(exc).__name__}); check the address, or start one with `dask scheduler`"
        ) from None


def start_local_cluster(
    n_workers: int | None, threads: int, memory_limit: str | int | None, cluster_options: dict[str, Any]
) -> Any:
    """The embedded cluster: its scheduler and workers are programs of their own (never children
    that re-import the user's ``__main__``; see ``embedded``); with ``processes=False``, an
    in-process LocalCluster of threads. Started within the backend's Dask config
    (``EMBEDDED_CONFIG``, ``allowed-failures: 0``)."""
    import dask.config
    from dask.system import CPU_COUNT

    options = {"silence_logs": logging.ERROR, "memory_limit": memory_limit, **cluster_options}
    workers = n_workers if n_workers is not None else max(1, CPU_COUNT // max(1, threads))
    if not options.pop("processes", True):
        return _threads_cluster(workers, threads, options)
    from .embedded import EmbeddedClusterError, start_embedded

    # Dask's sampling profiler interrupts each worker every 10 ms for a dashboard this
    # cluster does not serve; measured here it cost CPU-bound runs about 5% of their core.
    unprofiled = {"distributed": {"worker": {"profile": {"enabled": False}}}}
    try:
        return start_embedded(
            n_workers=workers,
            threads_per_worker=threads,
            options=options,
            config=dask.config.merge(dask.config.config, unprofiled),
            preload=WORKER_PRELOAD,
        )
    except EmbeddedClusterError as exc:
        raise BackendError(f"the embedded dask cluster did not start: {exc}") from None


def _threads_cluster(n_workers: int, threads: int, options: dict[str, Any]) -> Any:
    from distributed import LocalCluster

    # Without a dashboard the scheduler still serves HTTP, on port 8787 unless told otherwise:
    # a random local port avoids "port in use" warnings and exposing it on every interface.
    options["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **(options.get("scheduler_kwargs") or {})}
    options.setdefault("dashboard_address", None)
    try:
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=False, **options)
    except (TypeError, RuntimeError) as exc:
        raise BackendError(f"the embedded dask cluster did not start (check its options): {_root_cause(exc)}") from None


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def scheduler_workers(client: Any) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler lists, by address (``scheduler_info`` lists only a few unless
    asked for all, in newer distributed)."""
    extra = {"n_workers": -1} if _lists_all_workers(client.__class__) else {}
    return client.scheduler_info(**extra).get("workers", {})


@functools.cache
def _lists_all_workers(client_class: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client_class.scheduler_info).parameters


__all__ = ["EMBEDDED_CONFIG", "WORKER_PRELOAD", "connect", "scheduler_workers", "start_local_cluster"]
