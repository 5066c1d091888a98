"""The operational spec of a Function: everything about *how* it runs, validated up front.

Models are frozen pydantic models with ``extra="forbid"`` so a misspelt field is an error, not a
silently ignored key. Validation errors are turned into one-line ``SpecError``s naming the field.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError
from .quantity import canonical_quantity, parse_quantity

# Used with ``fullmatch`` (``match`` + ``$`` would accept a trailing newline).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
Quantity = str | int | float
RESOURCE_SHORTHANDS = ("cpu", "memory", "gpu")
PLACEMENT_SHORTHANDS = ("node_selector", "affinity", "tolerations", "spot", "priority_class")


def json_value(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (tuples become lists), so every process sees and hashes the same
    thing; NaN, infinity and non-JSON objects are refused because the hash is canonical JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON data: strings, finite numbers, lists, mappings ({exc})") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SecretRef(_Model):
    """A reference to a key of a Kubernetes secret; shoal never stores secret values."""

    secret: str = Field(min_length=1)
    key: str = Field(min_length=1)


class ResourceAmounts(_Model):
    cpu: str | None = None
    memory: str | None = None
    gpu: str | None = None

    @field_validator("cpu", "memory", "gpu", mode="before")
    @classmethod
    def _quantity(cls, value: Any, info) -> str | None:
        if value is None:
            return None
        try:
            number = parse_quantity(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; use Kubernetes quantity syntax such as 500m, 2, 4Gi, 512Mi") from None
        if info.field_name == "gpu" and number != number.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number of GPUs")
        if info.field_name == "cpu" and number * 1000 != (number * 1000).to_integral_value():
            raise ValueError(f"{value!r} is finer than 1m (0.001 CPU), which Kubernetes refuses; round it")
        return str(value).strip()


class Resources(_Model):
    """Requests and limits for cpu, memory and gpu, in Kubernetes quantity syntax."""

    requests: ResourceAmounts = ResourceAmounts()
    limits: ResourceAmounts = ResourceAmounts()

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for kind in ("cpu", "memory", "gpu"):
            request, limit = getattr(self.requests, kind), getattr(self.limits, kind)
            if request is not None and limit is not None and parse_quantity(limit) < parse_quantity(request):
                raise ValueError(
                    f"limits.{kind} ({limit}) is below requests.{kind} ({request}); raise the limit or lower the request"
                )
        return self


def gpus_per_run(resources: Resources) -> int:
    """Whole GPUs one run holds: the limit, else the request (engines reserve this many)."""
    amount = resources.limits.gpu or resources.requests.gpu
    return int(parse_quantity(amount)) if amount is not None else 0


class Replicas(_Model):
    """Autoscaling bounds of the function's workers: 0 <= min <= max, max >= 1.

    A function that sets none (``FunctionSpec.replicas`` is None) uses every slot its backend has.
    """

    min: int = Field(default=1, ge=0)
    max: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("replicas must be a number, a (min, max) pair or {min:, max:}")
        if isinstance(value, int):
            return {"min": value, "max": value}
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError("replicas must be a (min, max) pair, e.g. (0, 4)")
            return {"min": value[0], "max": value[1]}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); use min <= max, e.g. (0, {self.min})")
        return self


#: The bounds of a function that sets no replicas where its own pods make the cluster (Kubernetes):
#: there is no machine to fill there, so one worker pod, as before replicas could be left unset.
UNSET_REPLICAS_ON_KUBERNETES = Replicas(min=1, max=1)


def kubernetes_replicas(replicas: Replicas | None) -> Replicas:
    """The worker bounds a Kubernetes cluster of the function's pods gets."""
    return replicas if replicas is not None else UNSET_REPLICAS_ON_KUBERNETES


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class Placement(_Model):
    """Where workers may run: node selector, affinity, tolerations, spot preference, priority."""

    node_selector: dict[str, str] = {}
    affinity: dict[str, Any] | None = None
    tolerations: tuple[Toleration, ...] = ()
    spot: Literal["none", "prefer", "require"] = "none"
    priority_class: str | None = None

    @field_validator("affinity")
    @classmethod
    def _json_affinity(cls, value: dict | None) -> dict | None:
        return None if value is None else json_value(value, "affinity")


class _Volume(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    mount_path: str
    read_only: bool = False
    sub_path: str | None = None

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"mount_path {value!r} must be an absolute path such as /data")
        return value


class PvcVolume(_Volume):
    type: Literal["pvc"] = "pvc"
    claim_name: str = Field(min_length=1)


class NfsVolume(_Volume):
    type: Literal["nfs"] = "nfs"
    server: str = Field(min_length=1)
    path: str = Field(min_length=1)


class HostPathVolume(_Volume):
    type: Literal["host_path"] = "host_path"
    path: str = Field(min_length=1)
    host_path_type: str | None = None


class ConfigMapVolume(_Volume):
    type: Literal["config_map"] = "config_map"
    config_map: str = Field(min_length=1)


class SecretVolume(_Volume):
    type: Literal["secret"] = "secret"
    secret: str = Field(min_length=1)


Volume = Annotated[PvcVolume | NfsVolume | HostPathVolume | ConfigMapVolume | SecretVolume, Field(discriminator="type")]


class FunctionSpec(_Model):
    """Everything that changes how a function runs (hashed), apart from its code and handler."""

    requirements: tuple[str, ...] = ()
    image: str | None = None
    env: dict[str, str | SecretRef] = {}
    resources: Resources = Resources()
    replicas: Replicas | None = None  # None: every slot the backend has
    placement: Placement = Placement()
    volumes: tuple[Volume, ...] = ()
    backend: str | None = None
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    retries: int = Field(default=0, ge=0)
    defaults: dict[str, Any] = {}

    @field_validator("requirements", mode="before")
    @classmethod
    def _pip_specifiers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"use a list of pip requirement strings such as ['numpy>=1.26'], not {value!r}")
        from packaging.requirements import InvalidRequirement, Requirement

        out = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"{item!r} is not a pip requirement string; use e.g. 'numpy>=1.26'")
            try:
                out.append(str(Requirement(item)))
            except InvalidRequirement as exc:
                raise ValueError(
                    f"{item!r} is not a pip requirement ({str(exc).splitlines()[0]}); use e.g. 'numpy>=1.26'"
                ) from None
        return tuple(out)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("use a mapping of variable names to strings or {secret:, key:} references")
        value = dict(value)
        for key, item in value.items():
            if not isinstance(key, str) or not ENV_NAME_PATTERN.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if isinstance(item, bool) or not isinstance(item, (str, int, float, dict, SecretRef)):
                raise ValueError(
                    f"env {key!r} must be a string or a secret reference {{secret: name, key: key}}, not {item!r}"
                )
            if isinstance(item, (int, float)):
                value[key] = str(item)
        return value

    @field_validator("volumes")
    @classmethod
    def _unique_volumes(cls, value: tuple) -> tuple:
        names = [v.name for v in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"volume names must be unique; repeated: {', '.join(dupes)}")
        paths = [v.mount_path for v in value]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"mount paths must be unique; repeated: {', '.join(dupes)}")
        return value

    @field_validator("defaults")
    @classmethod
    def _json_defaults(cls, value: dict) -> dict:
        return json_value(value, "default parameters")


SPEC_FIELDS = tuple(FunctionSpec.model_fields)
METADATA_FIELDS = ("description", "labels")
OPTION_FIELDS = SPEC_FIELDS + RESOURCE_SHORTHANDS + PLACEMENT_SHORTHANDS + METADATA_FIELDS


def unknown_field_error(field: str, valid: tuple[str, ...] = OPTION_FIELDS) -> SpecError:
    """A SpecError for a misspelt field, suggesting the closest valid one."""
    close = difflib.get_close_matches(str(field), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SpecError(f"unknown spec field {field!r}{hint}; valid fields are: {', '.join(valid)}")


def spec_to_dict(spec: FunctionSpec) -> dict[str, Any]:
    """The non-default fields as JSON data; what documents store and ``build_spec`` reads back.

    Each volume keeps its ``type`` even though it equals the model default: it is the discriminator
    that tells a pvc from an nfs volume when the document is read back.
    """
    data = spec.model_dump(mode="json", exclude_defaults=True)
    if spec.replicas is not None and not data.get("replicas"):
        # Explicit (1, 1) differs from unset (every slot); spelled out instead of an empty mapping.
        data["replicas"] = {"min": spec.replicas.min, "max": spec.replicas.max}
    if "volumes" in data:
        data["volumes"] = [{"type": volume.type, **dumped} for volume, dumped in zip(spec.volumes, data["volumes"])]
    return data


def build_spec(data: dict[str, Any], *, base: FunctionSpec | None = None) -> FunctionSpec:
    """Validate ``data`` (optionally over ``base``) into a FunctionSpec, or raise a one-line SpecError."""
    unknown = sorted(set(data) - set(SPEC_FIELDS))
    if unknown:
        raise unknown_field_error(unknown[0])
    merged = spec_to_dict(base) if base is not None else {}
    merged.update(data)
    try:
        return FunctionSpec.model_validate(merged)
    except ValidationError as exc:
        raise spec_error(exc) from None


def spec_error(exc: ValidationError, prefix: str = "") -> SpecError:
    """Turn pydantic's error list into one line naming the field and the fix."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p in _VOLUME_TAGS))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field; check the spelling against the documented spec fields"
    elif first["type"] == "union_tag_invalid":
        message = f"unknown volume type; use one of {', '.join(_VOLUME_TAGS)}"
    elif first["type"] == "union_tag_not_found":
        message = f"missing volume type; add type: one of {', '.join(_VOLUME_TAGS)}"
    elif first["type"] == "literal_error":
        message = f"{message} (got {first.get('input')!r})"
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "spec"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return SpecError(f"invalid spec field {field!r}: {message}{more}")


_VOLUME_TAGS = ("pvc", "nfs", "host_path", "config_map", "secret")


def shorthand_resources(cpu: Any = None, memory: Any = None, gpu: Any = None) -> dict[str, Any]:
    """Map decorator shorthands to requests/limits.

    ``cpu=1`` requests one CPU; ``cpu=("500m", "2")`` requests 500m with a limit of 2. A GPU count is
    both request and limit, as Kubernetes requires for extended resources.
    """
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for kind, value in (("cpu", cpu), ("memory", memory)):
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise SpecError(f"invalid spec field {kind!r}: use a quantity or a (request, limit) pair")
            requests[kind], limits[kind] = value
        else:
            requests[kind] = value
    if gpu is not None:
        requests["gpu"] = limits["gpu"] = gpu
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def canonical_spec(spec: FunctionSpec) -> dict[str, Any]:
    """The hashed form: non-default fields only (so new optional fields keep old hashes), quantities
    spelled one way."""
    data = spec_to_dict(spec)
    for section in ("requests", "limits"):
        amounts = data.get("resources", {}).get(section, {})
        for kind, value in list(amounts.items()):
            amounts[kind] = canonical_quantity(value)
    return data
