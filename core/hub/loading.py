"""Importing a function from a hub: resolve the reference, fetch, verify every byte, cache.

The order matters: nothing is cached (or saved by a caller) until the bytes match the index's
SHA-256 and size, the rebuilt function matches the index's hash and the ``@hash`` pin, and
``requires_shoal`` admits this shoal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import (
    HubCompatibilityError,
    HubIndexError,
    HubNotFoundError,
    HubSourceError,
    HubVerificationError,
)
from .cache import HubCache
from .documents import build_function, digest
from .index import INDEX_FILE, HubIndex, VersionEntry, parse_index
from .refs import HubRef, parse_ref
from .sources import HubLocation, HubSource, pick_source, project_sources

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function
    from ..project import Project


@dataclass(frozen=True)
class Resolved:
    """A reference resolved against an index: the source, version and entry it names."""

    source: HubSource
    name: str
    version: str
    entry: VersionEntry

    @property
    def ref(self) -> str:
        return str(HubRef(self.name, self.source.name, self.version, self.entry.hash))


def read_index(location: HubLocation) -> HubIndex:
    where = f"{location.source.name!r} ({location.source.url})"
    try:
        raw = location.read(INDEX_FILE)
    except FileNotFoundError:
        raise HubIndexError(
            f"hub {where} has no {INDEX_FILE}; check the url, or publish a function there with `shoal hub publish`"
        ) from None
    return parse_index(raw, where)


def _project(project: Project | None) -> Project:
    if project is not None:
        return project
    from ..project import current_project

    return current_project()


def resolve(ref: HubRef, project: Project | None = None) -> tuple[Resolved, HubLocation]:
    """Find the source and version a reference names (``latest`` without a version)."""
    project = _project(project)
    sources = project_sources(project)
    if ref.source is not None:
        candidates = [pick_source(sources, ref.source)]
    else:
        candidates = sources
    found: list[tuple[HubSource, HubLocation, HubIndex]] = []
    for source in candidates:
        location = HubLocation(source, project)
        index = read_index(location)
        if ref.name in index.functions:
            found.append((source, location, index))
    if not found and ref.source is not None:
        index.version(ref.name, ref.version, repr(ref.source))  # raises, listing what the source has
    if not found:
        searched = ", ".join(s.name for s in candidates)
        raise HubNotFoundError(f"no hub function {ref.name!r} in hub source(s) {searched}; `shoal hub list` shows them")
    if len(found) > 1:
        names = [s.name for s, _, _ in found]
        choices = " or ".join(f"hub://{n}/{ref.name}" for n in names)
        raise HubSourceError(
            f"function {ref.name!r} is in hub sources {' and '.join(repr(n) for n in names)}; name the source: {choices}"
        )
    source, location, index = found[0]
    version, entry = index.version(ref.name, ref.version, f"{source.name!r}")
    return Resolved(source, ref.name, version, entry), location


def check_compatible(name: str, version: str, requires: str | None) -> None:
    if not requires:
        return
    from packaging.specifiers import SpecifierSet

    from .. import __version__

    if not SpecifierSet(requires).contains(__version__, prereleases=True):
        raise HubCompatibilityError(
            f"hub function {name}:{version} requires shoal {requires}, but this is shoal {__version__}; "
            "upgrade shoal or pick another version"
        )


def _check_pin(ref: HubRef, resolved: Resolved) -> None:
    if not ref.matches_hash(resolved.entry.hash):
        raise HubVerificationError(
            f"{ref}: the hub's {resolved.name}:{resolved.version} has hash {resolved.entry.hash[:12]}, not the "
            f"pinned {ref.hash}; nothing was imported (drop @hash to take the hub's version, or pin its hash)"
        )


def _checked(data: bytes, sha256: str, size: int, what: str) -> bytes:
    if len(data) != size or digest(data) != sha256:
        raise HubVerificationError(
            f"{what} differs from the hub index: {len(data)} bytes with sha256 {digest(data)[:12]}, the index says "
            f"{size} bytes with sha256 {sha256[:12]}; the file or the index was changed, nothing was imported"
        )
    return data


def fetch(resolved: Resolved, location: HubLocation) -> Function:
    """Read the version's files, check their bytes, rebuild and check the function."""
    entry = resolved.entry
    where = f"hub://{resolved.source.name}/{resolved.name}:{resolved.version}"

    def read(relative: str) -> bytes:
        try:
            return location.read(relative)
        except FileNotFoundError:
            raise HubVerificationError(
                f"{where}: {location.url(relative)} is listed in the hub index but missing; nothing was imported"
            ) from None

    raw = _checked(read(entry.path), entry.sha256, entry.size, f"{where}: {entry.path}")
    files = {}
    for name, item in sorted(entry.files.items()):
        relative = f"{entry.folder}/{name}" if entry.folder else name
        files[name] = _checked(read(relative), item.sha256, item.size, f"{where}: {relative}")
    fn = build_function(raw, files, where, ref=resolved.ref)
    if fn.name != resolved.name:
        raise HubVerificationError(f"{where}: its function.yaml names function {fn.name!r}; nothing was imported")
    if fn.hash != entry.hash:
        raise HubVerificationError(
            f"{where}: the function rebuilt from its files hashes to {fn.hash[:12]}, the index says "
            f"{entry.hash[:12]}; nothing was imported"
        )
    return fn


def load_function(reference: str | HubRef, project: Project | None = None) -> Function:
    """The verified Function a ``hub://`` reference names (``hub://`` optional), cached in the project home."""
    ref = reference if isinstance(reference, HubRef) else parse_ref(reference, scheme_optional=True)
    project = _project(project)
    if ref.source is not None:
        pick_source(project_sources(project), ref.source)  # an unknown source is an error, cached or not
    cache = HubCache(project.home / "hub")
    if ref.hash:  # a pin: the cache answers without the network
        cached = cache.find(ref)
        if cached is not None:
            fn, record = cached
            check_compatible(ref.name, record.get("version", "?"), record.get("requires_shoal"))
            return fn
    resolved, location = resolve(ref, project)
    _check_pin(ref, resolved)
    check_compatible(resolved.name, resolved.version, resolved.entry.requires_shoal)
    hit = cache.get(resolved.entry.hash)
    if hit is not None and hit[0].labels.get("hub") == resolved.ref:
        return hit[0]
    fn = fetch(resolved, location)
    record = {
        "ref": resolved.ref,
        "source": resolved.source.name,
        "name": resolved.name,
        "version": resolved.version,
        "requires_shoal": resolved.entry.requires_shoal,
    }
    cache.put(fn, record)
    return fn
