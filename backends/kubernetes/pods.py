"""The pod template of a function: every operational field of its spec, in a pod.

Built with the official ``kubernetes.client`` models and serialised by its ``ApiClient``, so field
names and nesting are the API's own. Roles: ``worker`` and ``job`` pods carry everything (image,
command, env and secret references, resources with GPUs as ``nvidia.com/gpu``, volumes, node
selector, affinity incl. spot, tolerations, priority class, labels); the engines' coordinators
(``scheduler`` for Dask, ``head`` for Ray) run no user code, so they get the image, env, labels,
node selector, the user's tolerations and priority class, but no GPUs, volumes or spot affinity.

Image: ``fn.spec.image``, else ``ghcr.io/shoal-project/shoal:<shoal version>`` (shoal with its dask
and ray extras). Requirements: with a custom image they are expected to be installed in it; with the
default image they are installed when the container starts: the pod gets
``EXTRA_PIP_PACKAGES="<requirements>"`` (the convention of Dask's images) and, for the pods whose
command shoal sets (Dask workers, Jobs), a ``sh -c`` prelude that runs ``pip install
$EXTRA_PIP_PACKAGES`` before the engine starts. Ray pods are started by KubeRay, which writes their
command itself: the Ray launcher installs requirements through Ray's ``runtime_env`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shoal.errors import ManifestError
from shoal.quantity import parse_quantity

from . import naming
from .placement import SpotConfig, merge_affinity, spot_affinity, spot_config, spot_tolerations

IMAGE_REPOSITORY = "ghcr.io/shoal-project/shoal"
GPU_RESOURCE = "nvidia.com/gpu"
REQUIREMENTS_ENV = "EXTRA_PIP_PACKAGES"
ROLES = ("worker", "job", "scheduler", "head")
FULL_ROLES = ("worker", "job")  # roles that run user code: resources, volumes and spot apply
#: Installs $EXTRA_PIP_PACKAGES, then runs the container's arguments; fails the pod if pip fails.
INSTALL_PRELUDE = (
    'if [ -n "$EXTRA_PIP_PACKAGES" ]; then pip install --no-cache-dir $EXTRA_PIP_PACKAGES || exit 1; fi; exec "$@"'
)


def default_image() -> str:
    import shoal

    return f"{IMAGE_REPOSITORY}:{shoal.__version__}"


def image_of(fn) -> str:
    return fn.spec.image or default_image()


def installs_at_start(fn) -> bool:
    """True when the pod itself must install the requirements (default image, some requirements)."""
    return bool(fn.spec.requirements) and not fn.spec.image


def env_vars(fn, extra: dict[str, Any] | None = None) -> list[Any]:
    """Plain values as ``value``, secret references as ``valueFrom.secretKeyRef``."""
    from kubernetes.client import V1EnvVar, V1EnvVarSource, V1SecretKeySelector

    from shoal.spec import SecretRef

    merged: dict[str, Any] = dict(fn.spec.env)
    if installs_at_start(fn):
        merged[REQUIREMENTS_ENV] = " ".join(fn.spec.requirements)
    merged.update(extra or {})
    out = []
    for name, value in merged.items():
        if isinstance(value, dict):
            value = SecretRef(**value)
        if isinstance(value, SecretRef):
            source = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=value.secret, key=value.key))
            out.append(V1EnvVar(name=name, value_from=source))
        else:
            out.append(V1EnvVar(name=name, value=str(value)))
    return out


def resource_requirements(fn) -> Any:
    """Requests and limits; a GPU count must be both (Kubernetes refuses a GPU request != limit)."""
    from kubernetes.client import V1ResourceRequirements

    amounts = fn.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for kind in ("cpu", "memory"):
        if getattr(amounts.requests, kind) is not None:
            requests[kind] = getattr(amounts.requests, kind)
        if getattr(amounts.limits, kind) is not None:
            limits[kind] = getattr(amounts.limits, kind)
    gpu_request, gpu_limit = amounts.requests.gpu, amounts.limits.gpu
    if gpu_request is not None and gpu_limit is not None and parse_quantity(gpu_request) != parse_quantity(gpu_limit):
        raise ManifestError(
            f"resources: Kubernetes needs the GPU request equal to the limit, got requests.gpu={gpu_request} "
            f"and limits.gpu={gpu_limit}; give one number, e.g. gpu={gpu_limit}"
        )
    gpus = gpu_limit if gpu_limit is not None else gpu_request
    if gpus is not None and parse_quantity(gpus) > 0:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    if not requests and not limits:
        return None
    return V1ResourceRequirements(requests=requests or None, limits=limits or None)


def volumes(fn) -> tuple[list[Any], list[Any]]:
    """The pod's volumes and the container's mounts, one of each per spec volume."""
    from kubernetes import client as k

    pod_volumes, mounts = [], []
    for volume in fn.spec.volumes:
        source: dict[str, Any]
        if volume.type == "pvc":
            source = {
                "persistent_volume_claim": k.V1PersistentVolumeClaimVolumeSource(
                    claim_name=volume.claim_name, read_only=volume.read_only or None
                )
            }
        elif volume.type == "nfs":
            source = {
                "nfs": k.V1NFSVolumeSource(server=volume.server, path=volume.path, read_only=volume.read_only or None)
            }
        elif volume.type == "host_path":
            source = {"host_path": k.V1HostPathVolumeSource(path=volume.path, type=volume.host_path_type)}
        elif volume.type == "config_map":
            source = {"config_map": k.V1ConfigMapVolumeSource(name=volume.config_map)}
        elif volume.type == "secret":
            source = {"secret": k.V1SecretVolumeSource(secret_name=volume.secret)}
        else:  # pragma: no cover - the spec admits only the kinds above
            raise ManifestError(f"volume {volume.name!r}: unsupported type {volume.type!r}")
        pod_volumes.append(k.V1Volume(name=volume.name, **source))
        mounts.append(
            k.V1VolumeMount(
                name=volume.name,
                mount_path=volume.mount_path,
                read_only=volume.read_only or None,
                sub_path=volume.sub_path,
            )
        )
    return pod_volumes, mounts


def tolerations(fn, role: str, config: SpotConfig) -> list[Any]:
    from kubernetes.client import V1Toleration

    out = [
        V1Toleration(
            key=t.key, operator=t.operator, value=t.value, effect=t.effect, toleration_seconds=t.toleration_seconds
        )
        for t in fn.spec.placement.tolerations
    ]
    if role in FULL_ROLES:
        out.extend(spot_tolerations(fn.spec.placement.spot, config))
    return out


def pod_template_model(
    fn,
    role: str = "worker",
    *,
    project: str | None = None,
    container_name: str | None = None,
    args: list[str] | None = None,
    env: dict[str, Any] | None = None,
    ports: Iterable[tuple[str, int]] = (),
    restart_policy: str | None = None,
    spot: SpotConfig | str | None = None,
    labels: dict[str, str] | None = None,
) -> Any:
    """The ``V1PodTemplateSpec`` of ``fn`` in ``role``; affinity is left to ``pod_template``."""
    from kubernetes import client as k

    if role not in ROLES:
        raise ManifestError(f"unknown pod role {role!r}; use one of {', '.join(ROLES)}")
    full = role in FULL_ROLES
    config = spot_config(spot)
    placement = fn.spec.placement
    command = None
    if args is not None and full and installs_at_start(fn):
        command = ["sh", "-c", INSTALL_PRELUDE, "shoal-entry"]
    pod_volumes, mounts = volumes(fn) if full else ([], [])
    container = k.V1Container(
        name=container_name or role,
        image=image_of(fn),
        command=command,
        args=args,
        env=env_vars(fn, env) or None,
        resources=resource_requirements(fn) if full else None,
        volume_mounts=mounts or None,
        ports=[k.V1ContainerPort(name=name, container_port=port, protocol="TCP") for name, port in ports] or None,
    )
    spec = k.V1PodSpec(
        containers=[container],
        volumes=pod_volumes or None,
        node_selector=dict(placement.node_selector) or None,
        tolerations=tolerations(fn, role, config) or None,
        priority_class_name=placement.priority_class,
        restart_policy=restart_policy,
    )
    metadata = k.V1ObjectMeta(
        labels={**naming.labels(fn, role, project), **(labels or {})}, annotations=naming.annotations(fn)
    )
    return k.V1PodTemplateSpec(metadata=metadata, spec=spec)


def pod_template(fn, role: str = "worker", *, spot: SpotConfig | str | None = None, **options: Any) -> dict[str, Any]:
    """The pod template of ``fn`` as Kubernetes JSON (``V1PodTemplateSpec``, serialised).

    ``options``: ``project`` (label), ``container_name``, ``args`` (the engine command),
    ``env`` (extra variables), ``ports`` ((name, port) pairs), ``restart_policy``, ``labels``.
    """
    from kubernetes.client import ApiClient

    model = pod_template_model(fn, role, spot=spot, **options)
    data = ApiClient().sanitize_for_serialization(model)
    node_affinity = spot_affinity(fn.spec.placement.spot, spot_config(spot)) if role in FULL_ROLES else None
    affinity = merge_affinity(fn.spec.placement.affinity, node_affinity)
    if affinity:
        data["spec"]["affinity"] = affinity
    from .validation import validate_pod_template

    validate_pod_template(data, f"pod template of {fn.name} ({role})")
    return data
