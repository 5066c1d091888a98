"""What hubs offer, read from their indexes only (nothing is fetched or built): ``shoal hub list``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .index import sorted_versions
from .loading import read_index
from .sources import HubLocation, pick_source, project_sources

if TYPE_CHECKING:  # pragma: no cover
    from ..project import Project


@dataclass(frozen=True)
class HubListing:
    source: str
    name: str
    latest: str
    versions: tuple[str, ...]
    hash: str
    description: str | None

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "name": self.name,
            "latest": self.latest,
            "versions": list(self.versions),
            "hash": self.hash,
            "description": self.description,
        }


def list_functions(project: Project | None = None, source: str | None = None) -> list[HubListing]:
    """Every function of every source (or of ``source``), in source order then by name."""
    if project is None:
        from ..project import current_project

        project = current_project()
    sources = project_sources(project)
    chosen = [pick_source(sources, source)] if source else sources
    rows = []
    for item in chosen:
        index = read_index(HubLocation(item, project))
        for name, function in sorted(index.functions.items()):
            entry = function.versions[function.latest]
            versions = tuple(sorted_versions(function.versions))
            rows.append(HubListing(item.name, name, function.latest, versions, entry.hash, entry.description))
    return rows
