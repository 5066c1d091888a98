"""Ray on Kubernetes through KubeRay: a RayCluster with a head group and one worker group, and the
``ray-k8s`` backend that creates it with the kubernetes client and joins it with Ray Client.

Conventions are KubeRay's: containers get no command (KubeRay writes ``ray start --head --block``
/ ``ray start --block`` from ``rayStartParams``, deriving CPUs, memory and GPUs from the container's
resources). The head runs no tasks (``num-cpus: "0"``) and exposes the GCS (6379), the dashboard
(8265) and the Ray Client server (10001) through the ``<name>-head-svc`` Service. With
``min < max`` KubeRay's in-tree autoscaler keeps the worker group between ``minReplicas`` and
``maxReplicas`` and removes workers idle for ``idleTimeoutSeconds``; with ``min == max`` the group
has that fixed size and no autoscaler runs.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from shoal.errors import KubernetesError
from shoal.spec import kubernetes_replicas

from ..ray import RayBackend
from . import OneClusterPerFunction, naming
from .config import first_line
from .pods import pod_template
from .validation import validate

log = logging.getLogger("shoal.backends.kubernetes")

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
API_VERSION = f"{GROUP}/{VERSION}"
HEAD_PORTS = (("gcs", 6379), ("dashboard", 8265), ("client", 10001))
CLIENT_PORT = 10001
WORKER_GROUP = "workers"
DEFAULT_RAY_VERSION = "2.60.0"  # when ray is not installed where the manifest is rendered
# The head's Ray Client server forks a server for each client (fork then exec) while its gRPC threads
# run, and gRPC's fork handlers sometimes kill that child (ray-project/ray#63202): 8 of 48 joins here
# needed another try, none of 48 with the handlers off, which gRPC advises where every fork is
# followed by exec. A value the function's own env sets wins.
HEAD_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "false"}


def ray_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return DEFAULT_RAY_VERSION


def head_service(name: str) -> str:
    """The Service KubeRay creates for the head."""
    return f"{name}-head-svc"


def ray_cluster(
    fn,
    *,
    name: str | None = None,
    namespace: str | None = None,
    project: str | None = None,
    spot: Any = None,
    idle_timeout: int = 60,
    service_type: str = "ClusterIP",
) -> dict[str, Any]:
    """The RayCluster of ``fn`` (validated): head group plus one worker group between the replicas."""
    name = name or naming.object_name(fn.name, fn.hash)
    head_env = {variable: value for variable, value in HEAD_ENV.items() if variable not in fn.spec.env}
    head = pod_template(
        fn, "head", project=project, spot=spot, container_name="ray-head", ports=HEAD_PORTS, env=head_env
    )
    worker = pod_template(fn, "worker", project=project, spot=spot, container_name="ray-worker")
    bounds = kubernetes_replicas(fn.replicas)
    autoscaling = bounds.min < bounds.max
    metadata = naming.metadata(fn, name, "cluster", namespace, project)
    spec: dict[str, Any] = {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": autoscaling,
        "headGroupSpec": {
            "serviceType": service_type,
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": head,
        },
        "workerGroupSpecs": [
            {
                "groupName": WORKER_GROUP,
                "replicas": bounds.min,
                "minReplicas": bounds.min,
                "maxReplicas": bounds.max,
                "rayStartParams": {},
                "template": worker,
            }
        ],
    }
    if autoscaling:
        spec["autoscalerOptions"] = {"idleTimeoutSeconds": idle_timeout, "upscalingMode": "Default"}
    return validate({"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": metadata, "spec": spec})


class RayKubernetes(OneClusterPerFunction, RayBackend):
    """The ``ray-k8s`` backend: creates ``fn``'s RayCluster (the validated ``self.spec``) with the
    kubernetes ``CustomObjectsApi``, waits (at most ``ready_timeout`` s, logging progress) until the
    head Service has a ready endpoint, joins through Ray Client exactly as ``RayBackend`` joins a
    ``ray://`` address, and deletes the RayCluster on close unless ``keep=True``.

    The Ray Client address is the head Service's in-cluster name
    (``ray://<name>-head-svc.<namespace>.svc:10001``, for drivers running in the cluster), the load
    balancer's address with ``service_type="LoadBalancer"``, or ``client_address`` (e.g. a
    ``kubectl port-forward``). Requirements go through Ray's ``runtime_env`` unless the function has
    its own image (then they are expected in it).
    """

    name = "ray-k8s"

    def __init__(
        self,
        fn=None,
        *,
        idle_timeout: int = 60,
        service_type: str = "ClusterIP",
        client_address: str | None = None,
        ready_timeout: float = 600.0,
        request_timeout: float = 30.0,
        install_requirements: bool | None = None,
        **options: Any,
    ) -> None:
        """The launcher's options (``namespace``, ``keep``, ``context``, ``spot``, ``project``:
        see ``OneClusterPerFunction``), these, then the Ray backend's."""
        self._cluster_idle_timeout = idle_timeout
        self._service_type = service_type
        self._client_address = client_address
        self._ready_timeout = ready_timeout
        self._request_timeout = request_timeout
        self._created = False
        if install_requirements is None:  # a function with an image of its own has them in it
            install_requirements = fn is not None and not fn.spec.image
        super().__init__(fn, install_requirements=install_requirements, **options)

    def _render(self, fn, **where: Any) -> dict[str, Any]:
        return ray_cluster(fn, idle_timeout=self._cluster_idle_timeout, service_type=self._service_type, **where)

    def _api(self) -> tuple[Any, Any]:
        from kubernetes import client

        from .config import load_config

        load_config(self._context)
        return client.CustomObjectsApi(), client.CoreV1Api()

    def start(self) -> RayKubernetes:
        """Create the RayCluster and wait for its head (first call), then join it as RayBackend does."""
        with self._lock:
            if self._address is None and not self._closed:
                custom, core = self._api()
                body = copy.deepcopy(self.spec)
                body["metadata"]["namespace"] = self.namespace
                self._create(custom, body)
                self._address = self._client_address or self._wait_for_head(custom, core)
            return super().start()

    def _create(self, custom: Any, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=self._request_timeout
            )
        except ApiException as exc:
            if exc.status != 409:  # 409: it exists already (same function version): join it
                raise KubernetesError(
                    f"could not create RayCluster {self.cluster_name} in namespace {self.namespace}: "
                    f"{exc.status} {exc.reason}; is the KubeRay operator installed (kubectl get crd rayclusters.ray.io)?"
                ) from None
            log.info("RayCluster %s exists already in %s; joining it", self.cluster_name, self.namespace)
            return
        except Exception as exc:  # noqa: BLE001 - connection refused, DNS, TLS...
            raise KubernetesError(
                f"could not create RayCluster {self.cluster_name}: the Kubernetes API server did not answer "
                f"({first_line(exc)}); check KUBECONFIG and `kubectl cluster-info`"
            ) from None
        self._created = True

    def _wait_for_head(self, custom: Any, core: Any) -> str:
        """Poll the head Service's endpoints until one is ready; the Ray Client address."""
        service = head_service(self.cluster_name)
        start = time.monotonic()
        last = ""
        while True:
            elapsed = time.monotonic() - start
            state = self._head_state(custom, core, service)
            if state == "ready":
                return self._client_target(core, service)
            if state != last:
                log.info("ray-k8s: RayCluster %s: %s (%.0f s)", self.cluster_name, state, elapsed)
                last = state
            if elapsed > self._ready_timeout:
                raise KubernetesError(
                    f"RayCluster {self.cluster_name} in {self.namespace} not ready after {self._ready_timeout:g} s "
                    f"(last seen: {state}); see `kubectl -n {self.namespace} describe raycluster {self.cluster_name}`"
                )
            time.sleep(2.0)

    def _head_state(self, custom: Any, core: Any, service: str) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            endpoints = core.read_namespaced_endpoints(service, self.namespace, _request_timeout=self._request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return "waiting for the head service"
            raise KubernetesError(f"cannot read the endpoints of {service}: {exc.status} {exc.reason}") from None
        ready = any(subset.addresses for subset in endpoints.subsets or [])
        return "ready" if ready else "waiting for the head pod to be ready"

    def _client_target(self, core: Any, service: str) -> str:
        found = core.read_namespaced_service(service, self.namespace, _request_timeout=self._request_timeout)
        ingress = (found.status.load_balancer.ingress or []) if found.status and found.status.load_balancer else []
        if found.spec.type == "LoadBalancer" and ingress:
            host = ingress[0].ip or ingress[0].hostname
            return f"ray://{host}:{CLIENT_PORT}"
        return f"ray://{service}.{self.namespace}.svc:{CLIENT_PORT}"

    def _adapt(self, minimum: int, maximum: int) -> None:
        """New bounds for the worker group: the RayCluster is patched; KubeRay's autoscaler follows."""
        group = self.spec["spec"]["workerGroupSpecs"][0]
        if (group["minReplicas"], group["maxReplicas"]) == (minimum, maximum):
            self._bounds = (minimum, maximum)
            return
        groups = copy.deepcopy(self.spec["spec"]["workerGroupSpecs"])
        groups[0].update(minReplicas=minimum, maxReplicas=maximum, replicas=minimum)
        patch = {"spec": {"workerGroupSpecs": groups, "enableInTreeAutoscaling": minimum < maximum}}
        custom, _ = self._api()
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.cluster_name, patch, _request_timeout=self._request_timeout
            )
        except Exception as exc:  # noqa: BLE001
            raise KubernetesError(
                f"could not change the bounds of RayCluster {self.cluster_name}: {first_line(exc)}"
            ) from None
        self.spec["spec"].update(patch["spec"])
        self._bounds = (minimum, maximum)

    def close(self) -> None:
        """Disconnect; delete the RayCluster this backend created unless ``keep=True``."""
        super().close()
        if self._created and not self.keep:
            self._created = False
            try:
                custom, _ = self._api()
                custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.cluster_name, _request_timeout=self._request_timeout
                )
            except Exception as exc:  # noqa: BLE001 - closing must not fail at exit: say what is left
                log.warning(
                    "ray-k8s: could not delete RayCluster %s in %s (%s); delete it with kubectl",
                    self.cluster_name,
                    self.namespace,
                    first_line(exc),
                )
