"""The function hub: ``hub://[source/]name[:version][@hash]`` references to functions kept in any
fsspec location (an ``index.json`` plus ``functions/<name>/<version>/``), every import verified
against the index's digests and hashes, and cached by content in the project home.

``shoal.Function.from_hub(ref)`` loads one; ``publish`` writes one; ``list_functions`` lists them.
"""

from __future__ import annotations

from .listing import HubListing, list_functions
from .loading import load_function, resolve
from .publish import publish
from .refs import HubRef, is_hub_reference, parse_ref
from .sources import HubSource, check_sources, project_sources

__all__ = [
    "HubListing",
    "HubRef",
    "HubSource",
    "check_sources",
    "is_hub_reference",
    "list_functions",
    "load_function",
    "parse_ref",
    "project_sources",
    "publish",
    "resolve",
]
