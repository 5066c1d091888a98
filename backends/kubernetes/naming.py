"""Names, labels and annotations of the Kubernetes objects of a function.

Object names must be DNS-1123 labels (lowercase, digits, '-', at most 63 characters) and label values
at most 63 characters, while function names allow up to 128 and hashes are 64 hex characters: names
and label values are shortened here, and the full hash goes into an annotation.
"""

# No `from __future__ import annotations`: it would bind the module name `annotations`, which the
# function below must own (type checkers then see the __future__ feature, not the function).
import re
from typing import Any

from shoal.errors import ManifestError

LABEL_PREFIX = "shoal.dev"
FUNCTION_LABEL = f"{LABEL_PREFIX}/function"
HASH_LABEL = f"{LABEL_PREFIX}/hash"  # the first HASH_LABEL_CHARS characters of the hash
PROJECT_LABEL = f"{LABEL_PREFIX}/project"
ROLE_LABEL = f"{LABEL_PREFIX}/role"
RUN_LABEL = f"{LABEL_PREFIX}/run"
HASH_ANNOTATION = f"{LABEL_PREFIX}/function-hash"  # the full 64-character hash
HASH_LABEL_CHARS = 16
#: Room left in a 63-character name for what the operators append (e.g. "-scheduler", "-head-svc").
NAME_CHARS = 40

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """``text`` as a valid label value: at most 63 characters, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", str(text))[:63]
    return value.strip("-_.")


def object_name(fn_name: str, fn_hash: str, prefix: str = "shoal") -> str:
    """``shoal-<function>-<hash prefix>``: a DNS-1123 label short enough for the operators' suffixes."""
    base = re.sub(r"[^a-z0-9-]+", "-", fn_name.lower()).strip("-") or "fn"
    suffix = fn_hash[:8]
    room = NAME_CHARS - len(prefix) - len(suffix) - 2
    return f"{prefix}-{base[:room].strip('-') or 'fn'}-{suffix}"


def labels(fn, role: str, project: str | None = None) -> dict[str, str]:
    out = {
        FUNCTION_LABEL: label_value(fn.name),
        HASH_LABEL: fn.hash[:HASH_LABEL_CHARS],
        ROLE_LABEL: role,
    }
    if project:
        out[PROJECT_LABEL] = label_value(project)
    for key, value in out.items():
        if not _LABEL_VALUE.match(value):
            raise ManifestError(f"label {key}={value!r} is not a valid Kubernetes label value")
    return out


def annotations(fn) -> dict[str, str]:
    return {HASH_ANNOTATION: fn.hash}


def metadata(
    fn, name: str, role: str, namespace: str | None, project: str | None, *, annotate: bool = True
) -> dict[str, Any]:
    """The ``metadata`` of one of ``fn``'s objects: name, labels, the full hash, the namespace if given."""
    out: dict[str, Any] = {"name": name, "labels": labels(fn, role, project)}
    if annotate:
        out["annotations"] = annotations(fn)
    if namespace:
        out["namespace"] = namespace
    return out
