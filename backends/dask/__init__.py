"""The ``dask`` backend: a ``distributed.Client`` over an embedded cluster, a scheduler address, or
any ``distributed.deploy.Cluster`` the user passes (e.g. a dask-kubernetes ``KubeCluster``).

Workers run ``execute_registered(task)`` in their own processes; the driver records the outcomes.
Elasticity is Dask's own ``Adaptive`` (``cluster.adapt(minimum, maximum)``); its log is the record of
scaling events. Starts of runs reach the driver as Dask events (``log_event``/``subscribe_topic``);
a running attempt is cancelled with ``client.run(cancel_on_worker, [uid])`` on the workers, which
also keeps a cancelled task that waits on a worker from starting there.

Worker deaths: the embedded cluster lets a task fail at once when its worker dies
(``allowed-failures: 0``), so shoal's own ``retries`` decide whether a run that was executing is run
again. A task that had not started yet when its worker died (it was only queued there) never ran:
it is submitted again, so a dying worker loses only the run it was executing.

Modules, by job (side):
- ``worker``: the task Dask executes, cancellation on workers, the workers' preload (worker).
- ``future``: the future of one attempt, resubmitted when lost before it started (driver).
- ``shipping``: what a task carries: the run without its code, the code once per function (inside
  each task while few are in flight) (both).
- ``collector``: the thread that fetches finished outcomes in batches (driver).
- ``backend``: ``DaskBackend``: lifecycle, submitting, cancelling, scaling (driver).
- ``clusters``: reaching a scheduler, starting the embedded cluster (driver).
- ``requirements``: PipInstall and the check of a function's requirements (driver).
- ``embedded``: the embedded cluster's ``dask spec`` processes (driver; imports distributed).
- ``watchdog``: a program that ends the embedded cluster when the driver dies (its own process).

Importing this package imports neither dask nor distributed.
"""

from __future__ import annotations

from .backend import DaskBackend
from .clusters import EMBEDDED_CONFIG, WORKER_PRELOAD
from .requirements import requirements_plugin_name
from .worker import START_TOPIC, cancel_on_worker, dask_setup, run_on_worker

__all__ = [
    "EMBEDDED_CONFIG",
    "START_TOPIC",
    "WORKER_PRELOAD",
    "DaskBackend",
    "cancel_on_worker",
    "dask_setup",
    "requirements_plugin_name",
    "run_on_worker",
]
