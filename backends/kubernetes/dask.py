"""Dask on Kubernetes through the dask-kubernetes operator: DaskCluster + DaskAutoscaler, and the
``dask-k8s`` backend that creates them with dask-kubernetes' own ``KubeCluster``.

Conventions are the operator's (see ``dask_kubernetes.operator.make_cluster_spec``): the scheduler
container runs ``dask scheduler`` behind a Service with ports ``tcp-comm`` 8786 and
``http-dashboard`` 8787; worker containers run ``dask worker --name $(DASK_WORKER_NAME)`` and find
the scheduler through ``DASK_SCHEDULER_ADDRESS``, both set by the operator. Worker replicas start at
the function's ``replicas.min``; the DaskAutoscaler keeps them between min and max.
"""

from __future__ import annotations

from typing import Any

from shoal.errors import KubernetesError
from shoal.spec import kubernetes_replicas

from ..dask import DaskBackend
from . import OneClusterPerFunction, naming
from .config import first_line
from .pods import pod_template
from .validation import validate

API_VERSION = "kubernetes.dask.org/v1"
SCHEDULER_PORTS = (("tcp-comm", 8786), ("http-dashboard", 8787))
WORKER_DASHBOARD = 8788


def worker_args(threads: int = 1) -> list[str]:
    return [
        "dask",
        "worker",
        "--name",
        "$(DASK_WORKER_NAME)",
        "--nthreads",
        str(threads),
        "--dashboard",
        "--dashboard-address",
        str(WORKER_DASHBOARD),
    ]


def dask_cluster(
    fn,
    *,
    name: str | None = None,
    namespace: str | None = None,
    project: str | None = None,
    spot: Any = None,
    threads_per_worker: int = 1,
    idle_timeout: int = 0,
) -> dict[str, Any]:
    """The DaskCluster of ``fn`` (validated): scheduler and worker specs, ``replicas.min`` workers."""
    name = name or naming.object_name(fn.name, fn.hash)
    worker = pod_template(
        fn,
        "worker",
        project=project,
        spot=spot,
        args=worker_args(threads_per_worker),
        ports=[("http-dashboard", WORKER_DASHBOARD)],
    )
    scheduler = pod_template(
        fn,
        "scheduler",
        project=project,
        spot=spot,
        args=["dask", "scheduler", "--host", "0.0.0.0"],
        ports=SCHEDULER_PORTS,
    )
    probe = {"httpGet": {"port": "http-dashboard", "path": "/health"}, "periodSeconds": 2}
    scheduler["spec"]["containers"][0]["readinessProbe"] = probe
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
        "ports": [
            {"name": port, "protocol": "TCP", "port": number, "targetPort": port} for port, number in SCHEDULER_PORTS
        ],
    }
    cluster = {
        "apiVersion": API_VERSION,
        "kind": "DaskCluster",
        "metadata": naming.metadata(fn, name, "cluster", namespace, project),
        "spec": {
            "idleTimeout": idle_timeout,
            "worker": {"replicas": kubernetes_replicas(fn.replicas).min, **worker},
            "scheduler": {**scheduler, "service": service},
        },
    }
    return validate(cluster)


def dask_autoscaler(
    fn, *, name: str | None = None, namespace: str | None = None, project: str | None = None
) -> dict[str, Any]:
    """The DaskAutoscaler of ``fn``'s cluster (validated): minimum/maximum = its replicas."""
    name = name or naming.object_name(fn.name, fn.hash)
    bounds = kubernetes_replicas(fn.replicas)
    autoscaler = {
        "apiVersion": API_VERSION,
        "kind": "DaskAutoscaler",
        "metadata": naming.metadata(fn, name, "autoscaler", namespace, project, annotate=False),
        "spec": {"cluster": name, "minimum": bounds.min, "maximum": bounds.max},
    }
    return validate(autoscaler)


class DaskKubernetes(OneClusterPerFunction, DaskBackend):
    """The ``dask-k8s`` backend: a DaskCluster of ``fn``'s pods, created through dask-kubernetes'
    ``KubeCluster(custom_cluster_spec=<the validated DaskCluster>)``, adapted between the function's
    replicas with the operator's DaskAutoscaler (``KubeCluster.adapt``), used by the Dask backend
    like any ``distributed`` Cluster object, and deleted on close unless ``keep=True``.
    """

    name = "dask-k8s"

    def __init__(self, fn=None, *, threads_per_worker: int = 1, resource_timeout: int = 300, **options: Any) -> None:
        """The launcher's options (``namespace``, ``keep``, ``context``, ``spot``, ``project``:
        see ``OneClusterPerFunction``), then the Dask backend's."""
        self._threads_per_worker = threads_per_worker
        self._resource_timeout = resource_timeout
        super().__init__(fn, threads_per_worker=threads_per_worker, **options)

    def _render(self, fn, **where: Any) -> dict[str, Any]:
        return dask_cluster(fn, threads_per_worker=self._threads_per_worker, **where)

    def _local_cluster(self) -> Any:
        """Instead of the embedded LocalCluster: the DaskCluster on Kubernetes."""
        from .config import load_config

        load_config(self._context)
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError:
            raise KubernetesError(
                "the dask-k8s backend needs dask-kubernetes: pip install 'shoal[kubernetes]'"
            ) from None
        try:
            return KubeCluster(
                custom_cluster_spec=self.spec,
                namespace=self._namespace,
                shutdown_on_close=not self.keep,
                resource_timeout=self._resource_timeout,
                quiet=True,
            )
        except Exception as exc:  # noqa: BLE001 - the operator's or the API server's refusal
            _forget_failed(KubeCluster, self.cluster_name)
            raise KubernetesError(
                f"could not create DaskCluster {self.cluster_name} "
                f"in namespace {self._namespace or '(current)'}: {first_line(exc)}; check KUBECONFIG, "
                f"`kubectl cluster-info`, and that the dask-kubernetes operator is installed"
            ) from None

    def start(self) -> DaskKubernetes:
        """Create the DaskCluster (first call), connect, and adapt to the function's replicas."""
        first = self._client is None
        super().start()
        if first and self._bounds is None:
            bounds = kubernetes_replicas(self.fn.replicas)
            self.adapt(bounds.min, bounds.max)
        return self

    def _adapt(self, minimum: int, maximum: int) -> None:
        """The operator's DaskAutoscaler between the bounds (``KubeCluster.adapt``); equal bounds
        fix the worker group's size."""
        if minimum == maximum:
            self._scale(maximum)
            return
        with self._lock:
            if self._bounds == (minimum, maximum):
                return
            self.cluster.adapt(minimum=minimum, maximum=maximum)
            self._bounds = (minimum, maximum)


def _forget_failed(kube_cluster: Any, name: str) -> None:
    """A KubeCluster whose creation failed still registers itself for closing at exit, which would
    then talk to the API server again and print a traceback; nothing was created, so forget it."""
    from distributed.core import Status

    for instance in list(getattr(kube_cluster, "_instances", ())):
        if getattr(instance, "name", None) == name and instance.status != Status.running:
            kube_cluster._instances.discard(instance)
