"""The checks and keyword options of ``shoal.Function``: names, handler, description, labels, and
the user-facing options (``cpu=``, ``spot=``, ...) split into spec fields and metadata.

Driver side. ``Function``'s constructor, ``with_spec``, ``from_callable``/``from_file`` and the
``@shoal.function`` decorator all go through these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .spec import (
    METADATA_FIELDS,
    NAME_PATTERN,
    PLACEMENT_SHORTHANDS,
    RESOURCE_SHORTHANDS,
    FunctionSpec,
    shorthand_resources,
    spec_to_dict,
)


def _section(options: dict[str, Any], key: str, base: FunctionSpec | None) -> dict[str, Any]:
    """The resources/placement section shorthands are merged into: the one passed explicitly
    (which replaces the base's), else the base's, so ``with_spec(cpu=2)`` keeps the memory."""
    if key in options:
        return dict(options.pop(key) or {})
    return spec_to_dict(base).get(key, {}) if base is not None else {}


def split_options(options: dict[str, Any], base: FunctionSpec | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Turn user-facing keyword options into (spec fields, metadata), expanding shorthands.

    Shorthands (``cpu=``, ``spot=``, ...) change one entry of ``base``'s resources or placement;
    ``resources=`` / ``placement=`` replace the whole section.
    """
    options = dict(options)
    metadata = {key: options.pop(key) for key in METADATA_FIELDS if key in options}
    spec: dict[str, Any] = {}
    shorthands = {key: options.pop(key) for key in RESOURCE_SHORTHANDS if key in options}
    if any(value is not None for value in shorthands.values()):
        resources = _section(options, "resources", base)
        for section, amounts in shorthand_resources(**shorthands).items():
            resources[section] = {**(resources.get(section) or {}), **amounts}
        spec["resources"] = resources
    placement_items = {key: options.pop(key) for key in PLACEMENT_SHORTHANDS if key in options}
    placement_items = {k: v for k, v in placement_items.items() if v is not None}
    if placement_items:
        placement = _section(options, "placement", base)
        placement.update(placement_items)
        spec["placement"] = placement
    spec.update(options)
    return spec, metadata


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SpecError(
            f"invalid function name {name!r}: use up to 128 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit (pass name=..., e.g. @shoal.function('train'))"
        )
    return name


def check_handler(handler: str) -> str:
    if not isinstance(handler, str) or not handler.strip():
        raise SpecError(f"invalid handler {handler!r}: give the name of the function in the code, e.g. 'train'")
    return handler


def check_description(description: Any) -> str | None:
    if description is not None and not isinstance(description, str):
        raise SpecError(f"invalid field 'description': use a string, not {type(description).__name__}")
    return description


def check_labels(labels: Any) -> dict[str, str]:
    """Labels are string to string (they are filters in the store), so numbers become strings."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and k for k in labels):
        raise SpecError("invalid field 'labels': use a mapping of strings, e.g. {'team': 'ml'}")
    if any(isinstance(v, (Mapping, list, tuple, set)) or v is None for v in labels.values()):
        raise SpecError("invalid field 'labels': values must be strings or numbers, e.g. {'team': 'ml'}")
    return {k: str(v) for k, v in labels.items()}
