"""A function served on Kubernetes: a KubeRay ``RayService``.

KubeRay runs a RayCluster (``rayClusterConfig``: the same head and worker groups as the function's
RayCluster, from ``ray_cluster``) and deploys the Ray Serve config in ``serveConfigV2`` onto it
through the head's dashboard. The config names one application, built on the pods by shoal's own
application builder from the function document carried in its ``args`` (the default image has
shoal installed; the code travels in the document, so no checkout is needed), with the same
autoscaling config and replica CPUs as ``fn.deploy(backend="ray")`` uses.

The object's name does not contain the function's hash: applying the RayService of a new version
updates the same object, and KubeRay rolls it (a new cluster when ``rayClusterConfig`` changes, an
in-place Serve update otherwise) while the old one keeps answering.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from . import naming
from .ray import API_VERSION, ray_cluster
from .validation import validate

SERVE_PORT = 8000
#: Ray Serve's application builder on the pods: ``app_builder({"function": <document>, "name", "project"})``.
APPLICATION_BUILDER = "shoal.backends.ray.serving:app_builder"
#: Room left for what KubeRay appends: "-raycluster-xxxxx" to the cluster, "-head-svc", "-serve-svc".
NAME_CHARS = 40


def service_object_name(service: str, prefix: str = "shoal") -> str:
    """``shoal-<service>``: a DNS-1123 label that stays the same across the function's versions."""
    base = re.sub(r"[^a-z0-9-]+", "-", service.lower()).strip("-") or "fn"
    return f"{prefix}-{base[: NAME_CHARS - len(prefix) - 1].strip('-') or 'fn'}"


def serve_config(
    fn,
    service: str,
    *,
    project: str | None = None,
    scaling: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
) -> dict[str, Any]:
    """The Ray Serve config (what ``serve deploy`` takes) of ``fn`` served as ``service``.

    HTTP listens on every interface of the pods at port 8000 (KubeRay's serve Service points
    there); the route is ``/<service>``; the function's ``timeout`` is the request timeout;
    requirements go through ``runtime_env`` unless the function has an image of its own; the
    overload limits given (``max_ongoing_requests``, ``max_queued_requests``) are the deployment's.
    """
    from shoal.backends.ray.serving import HASH_KEY
    from shoal.services.config import autoscaling_config, check_service_name, ray_actor_options, request_limits

    check_service_name(service)
    http: dict[str, Any] = {"host": "0.0.0.0", "port": SERVE_PORT}
    if fn.spec.timeout is not None:
        http["request_timeout_s"] = fn.spec.timeout
    deployment = {
        "name": service,  # the deployment is named after its service, as fn.deploy(backend="ray") names it
        "autoscaling_config": autoscaling_config(fn, scaling),
        "ray_actor_options": ray_actor_options(fn),
        "user_config": {HASH_KEY: fn.hash},
        **request_limits(max_ongoing_requests, max_queued_requests),
    }
    application: dict[str, Any] = {
        "name": service,
        "route_prefix": f"/{service}",
        "import_path": APPLICATION_BUILDER,
        "args": {"function": fn.to_dict(), "name": service, "project": project or "default"},
        "deployments": [deployment],
    }
    if fn.spec.requirements and not fn.spec.image:
        application["runtime_env"] = {"pip": list(fn.spec.requirements)}
    return {"proxy_location": "EveryNode", "http_options": http, "applications": [application]}


def ray_service(
    fn,
    *,
    service: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    project: str | None = None,
    spot: Any = None,
    scaling: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    idle_timeout: int = 60,
    service_type: str = "ClusterIP",
) -> dict[str, Any]:
    """The RayService (validated) serving ``fn`` as ``service`` (default: the function's name).

    ``rayClusterConfig`` is the spec of ``ray_cluster(fn, ...)`` with the Serve port added to the
    containers; ``scaling`` overrides the autoscaling defaults as in ``fn.deploy(scaling=...)``, and
    ``max_ongoing_requests``/``max_queued_requests`` are the deployment's overload limits (503 past them).
    """
    service = service or fn.name
    name = name or service_object_name(service)
    cluster = ray_cluster(
        fn,
        name=name,
        namespace=namespace,
        project=project,
        spot=spot,
        idle_timeout=idle_timeout,
        service_type=service_type,
    )
    cluster_spec = copy.deepcopy(cluster["spec"])
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    for group in groups:
        _add_serve_port(group["template"])
    config = serve_config(
        fn,
        service,
        project=project,
        scaling=scaling,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
    )
    body = {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": naming.metadata(fn, name, "service", namespace, project),
        "spec": {
            "serveConfigV2": block_yaml(config),
            "rayClusterConfig": cluster_spec,
        },
    }
    return validate(body)


def block_yaml(data: Any, *, all_documents: bool = False) -> str:
    """YAML text for people: multi-line strings (the Serve config, the function's code) as
    ``|`` blocks, as KubeRay's examples write ``serveConfigV2``, and no folding of long lines."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    dump = yaml.dump_all if all_documents else yaml.dump
    return dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=1 << 20)


def _add_serve_port(template: dict[str, Any]) -> None:
    """Name the Serve port on the Ray container: KubeRay's serve Service targets the port named ``serve``."""
    container = template["spec"]["containers"][0]
    ports = container.setdefault("ports", [])
    if not any(port.get("name") == "serve" for port in ports):
        ports.append({"name": "serve", "containerPort": SERVE_PORT, "protocol": "TCP"})
