"""``shoal.yaml``: reading and checking a project's configuration file and its function entries.

Driver side. ``shoal.Project`` reads it (with the environment and ``shoal.project()``'s arguments
over it); ``shoal init`` writes one.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

from .errors import ProjectError, SpecError
from .spec import METADATA_FIELDS, PLACEMENT_SHORTHANDS, RESOURCE_SHORTHANDS, SPEC_FIELDS

CONFIG_FILE = "shoal.yaml"
CONFIG_KEYS = ("name", "home", "database", "artifacts", "backend", "functions", "hubs")
TEXT_KEYS = ("name", "home", "database", "artifacts", "backend")
FUNCTION_KEYS = ("file", "handler")
ENTRY_KEYS = FUNCTION_KEYS + SPEC_FIELDS + RESOURCE_SHORTHANDS + PLACEMENT_SHORTHANDS + METADATA_FIELDS
HUB_KEY = "hub"  # a functions: entry {hub: hub://describe:1.0.0, <spec fields>}, or just "hub://describe"


def masked(url: str) -> str:
    """A database URL with its password replaced by ``***``, for messages and reprs."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def default_name(path: pathlib.Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name).strip("-.") or "default"
    return name


def load_config(root: pathlib.Path) -> dict[str, Any]:
    """Read and check ``shoal.yaml`` (empty dict when absent)."""
    path = root / CONFIG_FILE
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ProjectError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: expected a mapping with keys {', '.join(CONFIG_KEYS)}")
    unknown = sorted(set(data) - set(CONFIG_KEYS), key=str)
    if unknown:
        raise ProjectError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(CONFIG_KEYS)}")
    for key in TEXT_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ProjectError(f'{path}: {key!r} must be a string, got {value!r}; quote it, e.g. {key}: "{value}"')
    functions = data.get("functions") or {}
    if not isinstance(functions, dict):
        raise ProjectError(f"{path}: 'functions' must map names to 'file.py:handler' or {{file:, handler:, ...}}")
    odd = [key for key in functions if not isinstance(key, str)]
    if odd:
        raise ProjectError(f"{path}: function name {odd[0]!r} must be a string; quote it")
    if data.get("hubs") is not None:
        from .hub.sources import check_sources

        check_sources(data["hubs"], f"{path}: hubs")
    return data


def hub_entry(entry: Any, where: str) -> tuple[str, dict[str, Any]] | None:
    """``(hub reference, spec options)`` for a function entry that names a hub function, else None."""
    from .hub.refs import is_hub_reference

    if is_hub_reference(entry):
        return entry, {}
    if not isinstance(entry, Mapping) or HUB_KEY not in entry:
        return None
    options = dict(entry)
    ref = options.pop(HUB_KEY)
    if not is_hub_reference(ref):
        raise ProjectError(f"{where}: 'hub' must be a reference like hub://describe:1.0.0, got {ref!r}")
    if "file" in options or "handler" in options:
        raise ProjectError(f"{where}: give either 'hub' or 'file'/'handler', not both")
    if "name" in options:
        raise ProjectError(f"{where}: remove 'name'; the key under 'functions' is the function's name")
    unknown = sorted(set(options) - set(ENTRY_KEYS), key=str)
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}; valid fields: hub, {', '.join(ENTRY_KEYS[2:])}")
    return ref, options


def config_entry(entry: Any, where: str) -> tuple[str, str, dict[str, Any]]:
    """Split one shoal.yaml function entry into (file, handler, spec options), checking its keys."""
    if isinstance(entry, str):
        entry = {"handler": entry}
    if not isinstance(entry, Mapping):
        raise ProjectError(f"{where} must be 'file.py:handler' or a mapping with file, handler and spec fields")
    options = dict(entry)
    if "name" in options:
        raise ProjectError(f"{where}: remove 'name'; the key under 'functions' is the function's name")
    unknown = sorted(set(options) - set(ENTRY_KEYS), key=str)
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}; valid fields: {', '.join(ENTRY_KEYS)}")
    handler, file = options.pop("handler", None), options.pop("file", None)
    if isinstance(handler, str) and ":" in handler and file is None:
        file, handler = handler.rsplit(":", 1)
    if not isinstance(file, str) or not file or not isinstance(handler, str) or not handler:
        raise ProjectError(f"{where} needs file and handler, e.g. handler: train.py:train")
    return file, handler, options
