"""``shoal.DataItem``: a run input (or any stored file or URL) read the way MLRun handlers read theirs.

MLRun hands inputs to handlers as data items (``context.get_input(key).as_df()``); shoal's own
handlers get values or an ``Artifact``. A DataItem wraps an Artifact so that code written against
MLRun's names reads shoal inputs unchanged: ``local()``, ``get()``, ``as_df()``, ``open()``,
``download()``, ``ls()``, ``url``, ``key``, ``suffix``, ``meta``. Inputs are stored once by content
and never change, so the writing names (``put``, ``upload``, ``delete``) raise ``UnsupportedError``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import IO, Any

from .artifacts import Artifact
from .errors import ArtifactError, UnsupportedError

#: how ``as_df`` reads a file, by its format (suffix without the dot)
_FRAME_READERS = {
    "parquet": "read_parquet",
    "pq": "read_parquet",
    "csv": "read_csv",
    "json": "read_json",
    "feather": "read_feather",
}


def wants_data_item(hint: Any) -> bool:
    """Whether a handler parameter's type hint asks for a data item: ``shoal.DataItem``, or a class
    (or forward reference) named ``DataItem`` such as ``mlrun.DataItem``, so an MLRun handler
    typed with MLRun's class gets one unchanged where MLRun is installed."""
    if hint is DataItem:
        return True
    import typing

    args = typing.get_args(hint)  # Optional[DataItem], DataItem | None: an optional input
    if len(args) == 2 and type(None) in args:
        return wants_data_item(next(arg for arg in args if arg is not type(None)))
    if isinstance(hint, str) and hint.replace(" ", "").endswith("|None"):
        hint = hint.replace(" ", "")[: -len("|None")]
    name = hint if isinstance(hint, str) else getattr(hint, "__name__", None)
    return isinstance(name, str) and name.rsplit(".", 1)[-1] == "DataItem"


class DataItem:
    """A stored input read by MLRun's names; ``artifact`` is the shoal record underneath."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact

    # -- what it is ----------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.artifact.key

    @property
    def url(self) -> str:
        """Where the bytes are (a ``file://`` URL for a local store, else the store's fsspec URL)."""
        return self.artifact.url

    @property
    def artifact_url(self) -> str:
        return self.artifact.url

    @property
    def kind(self) -> str:
        """The storage kind, as MLRun names it: ``file``, ``s3``, ``gs``, ``memory``, ..."""
        import fsspec

        protocol = fsspec.core.url_to_fs(self.url)[0].protocol
        return protocol[0] if isinstance(protocol, tuple) else protocol

    @property
    def suffix(self) -> str:
        """The file extension with its dot (``.csv``), from the original file name when known."""
        if self.artifact.kind == "folder":
            return ""
        name = self.artifact.meta.get("filename") or self.url.rsplit("/", 1)[-1]
        return pathlib.PurePosixPath(name).suffix

    @property
    def meta(self) -> dict:
        """The artifact's metadata (shape, columns, file name, labels, ...)."""
        return dict(self.artifact.meta)

    # -- reading -------------------------------------------------------------------------------
    def local(self) -> str:
        """A local path with the content: the stored file itself when the store is local, else a
        cached copy; a folder input comes back unpacked."""
        if self.artifact.kind == "folder":
            return str(self.artifact.load())
        return str(self.artifact.local_path())

    def get(self, size: int | None = None, offset: int = 0, encoding: str | None = None) -> bytes | str:
        """The stored bytes (``size`` bytes from ``offset`` when given), as text with ``encoding``."""
        with self.artifact.open("rb") as handle:
            if offset:
                handle.seek(offset)
            body = handle.read() if size is None else handle.read(size)
        return body.decode(encoding) if encoding else body

    def open(self, mode: str = "rb") -> IO:
        """A file object to read the stored content (inputs are never written in place)."""
        if any(flag in mode for flag in "wax+"):
            raise UnsupportedError(
                f"input {self.key!r} cannot be opened for writing: inputs are stored once by content; "
                f"write a new file with context.log_artifact"
            )
        return self.artifact.open(mode)

    def download(self, target_path: str | os.PathLike) -> None:
        """Copy the content to ``target_path`` (a file path, or a folder for a folder input)."""
        source = self.local()
        if os.path.isdir(source):
            shutil.copytree(source, target_path, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target_path)

    def ls(self) -> list[str]:
        """The names in a folder input, sorted."""
        if self.artifact.kind != "folder":
            raise ArtifactError(f"input {self.key!r} is a file, not a folder; read it with get() or local()")
        root = pathlib.Path(self.local())
        return sorted(str(path.relative_to(root)) for path in root.rglob("*"))

    listdir = ls

    def stat(self) -> os.stat_result:
        return os.stat(self.local())

    def as_df(self, columns: list[str] | None = None, format: str = "", **kwargs: Any) -> Any:
        """The content as a pandas DataFrame, read by ``format`` (default: the suffix; csv,
        parquet, json, feather). ``kwargs`` go to the pandas reader."""
        import pandas as pd

        if self.artifact.kind in ("pandas", "csv", "json", "pickle") and not format and not kwargs:
            value = self.artifact.load()
            if isinstance(value, pd.DataFrame):
                return value[columns] if columns else value
        fmt = (format or self.suffix or self.artifact.format).lstrip(".").lower()
        reader = _FRAME_READERS.get(fmt)
        if reader is None:
            raise ArtifactError(
                f"input {self.key!r} ({fmt or 'no format'}) cannot be read as a DataFrame; pass format= "
                f"one of {', '.join(sorted(_FRAME_READERS))}"
            )
        if columns is not None and reader in ("read_parquet", "read_feather"):
            kwargs["columns"] = columns
            columns = None
        elif columns is not None and reader == "read_csv":
            kwargs["usecols"] = columns
            columns = None
        with self.artifact.open("rb") as handle:
            frame = getattr(pd, reader)(handle, **kwargs)
        return frame[columns] if columns else frame

    def show(self, format: str | None = None) -> None:
        """Show the content in a notebook (a table for frames, text for text); print it elsewhere."""
        suffix = "." + format if format else self.suffix.lower()
        if suffix in (".csv", ".parquet", ".pq"):
            content: Any = self.as_df(format=suffix)
        elif suffix in (".txt", ".md", ".json", ".yaml", ".yml", ".py", ".html", ".htm"):
            content = self.get(encoding="utf-8")
        else:
            content = repr(self)
        try:
            from IPython.display import display  # type: ignore[import-not-found]
        except ImportError:
            print(content)
            return
        display(content)

    # -- no meaning in shoal -------------------------------------------------------------------
    def _read_only(self, name: str) -> UnsupportedError:
        return UnsupportedError(
            f"DataItem.{name}() has no meaning in shoal: input {self.key!r} is stored once by content and "
            f"never changes; write a new value with context.log_artifact(key, body=...) instead"
        )

    def put(self, data: Any, append: bool = False) -> None:
        raise self._read_only("put")

    def upload(self, src_path: str) -> None:
        raise self._read_only("upload")

    def delete(self) -> None:
        raise self._read_only("delete")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"<shoal.DataItem {self.key} {self.url}>"
