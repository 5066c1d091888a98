"""Rebuild a local folder hub's ``index.json`` from its ``functions/<name>/<version>/`` folders.

For hubs written by hand (the catalog shipped in shoal): every version folder is read and built as
an import would build it, and listed with the digests of its files. ``requires_shoal`` already in
the index is kept. Run: ``python -m shoal.hub.rebuild core/hub/catalog``.
"""

from __future__ import annotations

import pathlib
import sys

from ..errors import HubPublishError
from .documents import DOCUMENT, build_function
from .index import INDEX_FILE, HubIndex, VersionEntry, empty_index, parse_index
from .publish import default_requires, version_entry, with_version, write_atomic
from .sources import HubLocation, HubSource

SKIPPED = ("__pycache__",)


def folder_files(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file of a version folder by relative path, leaving out caches and hidden files."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(p in SKIPPED or p.startswith(".") for p in relative.parts):
            if not path.name.endswith(".pyc") and ".tmp-" not in path.name:  # nor a publish cut short
                files[relative.as_posix()] = path.read_bytes()
    return files


def rebuild(root: str | pathlib.Path) -> HubIndex:
    """Write ``root/index.json`` listing every version folder under ``root/functions``; returns the index."""
    root = pathlib.Path(root).resolve()
    functions = root / "functions"
    if not functions.is_dir():
        raise HubPublishError(f"{root} has no functions/ folder; a hub holds functions/<name>/<version>/{DOCUMENT}")
    location = HubLocation(HubSource("rebuild", str(root)))
    try:
        old = parse_index(location.read(INDEX_FILE), str(root))
    except FileNotFoundError:
        old = empty_index()
    index = empty_index()
    for document in sorted(functions.glob(f"*/*/{DOCUMENT}")):
        folder = document.parent
        name, version = folder.parent.name, folder.name
        where = f"{root.name}/functions/{name}/{version}"
        files = folder_files(folder)
        fn = build_function(files[DOCUMENT], files, where)
        if fn.name != name:
            raise HubPublishError(f"{where}: {DOCUMENT} names function {fn.name!r}; rename it or its folder")
        previous = old.functions.get(name)
        kept: VersionEntry | None = previous.versions.get(version) if previous else None
        requires = kept.requires_shoal if kept is not None and kept.requires_shoal else default_requires()
        entry = version_entry(fn, f"functions/{name}/{version}", files, requires)
        index = with_version(index, name, version, entry)
    write_atomic(location, INDEX_FILE, index.to_json().encode())
    return index


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m shoal.hub.rebuild HUB_FOLDER", file=sys.stderr)
        return 2
    index = rebuild(args[0])
    for name, function in sorted(index.functions.items()):
        entry = function.versions[function.latest]
        print(f"{name}:{function.latest} {entry.hash[:12]} ({len(function.versions)} version(s))")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
