"""Artifacts: values and files written by runs to an fsspec location, atomically and content-hashed.

A *packager* knows how to write one kind of value to bytes and read it back (NumPy arrays as .npy,
DataFrames as parquet, bytes, text, JSON, files, folders, and anything else by pickle). Writes go to a
temporary name beside the target and are renamed into place, so readers never see half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from .errors import ArtifactError, RunCancelledError, ShoalError

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


# -- packagers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Packager:
    """How one kind of value becomes bytes and comes back."""

    name: str
    suffix: str
    matches: Callable[[Any], bool]
    dump: Callable[[Any, IO[bytes]], dict]
    load: Callable[[IO[bytes], "Artifact"], Any]


def _type_is(value: Any, module: str, names: tuple[str, ...]) -> bool:
    cls = type(value)
    return cls.__module__.split(".")[0] == module and cls.__name__ in names


def _is_plain_array(value: Any) -> bool:
    """An ndarray .npy can hold without pickle (object arrays go to the pickle packager)."""
    return _type_is(value, "numpy", ("ndarray",)) and not value.dtype.hasobject


def _dump_numpy(value: Any, handle: IO[bytes]) -> dict:
    import numpy as np

    np.save(handle, value, allow_pickle=False)
    return {"shape": list(value.shape), "dtype": str(value.dtype)}


def _load_numpy(handle: IO[bytes], artifact: "Artifact") -> Any:
    import numpy as np

    return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def _dump_frame(value: Any, handle: IO[bytes]) -> dict:
    try:
        value.to_parquet(handle)
    except ImportError as exc:
        raise ArtifactError(f"storing a DataFrame needs pyarrow: pip install pyarrow ({exc})") from None
    return {"shape": list(value.shape), "columns": [str(c) for c in value.columns][:100]}


def _load_frame(handle: IO[bytes], artifact: "Artifact") -> Any:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(handle.read()))


def _dump_csv(value: Any, handle: IO[bytes]) -> dict:
    """A DataFrame as CSV (asked for with ``kind="csv"``, e.g. ``log_dataset(..., format="csv")``);
    a default index is left out, any other is written as leading columns and read back as the index."""
    import pandas as pd

    levels = 0 if isinstance(value.index, pd.RangeIndex) and value.index.name is None else value.index.nlevels
    handle.write(value.to_csv(index=bool(levels)).encode("utf-8"))
    return {"shape": list(value.shape), "columns": [str(c) for c in value.columns][:100], "index_levels": levels}


def _load_csv(handle: IO[bytes], artifact: "Artifact") -> Any:
    import pandas as pd

    levels = int(artifact.meta.get("index_levels") or 0)
    return pd.read_csv(io.BytesIO(handle.read()), index_col=list(range(levels)) if levels else None)


def _dump_bytes(value: Any, handle: IO[bytes]) -> dict:
    handle.write(bytes(value))
    return {}


def _dump_text(value: str, handle: IO[bytes]) -> dict:
    handle.write(value.encode("utf-8"))
    return {}


def _is_jsonable(value: Any) -> bool:
    if not isinstance(value, (dict, list, tuple, int, float, bool, type(None))):
        return False
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _dump_json(value: Any, handle: IO[bytes]) -> dict:
    handle.write(json.dumps(value, allow_nan=False).encode())
    return {}


def _is_path(value: Any) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and len(value) < 4096 and os.path.exists(value))


def _dump_file(value: Any, handle: IO[bytes]) -> dict:
    path = os.fspath(value)
    with open(path, "rb") as source:
        shutil.copyfileobj(source, handle, 1 << 20)
    return {"filename": os.path.basename(path)}


def _dump_folder(value: Any, handle: IO[bytes]) -> dict:
    """A .tar.gz of the folder, the same bytes for the same content (entries in sorted order, no
    time in the gzip header), so a folder stored by content is stored once."""
    import gzip

    path = os.fspath(value)
    with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as compressed:
        with tarfile.open(fileobj=compressed, mode="w|") as archive:
            archive.add(path, arcname=".")
    return {"filename": os.path.basename(os.path.normpath(path))}


def _load_folder(handle: IO[bytes], artifact: "Artifact") -> pathlib.Path:
    """The archive unpacked into the cache: shared per content hash, fresh when the hash is unknown
    (a folder given by path or URL), so two different folders never share one cache entry."""
    target = _cache_dir() / f"{artifact.sha256 or uuid.uuid4().hex}.d"
    if not target.exists():
        staging = pathlib.Path(tempfile.mkdtemp(dir=_cache_dir()))
        with tarfile.open(fileobj=handle, mode="r|gz") as archive:
            archive.extractall(staging, filter="data")
        try:
            staging.rename(target)
        except OSError:  # another reader got there first
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _dump_pickle(value: Any, handle: IO[bytes]) -> dict:
    import cloudpickle

    try:
        cloudpickle.dump(value, handle)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"cannot store {type(value).__name__} (not picklable: {exc})") from None
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}"}


def _load_pickle(handle: IO[bytes], artifact: "Artifact") -> Any:
    import cloudpickle

    return cloudpickle.load(handle)


PACKAGERS: dict[str, Packager] = {}


def register_packager(packager: Packager) -> None:
    """Add a packager; later registrations are tried first, so users can override built-ins."""
    PACKAGERS.pop(packager.name, None)
    items = list(PACKAGERS.items())
    PACKAGERS.clear()
    PACKAGERS[packager.name] = packager
    PACKAGERS.update(items)


for _packager in reversed(
    [
        Packager("numpy", ".npy", _is_plain_array, _dump_numpy, _load_numpy),
        Packager("pandas", ".parquet", lambda v: _type_is(v, "pandas", ("DataFrame",)), _dump_frame, _load_frame),
        Packager("csv", ".csv", lambda v: False, _dump_csv, _load_csv),  # only when asked for by kind
        Packager(
            "bytes", ".bin", lambda v: isinstance(v, (bytes, bytearray, memoryview)), _dump_bytes,
            lambda h, a: h.read(),
        ),
        Packager("folder", ".tar.gz", lambda v: _is_path(v) and os.path.isdir(v), _dump_folder, _load_folder),
        Packager("file", "", lambda v: _is_path(v) and os.path.isfile(v), _dump_file, lambda h, a: a.local_path()),
        Packager("text", ".txt", lambda v: isinstance(v, str), _dump_text, lambda h, a: h.read().decode("utf-8")),
        Packager("json", ".json", _is_jsonable, _dump_json, lambda h, a: json.loads(h.read())),
        Packager("pickle", ".pkl", lambda v: True, _dump_pickle, _load_pickle),
    ]
):
    register_packager(_packager)


def packager_for(value: Any, kind: str | None = None) -> Packager:
    if kind is not None:
        try:
            return PACKAGERS[kind]
        except KeyError:
            raise ArtifactError(f"unknown artifact kind {kind!r}; known: {', '.join(PACKAGERS)}") from None
    for packager in PACKAGERS.values():
        if packager.matches(value):
            return packager
    raise ArtifactError(f"no packager for {type(value).__name__}")  # unreachable: pickle matches all


KIND_BY_SUFFIX = {".npy": "numpy", ".parquet": "pandas", ".json": "json", ".txt": "text", ".pkl": "pickle"}


def _cache_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("SHOAL_CACHE", os.path.join(tempfile.gettempdir(), "shoal-cache")))
    path.mkdir(parents=True, exist_ok=True)
    return path


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
        return {
            "key": self.key,
            "url": self.url,
            "kind": self.kind,
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_record(cls, record: Any) -> "Artifact":
        get = record.get if isinstance(record, dict) else lambda k, d=None: getattr(record, k, d)
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

    def write(self, data) -> int:  # type: ignore[override]
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
        return Artifact(key, self.fs.unstrip_protocol(target), packager.name, _format(suffix, packager), size, sha, meta)

    def put_content_addressed(
        self, folder: str, value: Any, *, key: str, packager: Packager | None = None, kind: str | None = None,
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
