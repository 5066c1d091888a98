"""A hub's ``index.json`` (schema 1): its model, its checks, and picking a version from it.

Every version entry names the ``function.yaml`` it describes (``path``, relative to the hub root)
with the SHA-256 and size of its bytes, the hash of the function built from it, and the digests of
the other files of its folder (``files``), so every byte an import reads is checked.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import HubIndexError, HubNotFoundError

SCHEMA = 1
INDEX_FILE = "index.json"
HEX64 = r"^[0-9a-f]{64}$"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0)


class VersionEntry(BaseModel):
    """One published version: immutable once in the index."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    hash: str = Field(pattern=HEX64)
    path: str
    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0)
    requires_shoal: str | None = None
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    requirements: list[str] = Field(default_factory=list)
    files: dict[str, FileEntry] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return relative_path(value, "path")

    @field_validator("files")
    @classmethod
    def _relative_files(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in value:
            relative_path(name, "files")
        return value

    @field_validator("requires_shoal")
    @classmethod
    def _specifier(cls, value: str | None) -> str | None:
        if value is not None:
            from packaging.specifiers import InvalidSpecifier, SpecifierSet

            try:
                SpecifierSet(value)
            except InvalidSpecifier:
                raise ValueError(f"{value!r} is not a version specifier such as '>=0.2'") from None
        return value

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.path)


class FunctionEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    latest: str
    versions: dict[str, VersionEntry]

    @field_validator("versions")
    @classmethod
    def _versions(cls, value: dict[str, VersionEntry]) -> dict[str, VersionEntry]:
        from packaging.version import InvalidVersion, Version

        for version in value:
            try:
                Version(version)
            except InvalidVersion:
                raise ValueError(f"version {version!r} is not a version number such as 1.2.0") from None
        return value


class HubIndex(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_: int = Field(alias="schema")
    functions: dict[str, FunctionEntry] = Field(default_factory=dict)

    def to_json(self) -> str:
        data = self.model_dump(by_alias=True, exclude_none=True)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def version(self, name: str, version: str | None, where: str) -> tuple[str, VersionEntry]:
        """``(version, entry)``: the one asked for, or ``latest``; HubNotFoundError naming what exists."""
        function = self.functions.get(name)
        if function is None:
            listed = ", ".join(sorted(self.functions)) or "none"
            raise HubNotFoundError(f"hub {where} has no function {name!r} (it has: {listed})")
        wanted = version or function.latest
        if wanted not in function.versions:  # 1.2 names 1.2.0: versions compare as versions
            from packaging.version import Version

            wanted = next((v for v in function.versions if Version(v) == Version(wanted)), wanted)
        entry = function.versions.get(wanted)
        if entry is None:
            listed = ", ".join(sorted_versions(function.versions)) or "none"
            raise HubNotFoundError(f"hub {where} has no version {wanted!r} of {name!r} (it has: {listed})")
        return wanted, entry


def relative_path(value: str, what: str) -> str:
    """A path inside the hub: relative, '/'-separated, without '..'."""
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"{what} {value!r} must be a relative path inside the hub, like functions/x/1.0.0/function.yaml"
        )
    return value


def sorted_versions(versions: Any) -> list[str]:
    from packaging.version import Version

    return sorted(versions, key=Version)


def parse_index(raw: bytes, where: str) -> HubIndex:
    """The index in ``raw``; one HubIndexError naming the first problem otherwise."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HubIndexError(f"hub {where}: {INDEX_FILE} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HubIndexError(f'hub {where}: {INDEX_FILE} must be an object {{"schema": 1, "functions": {{...}}}}')
    if data.get("schema") != SCHEMA:
        raise HubIndexError(
            f"hub {where}: {INDEX_FILE} has schema {data.get('schema')!r}; this shoal reads schema {SCHEMA}"
        )
    try:
        index = HubIndex.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise HubIndexError(f"hub {where}: {INDEX_FILE} field {field}: {first['msg']}") from None
    for name, function in index.functions.items():
        if function.latest not in function.versions:
            raise HubIndexError(
                f"hub {where}: {INDEX_FILE} says latest of {name!r} is {function.latest!r}, which it does not list"
            )
    return index


def empty_index() -> HubIndex:
    return HubIndex.model_validate({"schema": SCHEMA, "functions": {}})
