"""Artifacts: values and files written by runs to an fsspec location, atomically and content-hashed.

A *packager* (``shoal.packagers``, re-exported here) knows how to write one kind of value to bytes
and read it back. Writes go to a temporary name beside the target and are renamed into place, so
readers never see half a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from .errors import ArtifactError, RunCancelledError, ShoalError
from .packagers import PACKAGERS, Packager, _cache_dir, packager_for, register_packager

__all__ = [
    "KEY_PATTERN",
    "KIND_BY_SUFFIX",
    "PACKAGERS",
    "Artifact",
    "ArtifactStore",
    "Packager",
    "packager_for",
    "reference",
    "register_packager",
]

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


KIND_BY_SUFFIX = {".npy": "numpy", ".parquet": "pandas", ".json": "json", ".txt": "text", ".pkl": "pickle"}


# -- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """A stored value: where it is, what it is, and how to get it back (``load()``)."""

    key: str
    url: str
    kind: str
    format: str = ""
    size: int = 0
    sha256: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> Artifact:
        get: Callable[..., Any] = record.get if isinstance(record, dict) else lambda k, d=None: getattr(record, k, d)
        return cls(
            key=get("key"),
            url=get("url"),
            kind=get("kind"),
            format=get("format") or "",
            size=get("size") or 0,
            sha256=get("sha256") or "",
            meta=dict(get("meta") or {}),
        )

    def open(self, mode: str = "rb") -> IO:
        import fsspec

        try:
            return fsspec.open(self.url, mode).open()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {self.key!r} is missing from the store: {self.url}") from None

    def load(self) -> Any:
        """The value back: an array, frame, bytes, text, JSON value, object, or a local path for files."""
        if self.kind == "file":
            return self.local_path()
        packager = packager_for(None, self.kind)
        with self.open("rb") as handle:
            return packager.load(handle, self)

    def local_path(self) -> pathlib.Path:
        """A local file with the content (the stored file itself when the store is local)."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url)
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            return pathlib.Path(path)
        name = self.meta.get("filename") or os.path.basename(path)
        target = _cache_dir() / (self.sha256 or uuid.uuid4().hex) / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get(path, str(target))
        return target

    def __repr__(self) -> str:
        return f"<Artifact {self.key} kind={self.kind} size={self.size} url={self.url}>"


# -- the store ------------------------------------------------------------------------------------
class _HashingWriter(io.RawIOBase):
    def __init__(self, target: IO[bytes]):
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.target.write(view)
        self.size += len(view)
        return len(view)


class ArtifactStore:
    """An fsspec location (local folder, s3://, gs://, memory://, a shared mount) holding artifacts."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as exc:
            raise ArtifactError(f"cannot open artifact store {url!r}: {exc}") from None
        self.root = self.root.rstrip("/")

    def __getstate__(self):
        return {"url": self.url}

    def __setstate__(self, state):
        self.__init__(state["url"])

    def put(
        self, relpath: str, value: Any, *, key: str, kind: str | None = None, suffix: str | None = None
    ) -> Artifact:
        """Write ``value`` to ``relpath`` (plus ``suffix``, default its packager's) atomically;
        return its record."""
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise ArtifactError(f"invalid artifact key {key!r}: use letters, digits, '_', '-' or '.'")
        packager = packager_for(value, kind)
        if suffix is None:
            suffix = packager.suffix
            if packager.name == "file":
                suffix = pathlib.Path(os.fspath(value)).suffix
        target = f"{self.root}/{relpath}{suffix}"
        meta, size, sha = self._write_atomically(target, packager, value)
        return Artifact(
            key, self.fs.unstrip_protocol(target), packager.name, _format(suffix, packager), size, sha, meta
        )

    def put_content_addressed(
        self,
        folder: str,
        value: Any,
        *,
        key: str,
        packager: Packager | None = None,
        kind: str | None = None,
        suffix: str | None = None,
    ) -> Artifact:
        """Store a value once per content: ``<folder>/<sha256><suffix>`` (written to a staging name,
        then renamed, or dropped when that content is already there)."""
        packager = packager or packager_for(value)
        suffix = packager.suffix if suffix is None else suffix
        staging = f"{self.root}/{folder}/.staging-{uuid.uuid4().hex}"
        meta, size, sha = self._write_atomically(staging, packager, value)
        target = f"{self.root}/{folder}/{sha}{suffix}"
        if self.fs.exists(target):
            self.fs.rm(staging)
        else:
            self.fs.mv(staging, target)
        return Artifact(
            key, self.fs.unstrip_protocol(target), kind or packager.name, _format(suffix, packager), size, sha, meta
        )

    def _write_atomically(self, target: str, packager: Packager, value: Any) -> tuple[dict, int, str]:
        parent = target.rsplit("/", 1)[0]
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(temp, "wb") as raw:
                writer = _HashingWriter(raw)
                buffered = io.BufferedWriter(writer, 1 << 20)
                meta = packager.dump(value, buffered) or {}
                buffered.flush()
            self.fs.mv(temp, target)
        except (ShoalError, RunCancelledError):  # an artifact error, or a run stopped mid-write: as is
            self._discard(temp)
            raise
        except Exception as exc:  # noqa: BLE001 - any storage or packaging failure
            self._discard(temp)
            raise ArtifactError(f"writing artifact to {target} failed: {type(exc).__name__}: {exc}") from exc
        return meta, writer.size, writer.digest.hexdigest()

    def _discard(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except Exception:  # noqa: BLE001 - best effort; the real error is raised by the caller
            pass


def _format(suffix: str, packager: Packager) -> str:
    """The recorded format: the file suffix when it looks like one, else the packager's name
    (a file named ``notes.my long name`` has no format, and the column holds 64 characters)."""
    text = suffix.lstrip(".")
    return text if text and len(text) <= 16 and text.replace(".", "").isalnum() else packager.name


def reference(value: Any, key: str) -> Artifact | None:
    """An Artifact naming what is at a path or fsspec URL, as it is (no size or hash: how ``shoal
    worker run`` rebuilds recorded inputs); None for plain values. Runs store their inputs with
    ``shoal.inputs.store_input``."""
    if isinstance(value, Artifact):
        return Artifact(key, value.url, value.kind, value.format, value.size, value.sha256, value.meta)
    if isinstance(value, os.PathLike) or (isinstance(value, str) and ("://" in value or os.path.exists(value))):
        text = os.fspath(value)
        if "://" not in text and not os.path.exists(text):  # a Path names a file: fail before the run
            raise ArtifactError(f"input {key!r}: no such file or folder: {text}")
        url = text if "://" in text else pathlib.Path(text).resolve().as_uri()
        if text.rstrip("/").endswith(".tar.gz"):
            kind = "folder"
        else:
            kind = KIND_BY_SUFFIX.get(pathlib.PurePosixPath(text).suffix, "file")
        meta = {"filename": os.path.basename(text.rstrip("/"))}
        return Artifact(key, url, kind, pathlib.PurePosixPath(text).suffix.lstrip("."), 0, "", meta)
    return None
