"""A Function as a document: ``to_dict``/``from_dict`` and their YAML form.

The document is what ``shoal.yaml`` holds, what the store records and what ``shoal apply`` reads;
``from_dict`` checks every field and, with ``verify``, that the recorded hash still matches.
Driver side. ``Function.to_dict`` and friends call these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .code import Code
from .errors import SpecError
from .spec import METADATA_FIELDS, SPEC_FIELDS, build_spec, spec_to_dict, unknown_field_error

if TYPE_CHECKING:  # pragma: no cover
    from .function import Function


def function_to_dict(fn: Function) -> dict[str, Any]:
    """A plain document (YAML/JSON-able) that ``function_from_dict`` turns back into an equal Function."""
    data: dict[str, Any] = {
        "kind": getattr(fn, "document_kind", "function"),  # a Pipeline's is "pipeline"
        "name": fn.name,
        "handler": fn.handler,
        "hash": fn.hash,
        "spec": spec_to_dict(fn._spec),  # the spec itself: ``fn.spec`` is a deep copy
        "code": fn.code.to_dict(),
    }
    steps = getattr(fn, "step_hashes", None)  # a Pipeline: the hashes of the functions its body calls
    if steps:
        data["steps"] = steps
    metadata: dict[str, Any] = {}
    if fn.description:
        metadata["description"] = fn.description
    if fn.labels:
        metadata["labels"] = fn.labels
    if metadata:
        data["metadata"] = metadata
    return data


def function_from_dict(cls: type[Function], data: Mapping[str, Any], *, verify: bool = True) -> Function:
    """The ``cls`` a ``to_dict`` document describes; with ``verify``, a recorded ``hash`` must match."""
    if not isinstance(data, Mapping):
        raise SpecError("a function document must be a mapping with name, handler, code and spec")
    unknown = sorted(set(data) - {"kind", "name", "handler", "hash", "spec", "code", "metadata", "steps"})
    if unknown:
        raise SpecError(f"unknown function document field {unknown[0]!r}")
    if data.get("kind", "function") not in ("function", "pipeline"):
        raise SpecError(f"document kind is {data['kind']!r}; a function document has kind: function or pipeline")
    if data.get("kind") == "pipeline":
        from .pipelines import Pipeline

        cls = Pipeline
    elif "steps" in data:
        raise SpecError("function document field 'steps' belongs to pipelines (kind: pipeline)")
    for required in ("name", "handler", "code"):
        if required not in data:
            raise SpecError(f"function document is missing {required!r}")
    for section in ("spec", "metadata"):
        if not isinstance(data.get(section) or {}, Mapping):
            raise SpecError(f"function document field {section!r} must be a mapping")
    spec_data = dict(data.get("spec") or {})
    bad = sorted(set(spec_data) - set(SPEC_FIELDS))
    if bad:
        raise unknown_field_error(bad[0], SPEC_FIELDS)
    metadata = dict(data.get("metadata") or {})
    bad = sorted(set(metadata) - set(METADATA_FIELDS))
    if bad:
        raise SpecError(f"unknown metadata field {bad[0]!r}; valid fields are: {', '.join(METADATA_FIELDS)}")
    fn = cls(
        data["name"],
        data["handler"],
        build_spec(spec_data),
        code=Code.from_dict(data["code"]),
        description=metadata.get("description"),
        labels=metadata.get("labels"),
    )
    if "steps" in data or (data.get("kind") == "pipeline" and data.get("hash")):
        # the step hashes its recorded hash covers (none: recorded before pipelines kept them)
        fn.pin_steps(data.get("steps") or {})  # type: ignore[attr-defined]  # a Pipeline; SpecError on a bad mapping
    recorded = data.get("hash")
    if recorded is not None and not isinstance(recorded, str):
        raise SpecError("function document field 'hash' must be a string of 64 hex characters")
    if verify and recorded and recorded != fn.hash:
        raise SpecError(
            f"function {fn.name!r} document says hash {recorded[:12]} but its content hashes to "
            f"{fn.hash[:12]}; the document was edited or corrupted (drop 'hash' to accept the change)"
        )
    return fn


def function_to_yaml(fn: Function, path: str | os.PathLike | None = None) -> str:
    """The document as YAML text, also written to ``path`` when given."""
    import yaml

    text = yaml.safe_dump(fn.to_dict(), sort_keys=False, allow_unicode=True)
    if path is not None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text


def function_from_yaml(cls: type[Function], source: str | os.PathLike) -> Function:
    """From a YAML file path or YAML text."""
    import yaml

    text = os.fspath(source)
    if _looks_like_path(source):
        if not os.path.isfile(text):
            raise SpecError(f"function file not found: {os.path.abspath(text)}; check the path")
        with open(text, encoding="utf-8") as handle:
            text = handle.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {str(exc).splitlines()[0]}") from None
    return cls.from_dict(data)


def _looks_like_path(source: str | os.PathLike) -> bool:
    """A PathLike, or one line of text that names a file or ends like a YAML/JSON file name."""
    if not isinstance(source, str):
        return True
    if "\n" in source:
        return False
    return os.path.isfile(source) or source.strip().lower().endswith((".yaml", ".yml", ".json"))
