"""Verified hub functions cached by content in the project home (``<home>/hub/<hash>.json``).

Only verified functions are written (atomically: temporary name, then rename), and every read
rebuilds the function and checks its hash against the file's name, so a pinned reference works
offline and nothing upstream can change what a pin already fetched.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
from typing import TYPE_CHECKING, Any

from ..errors import ShoalError

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function
    from .refs import HubRef

log = logging.getLogger("shoal.hub")


class HubCache:
    def __init__(self, folder: pathlib.Path):
        self.folder = folder

    def _path(self, full_hash: str) -> pathlib.Path:
        return self.folder / f"{full_hash}.json"

    def get(self, full_hash: str) -> tuple[Function, dict[str, Any]] | None:
        """The cached function of this hash and what was recorded with it, or None."""
        return self._load(self._path(full_hash), full_hash)

    def find(self, ref: HubRef) -> tuple[Function, dict[str, Any]] | None:
        """The one cached function a pinned reference (name, @hash prefix, version, source) names."""
        if not ref.hash or not self.folder.is_dir():
            return None
        found = []
        for path in self.folder.glob(f"{ref.hash}*.json"):
            loaded = self._load(path, path.stem)
            if loaded is None:
                continue
            fn, record = loaded
            if record.get("name") != ref.name:
                continue
            if ref.version and record.get("version") != ref.version:
                continue
            if ref.source and record.get("source") != ref.source:
                continue
            found.append(loaded)
        return found[0] if len(found) == 1 else None

    def _load(self, path: pathlib.Path, full_hash: str) -> tuple[Function, dict[str, Any]] | None:
        from ..function import Function

        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            fn = Function.from_dict(record["document"], verify=True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ShoalError) as exc:
            log.warning("ignoring the unreadable hub cache entry %s: %s", path, exc)
            return None
        if fn.hash != full_hash:
            log.warning("ignoring the hub cache entry %s: its function hashes to %s", path, fn.hash[:12])
            return None
        return fn, record

    def put(self, fn: Function, record: dict[str, Any]) -> None:
        """Store a verified function; a cache that cannot be written is logged, not raised."""
        data = json.dumps({**record, "document": fn.to_dict()}, sort_keys=True)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    stream.write(data)
                os.replace(temporary, self._path(fn.hash))
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            log.warning("could not cache hub function %s in %s: %s", fn.name, self.folder, exc)
