"""Run inputs, stored once by content in the artifact store, whatever form they are given in.

A value goes through its packager; a local file or folder, or an fsspec URL, is copied by its bytes
(a folder as a reproducible .tar.gz). Either way the input lands at
``<project>/inputs/<sha256><suffix>`` (atomically, see ``ArtifactStore.put_content_addressed``) with
its size and SHA-256, so a run keeps the input it ran with even if the original changes, and workers
that cannot see the driver's disk can still read it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import IO, Any

from .artifacts import KIND_BY_SUFFIX, Artifact, ArtifactStore
from .errors import ArtifactError
from .packagers import PACKAGERS, Packager, _cache_dir, _dump_file


def store_input(store: ArtifactStore, folder: str, value: Any, *, key: str) -> Artifact:
    """The input ``value`` as an Artifact stored in ``folder`` of ``store``, keeping the kind its
    suffix says (``.npy`` loads as an array, other files as a local path, a folder unpacked). An
    Artifact is referenced as it is: it is in a store already."""
    if isinstance(value, Artifact):
        return Artifact(key, value.url, value.kind, value.format, value.size, value.sha256, value.meta)
    source = _source(value, key)
    if source is None:
        return store.put_content_addressed(folder, value, key=key)
    location, is_folder, fetched = source
    name = os.path.basename(os.fspath(value).rstrip("/"))
    if is_folder:
        try:
            stored = store.put_content_addressed(folder, location, key=key, packager=PACKAGERS["folder"])
        finally:
            if fetched:
                shutil.rmtree(location, ignore_errors=True)
        return dataclasses.replace(stored, meta={**stored.meta, "filename": name})
    suffix = ".tar.gz" if name.endswith(".tar.gz") else pathlib.PurePosixPath(name).suffix
    kind = "folder" if suffix == ".tar.gz" else KIND_BY_SUFFIX.get(suffix, "file")
    dump = _dump_url if "://" in location else _dump_file
    copy = Packager("file", suffix, lambda v: True, dump, PACKAGERS["file"].load)
    return store.put_content_addressed(folder, location, key=key, packager=copy, kind=kind, suffix=suffix)


def _dump_url(value: str, handle: IO[bytes]) -> dict:
    import fsspec

    with fsspec.open(value, "rb") as source:
        shutil.copyfileobj(source, handle, 1 << 20)
    return {"filename": os.path.basename(value.rstrip("/"))}


def _source(value: Any, key: str) -> tuple[str, bool, bool] | None:
    """``(path or URL, is a folder, fetched into a temporary folder)`` for an input given as a path
    or an fsspec URL; None for a value. A remote folder is fetched first, to be archived."""
    if not (isinstance(value, os.PathLike) or (isinstance(value, str) and ("://" in value or os.path.exists(value)))):
        return None
    text = os.fspath(value)
    if "://" not in text:
        if not os.path.exists(text):  # a Path names a file: fail before the run
            raise ArtifactError(f"input {key!r}: no such file or folder: {text}")
        return text, os.path.isdir(text), False
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(text)
        found, is_dir = fs.exists(path), fs.isdir(path)
    except (ValueError, ImportError, OSError) as exc:
        raise ArtifactError(f"input {key!r}: cannot open {text}: {exc}") from None
    if not found:
        raise ArtifactError(f"input {key!r}: nothing at {text}")
    if not is_dir:
        return text, False, False
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return path, True, False
    local = tempfile.mkdtemp(dir=_cache_dir())
    fs.get(path.rstrip("/") + "/", local + "/", recursive=True)
    return local, True, True
