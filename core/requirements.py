"""Which of a function's pip requirements are missing from a Python environment.

Run in the driver for embedded engines (their workers share its environment) and on the workers of
remote engines, so a missing package is a clear error before the run starts, not an ImportError in
the middle of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=256)
def _missing_one(requirement: str) -> str | None:
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return None  # not meant for this platform
    try:
        installed = metadata.version(parsed.name)
    except metadata.PackageNotFoundError:
        return requirement
    if parsed.specifier and not parsed.specifier.contains(installed, prereleases=True):
        return f"{requirement} (installed: {installed})"
    return None


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements this environment does not satisfy, as readable strings."""
    return [problem for problem in (_missing_one(r) for r in requirements) if problem]
