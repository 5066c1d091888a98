"""shoal functions on Kubernetes: pod templates, the operators' custom resources, Jobs, launchers.

Rendering is pure (``pod_template``, ``dask_cluster``, ``dask_autoscaler``, ``ray_cluster``,
``job``); every rendered object is validated (``validate``) against the Kubernetes OpenAPI schemas
and the operators' CRDs before it is returned. ``DaskKubernetes`` (``backend="dask-k8s"``) and
``RayKubernetes`` (``backend="ray-k8s"``) create clusters through the engines' real clients.
Engines and the kubernetes client are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

__all__ = [
    "DaskKubernetes",
    "RayKubernetes",
    "SpotConfig",
    "dask_autoscaler",
    "dask_cluster",
    "job",
    "pod_template",
    "ray_cluster",
    "ray_service",
    "render",
    "validate",
]

_LAZY = {
    "pod_template": ".pods",
    "dask_cluster": ".dask",
    "dask_autoscaler": ".dask",
    "DaskKubernetes": ".dask",
    "ray_cluster": ".ray",
    "RayKubernetes": ".ray",
    "ray_service": ".serve",
    "job": ".jobs",
    "validate": ".validation",
    "SpotConfig": ".placement",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def render(
    fn, engine: str, *, namespace: str | None = None, project: Any = None, spot: Any = None, run: Any = None
) -> list[dict[str, Any]]:
    """The objects to apply for ``engine``, validated: ``dask`` (DaskCluster, plus a DaskAutoscaler
    when min < max), ``ray`` (RayCluster), ``serve`` (a RayService serving it) or ``job`` (a Job for the recorded ``run``).

    ``project``: a Project (jobs take its database and artifact URLs) or a project name (label).
    """
    from shoal.errors import ManifestError

    name = project if project is None or isinstance(project, str) else project.name
    if engine == "dask":
        from .dask import dask_autoscaler, dask_cluster

        objects = [dask_cluster(fn, namespace=namespace, project=name, spot=spot)]
        from shoal.spec import kubernetes_replicas

        bounds = kubernetes_replicas(fn.replicas)
        if bounds.min < bounds.max:
            objects.append(dask_autoscaler(fn, namespace=namespace, project=name))
        return objects
    if engine == "ray":
        from .ray import ray_cluster

        return [ray_cluster(fn, namespace=namespace, project=name, spot=spot)]
    if engine == "serve":
        from .serve import ray_service

        return [ray_service(fn, namespace=namespace, project=name, spot=spot)]
    if engine == "job":
        from .jobs import job

        if isinstance(project, str):
            raise ManifestError("a Job needs the Project object (its database and artifact URLs), not its name")
        return [job(fn, run, project=project, namespace=namespace, spot=spot)]
    raise ManifestError(f"unknown engine {engine!r}; use dask, ray, serve or job")


def shared_for(name: str, fn, project: Any = None, **options: Any):
    """The process-wide ``dask-k8s``/``ray-k8s`` backend of one function version (its cluster is
    made of that function's pods), made on first use and closed at exit with the other shared
    backends. What ``fn.run(backend="dask-k8s")`` resolves to."""
    from shoal import backends

    if project is None:
        from shoal.project import current_project

        project = current_project()
    # Per project too: the pods record into the project's database and artifact store.
    key = f"{name}:{fn.hash}:{project.database}:{project.artifacts_url}"
    return backends.shared_keyed(key, lambda: backends.get(name, fn=fn, project=project, **options))


class OneClusterPerFunction:
    """Mixin of the Kubernetes launchers: a function run by name gets a cluster of its own pods,
    one per function version and project (``shared_for``), already bounded by its replicas.

    It takes the options every launcher shares and renders the launcher's cluster object
    (``_render``) before the engine's backend is made, so a bad spec fails before anything exists.
    """

    name: ClassVar[str]
    pod_secrets = True  # env secret references reach the pods as secretKeyRef
    _render: Callable[..., dict[str, Any]]  # the launcher's cluster object for (fn, namespace, project, spot)

    def __init__(
        self,
        fn=None,
        *,
        namespace: str | None = None,
        keep: bool = False,
        context: str | None = None,
        spot: Any = None,
        project: Any = None,
        **options: Any,
    ) -> None:
        """``fn``: the function whose pods make the cluster; ``namespace``: default the current
        context's; ``keep``: leave the cluster running on close; ``context``: the kubeconfig
        context; ``spot``: spot placement; ``project``: where the pods record (default the current
        project; its database and artifact store must be reachable from pods)."""
        from .reachability import launcher_project

        project = launcher_project(fn, project, self.name, type(self).__name__)
        self.fn = fn
        self.keep = keep
        self._namespace = namespace
        self._context = context
        self.spec = self._render(fn, namespace=namespace, project=project.name, spot=spot)
        super().__init__(**options)

    @property
    def cluster_name(self) -> str:
        return self.spec["metadata"]["name"]

    @property
    def namespace(self) -> str:
        """The namespace given, or the kubeconfig context's (the service account's in a cluster)."""
        if self._namespace is None:
            from .config import current_namespace

            self._namespace = current_namespace()
        return self._namespace

    @property
    def remote(self) -> bool:
        return True

    @classmethod
    def for_function(cls, name: str, fn, project: Any) -> Any:
        return shared_for(name, fn, project)

    def __repr__(self) -> str:
        return f"<shoal {type(self).__name__} {self.cluster_name} namespace={self._namespace or '(current)'}>"
