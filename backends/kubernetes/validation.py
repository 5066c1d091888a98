"""Validation of rendered objects before anyone sees them: `kubectl apply` or an operator.

Core objects (Job, and every pod template and Service embedded in a custom resource) are checked
against the Kubernetes OpenAPI schemas shipped offline by ``kubernetes-validate``, in strict mode
(unknown fields are errors, as with ``kubectl apply --validate=strict``). Custom resources are checked
against their CRD's ``openAPIV3Schema`` with ``jsonschema``: DaskCluster and DaskAutoscaler against
the CRDs installed with dask-kubernetes, RayCluster, RayJob and RayService against KubeRay's CRDs shipped with
shoal (``shoal/backends/kubernetes/crds/``, or the folder named by ``SHOAL_KUBERAY_CRDS``). CRD
schemas are made strict the same way (objects with known properties reject unknown ones) so a
misspelt field fails here instead of being pruned silently by the API server. A RayService's
``serveConfigV2`` (a string to the CRD) is checked against Ray Serve's own config schema.
"""

from __future__ import annotations

import copy
import functools
import os
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

from shoal.errors import ManifestError

#: Kubernetes version whose schemas are used (None: the newest that kubernetes-validate ships).
KUBERNETES_VERSION_ENV = "SHOAL_K8S_VERSION"
KUBERAY_CRDS_ENV = "SHOAL_KUBERAY_CRDS"
DASK_CRDS = "operator/deployment/helm/dask-kubernetes-operator/crds"
CRD_FILES = {
    ("kubernetes.dask.org", "DaskCluster"): ("dask", "daskcluster.yaml"),
    ("kubernetes.dask.org", "DaskAutoscaler"): ("dask", "daskautoscaler.yaml"),
    ("kubernetes.dask.org", "DaskWorkerGroup"): ("dask", "daskworkergroup.yaml"),
    ("kubernetes.dask.org", "DaskJob"): ("dask", "daskjob.yaml"),
    ("ray.io", "RayCluster"): ("kuberay", "ray.io_rayclusters.yaml"),
    ("ray.io", "RayJob"): ("kuberay", "ray.io_rayjobs.yaml"),
    ("ray.io", "RayService"): ("kuberay", "ray.io_rayservices.yaml"),
}


def kubernetes_version() -> str:
    import kubernetes_validate.utils as kv

    return os.environ.get(KUBERNETES_VERSION_ENV) or kv.latest_version()


def _describe(obj: dict[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name") or "(unnamed)"
    return f"{obj.get('kind', '?')} {name}"


def _where(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_core(obj: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Check a core Kubernetes object against the OpenAPI schema of its kind (strict)."""
    import kubernetes_validate.utils as kv

    try:
        kv.validate(obj, kubernetes_version(), strict=True)
    except kv.ValidationError as exc:
        raise ManifestError(
            f"{where or _describe(obj)} does not validate against Kubernetes {exc.version}: "
            f"at {_where(exc.absolute_path)}: {exc.message}"
        ) from None
    except kv.SchemaNotFoundError as exc:
        raise ManifestError(f"{where or _describe(obj)}: {exc.message}") from None
    return obj


def validate_pod_template(template: dict[str, Any], where: str) -> None:
    """A pod template as the API server checks it: the ``template`` of a v1 PodTemplate."""
    validate_core(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}, where
    )


def validate_service_spec(spec: dict[str, Any], where: str) -> None:
    validate_core({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "check"}, "spec": spec}, where)


def _crd_folder(source: str) -> pathlib.Path:
    if source == "dask":
        try:
            import dask_kubernetes
        except ImportError:
            raise ManifestError(
                "validating Dask resources needs dask-kubernetes: pip install 'shoal[kubernetes]'"
            ) from None
        return pathlib.Path(dask_kubernetes.__file__).parent / DASK_CRDS
    return pathlib.Path(os.environ.get(KUBERAY_CRDS_ENV) or pathlib.Path(__file__).parent / "crds")


def strict_schema(schema: Any) -> Any:
    """A copy of an openAPIV3Schema where objects with listed properties refuse other ones (unless
    they preserve unknown fields, as embedded free-form objects do)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> Any:
    """A jsonschema validator of one served version of a CRD."""
    import jsonschema
    import yaml

    try:
        source, filename = CRD_FILES[(group, kind)]
    except KeyError:
        raise ManifestError(f"no CRD known for {kind} in API group {group}") from None
    path = _crd_folder(source) / filename
    try:
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as exc:
        raise ManifestError(
            f"the {kind} CRD is not available at {path} ({exc.strerror}); reinstall shoal[kubernetes]"
        ) from None
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
            properties = schema.setdefault("properties", {})
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            properties.setdefault("metadata", {"type": "object"})
            schema = strict_schema(schema)
            schema["properties"]["metadata"] = METADATA_SCHEMA
            return jsonschema.Draft7Validator(schema)
    raise ManifestError(f"the {kind} CRD at {path} has no version {version}")


#: What shoal puts in custom resources' metadata (the API server checks ObjectMeta itself).
METADATA_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def validate_custom(obj: dict[str, Any]) -> dict[str, Any]:
    """Check a custom resource against its CRD schema, and its embedded core objects strictly."""
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    validator = crd_validator(group, str(obj.get("kind")), version)
    error = next(iter(sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        raise ManifestError(
            f"{_describe(obj)} does not validate against its CRD: at {_where(error.absolute_path)}: {error.message}"
        )
    for where, kind, part in embedded_objects(obj):
        (validate_pod_template if kind == "template" else validate_service_spec)(part, f"{_describe(obj)} {where}")
    if obj.get("kind") == "RayService" and "serveConfigV2" in (obj.get("spec") or {}):
        validate_serve_config(obj["spec"]["serveConfigV2"], f"{_describe(obj)} spec.serveConfigV2")
    return obj


def embedded_objects(obj: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, "template"|"service", object) of the core objects inside a custom resource."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "DaskCluster":
        for part in ("scheduler", "worker"):
            section = spec.get(part) or {}
            if "spec" in section:
                yield f"spec.{part}", "template", {"metadata": section.get("metadata") or {}, "spec": section["spec"]}
            if "service" in section:
                yield f"spec.{part}.service", "service", section["service"]
    elif obj.get("kind") == "RayCluster":
        head = spec.get("headGroupSpec") or {}
        if "template" in head:
            yield "spec.headGroupSpec.template", "template", head["template"]
        for index, group in enumerate(spec.get("workerGroupSpecs") or []):
            if "template" in group:
                yield f"spec.workerGroupSpecs.{index}.template", "template", group["template"]
    elif obj.get("kind") == "RayJob":
        cluster = {"kind": "RayCluster", "spec": spec.get("rayClusterSpec") or {}}
        for where, kind, embedded in embedded_objects(cluster):
            yield where.replace("spec.", "spec.rayClusterSpec.", 1), kind, embedded
    elif obj.get("kind") == "RayService":
        cluster = {"kind": "RayCluster", "spec": spec.get("rayClusterConfig") or {}}
        for where, kind, embedded in embedded_objects(cluster):
            yield where.replace("spec.", "spec.rayClusterConfig.", 1), kind, embedded
        if "spec" in (spec.get("serveService") or {}):
            yield "spec.serveService.spec", "service", spec["serveService"]["spec"]


def validate_serve_config(text: Any, where: str) -> None:
    """A RayService's ``serveConfigV2`` (YAML text; the CRD only says "a string") checked as Ray
    Serve checks a config file (``ServeDeploySchema``), each deployment's ``autoscaling_config``
    too (the schema leaves a plain mapping unchecked). Needs Ray Serve: ``pip install 'shoal[serve]'``."""
    import yaml

    try:
        config = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{where} is not YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ManifestError(f"{where} must be the YAML text of a Serve config (a mapping with `applications`)")
    try:
        from pydantic import ValidationError
        from ray.serve.config import AutoscalingConfig
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        raise ManifestError(f"{where}: checking a Serve config needs Ray Serve: pip install 'shoal[serve]'") from None
    at = ""
    try:
        with warnings.catch_warnings():  # Ray deprecates metrics_interval_s; its replacements change nothing (2.60)
            warnings.simplefilter("ignore", DeprecationWarning)
            ServeDeploySchema.model_validate(config)
            for app_index, app in enumerate(config.get("applications") or []):
                for index, deployment in enumerate(app.get("deployments") or []):
                    if isinstance(deployment.get("autoscaling_config"), dict):
                        at = f"applications.{app_index}.deployments.{index}.autoscaling_config"
                        AutoscalingConfig.model_validate(deployment["autoscaling_config"])
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(part for part in (at, _where(first.get("loc") or ())) if part and part != "(top level)")
        raise ManifestError(
            f"{where} is not a valid Ray Serve config: at {path or '(top level)'}: {first.get('msg')}"
        ) from None


def validate(obj: dict[str, Any]) -> dict[str, Any]:
    """Validate any object shoal renders; returns it unchanged, or raises ManifestError."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        raise ManifestError("a Kubernetes object is a mapping with apiVersion and kind")
    group = str(obj["apiVersion"]).rpartition("/")[0]
    if "." in group and not group.endswith(".k8s.io"):
        return validate_custom(obj)
    return validate_core(obj)


def validate_all(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for obj in objects:
        validate(obj)
    return objects
