"""Publishing a Function to a hub: its files, then the index, each written under a temporary name
and renamed into place (atomic on local folders and POSIX mounts), so readers never see half a version.

A version is immutable: publishing it again with the same content is a no-op, with other content
an error.
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import HubError, HubPublishError, ShoalError
from .documents import DOCUMENT, REF_LABEL, function_files
from .index import INDEX_FILE, FileEntry, FunctionEntry, HubIndex, VersionEntry, empty_index, parse_index
from .sources import HubLocation, HubSource, project_sources

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function
    from ..project import Project


def default_requires() -> str:
    from .. import __version__

    major, minor = __version__.split(".")[:2]
    return f">={major}.{minor}"


def version_entry(fn: Function, folder: str, files: dict[str, bytes], requires_shoal: str | None) -> VersionEntry:
    """The index entry of a version whose files are ``files`` in ``folder`` (relative to the hub root)."""
    from .documents import digest

    document = files[DOCUMENT]
    others = {name: FileEntry(sha256=digest(data), size=len(data)) for name, data in files.items() if name != DOCUMENT}
    return VersionEntry(
        hash=fn.hash,
        path=f"{folder}/{DOCUMENT}",
        sha256=digest(document),
        size=len(document),
        requires_shoal=requires_shoal,
        description=fn.description,
        labels={k: v for k, v in fn.labels.items() if k != REF_LABEL},
        requirements=list(fn.spec.requirements or []),
        files=others,
    )


def with_version(index: HubIndex, name: str, version: str, entry: VersionEntry) -> HubIndex:
    """A copy of ``index`` listing ``entry``; ``latest`` moves only forward."""
    from packaging.version import Version

    functions = dict(index.functions)
    current = functions.get(name)
    versions = dict(current.versions) if current else {}
    versions[version] = entry
    latest = version if current is None or Version(version) >= Version(current.latest) else current.latest
    functions[name] = FunctionEntry(latest=latest, versions=versions)
    return HubIndex.model_validate({"schema": index.schema_, "functions": functions})


def write_atomic(location: HubLocation, relative: str, data: bytes) -> None:
    """Write under a temporary name, then rename into place."""
    fs = location.fs
    final = location.path(relative)
    folder = posixpath.dirname(final)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    temporary = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
    fs.pipe_file(temporary, data)
    try:
        fs.mv(temporary, final)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(temporary)
        raise


@contextlib.contextmanager
def index_lock(location: HubLocation) -> Iterator[None]:
    """One publisher at a time on a local folder hub (object stores have no locks to take)."""
    if location.protocol != "file":
        yield
        return
    from filelock import FileLock

    location.fs.makedirs(location.root, exist_ok=True)
    with FileLock(location.path(".index.json.lock"), timeout=60):
        yield


def hub_location(hub: str, project: Project | None) -> HubLocation:
    """A hub by URL or by the name of one of the project's sources (which brings its credentials)."""
    if "://" not in hub and project is not None:
        for source in project_sources(project):
            if source.name == hub:
                return HubLocation(source, project)
    return HubLocation(HubSource("publish", hub), project)


def read_or_empty(location: HubLocation) -> HubIndex:
    where = f"{location.source.url}"
    try:
        raw = location.read(INDEX_FILE)
    except FileNotFoundError:
        return empty_index()
    return parse_index(raw, where)


def publish(
    fn: Function,
    hub: str,
    version: str,
    *,
    requires_shoal: str | None = None,
    project: Project | None = None,
) -> VersionEntry:
    """Publish ``fn`` as ``version`` to the hub at ``hub`` (an fsspec URL or folder, or a source name).

    Returns the index entry. ``requires_shoal`` defaults to this shoal's major.minor and up.
    """
    from packaging.version import InvalidVersion, Version

    from ..function import Function

    if not isinstance(fn, Function):
        raise HubPublishError(f"publish takes a shoal.Function, got {type(fn).__name__}")
    try:
        Version(version)
    except (InvalidVersion, TypeError):
        raise HubPublishError(f"version {version!r} is not a version number; use e.g. --version 1.2.0") from None
    if requires_shoal is not None:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(requires_shoal)
        except InvalidSpecifier:
            raise HubPublishError(f"requires_shoal {requires_shoal!r} is not a specifier such as '>=0.2'") from None
    location = hub_location(hub, project)
    folder = f"functions/{fn.name}/{version}"
    files = function_files(fn)
    entry = version_entry(fn, folder, files, requires_shoal or default_requires())
    with index_lock(location):
        index = read_or_empty(location)
        existing = index.functions.get(fn.name)
        old = existing.versions.get(version) if existing else None
        if old is not None:
            if (old.hash, old.sha256, old.files) == (entry.hash, entry.sha256, entry.files):
                return old  # the same content again: nothing to do
            raise HubPublishError(
                f"{fn.name}:{version} is already published in {hub} with hash {old.hash[:12]}; this function "
                f"hashes to {entry.hash[:12]}"
                + ("" if old.hash != entry.hash else " with other files or metadata")
                + "; versions are immutable: publish it as a new version"
            )
        try:
            for name, data in sorted(files.items()):
                write_atomic(location, f"{folder}/{name}", data)
            write_atomic(location, INDEX_FILE, with_version(index, fn.name, version, entry).to_json().encode())
        except ShoalError:
            raise
        except Exception as exc:  # noqa: BLE001 - every filesystem has its own errors
            raise HubError(f"publishing {fn.name}:{version} to {hub} failed: {type(exc).__name__}: {exc}") from exc
    return entry
