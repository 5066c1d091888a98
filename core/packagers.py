"""Packagers: how each kind of value becomes bytes in an artifact and comes back.

NumPy arrays as .npy, DataFrames as parquet (or CSV when asked), bytes, text, JSON, files, folders
(a reproducible .tar.gz), and anything else by pickle. ``register_packager`` adds or overrides one;
``packager_for`` picks one for a value. Both sides use them: workers write artifacts, the driver and
``Run.output`` read them back. ``shoal.artifacts`` stores and records what they write.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from .errors import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    from .artifacts import Artifact


def _cache_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("SHOAL_CACHE", os.path.join(tempfile.gettempdir(), "shoal-cache")))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Packager:
    """How one kind of value becomes bytes and comes back."""

    name: str
    suffix: str
    matches: Callable[[Any], bool]
    dump: Callable[[Any, IO[bytes]], dict]
    load: Callable[[IO[bytes], Artifact], Any]


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


def _load_numpy(handle: IO[bytes], artifact: Artifact) -> Any:
    import numpy as np

    return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def _dump_frame(value: Any, handle: IO[bytes]) -> dict:
    try:
        value.to_parquet(handle)
    except ImportError as exc:
        raise ArtifactError(f"storing a DataFrame needs pyarrow: pip install pyarrow ({exc})") from None
    return {"shape": list(value.shape), "columns": [str(c) for c in value.columns][:100]}


def _load_frame(handle: IO[bytes], artifact: Artifact) -> Any:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(handle.read()))


def _dump_csv(value: Any, handle: IO[bytes]) -> dict:
    """A DataFrame as CSV (asked for with ``kind="csv"``, e.g. ``log_dataset(..., format="csv")``);
    a default index is left out, any other is written as leading columns and read back as the index."""
    import pandas as pd

    levels = 0 if isinstance(value.index, pd.RangeIndex) and value.index.name is None else value.index.nlevels
    handle.write(value.to_csv(index=bool(levels)).encode("utf-8"))
    return {"shape": list(value.shape), "columns": [str(c) for c in value.columns][:100], "index_levels": levels}


def _load_csv(handle: IO[bytes], artifact: Artifact) -> Any:
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


def _load_folder(handle: IO[bytes], artifact: Artifact) -> pathlib.Path:
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


def _load_pickle(handle: IO[bytes], artifact: Artifact) -> Any:
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
            "bytes",
            ".bin",
            lambda v: isinstance(v, (bytes, bytearray, memoryview)),
            _dump_bytes,
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
