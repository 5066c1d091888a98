"""A function's requirements on Dask workers: installed with Dask's ``PipInstall`` plugin when the
backend may install, and checked on the workers of a cluster shoal did not start."""

from __future__ import annotations

import hashlib
from typing import Any

from shoal.errors import BackendError


def requirements_plugin_name(requirements: tuple[str, ...]) -> str:
    """The name of the PipInstall plugin of one set of requirements (same set, same name)."""
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    return f"shoal-requirements-{digest}"


def install_requirements(client: Any, requirements: tuple[str, ...]) -> None:
    """Register PipInstall under a name per requirement set: Dask skips a plugin whose name is
    already registered, so one fixed name would install only the first function's packages."""
    from distributed.diagnostics.plugin import PipInstall

    name = requirements_plugin_name(requirements)
    try:
        client.register_plugin(PipInstall(packages=list(requirements)), name=name)
    except Exception as exc:  # noqa: BLE001 - pip's failure, relayed by Dask
        raise BackendError(
            f"installing requirements {', '.join(requirements)} on the dask workers failed: {str(exc).strip()[-500:]}"
        ) from None


def check_workers(client: Any, requirements: tuple[str, ...]) -> None:
    """Raise naming what the workers lack; workers not there yet will fail clearly themselves."""
    from shoal.requirements import missing_requirements

    try:
        answers = client.run(missing_requirements, list(requirements))
    except Exception:  # noqa: BLE001 - no workers yet: the workers themselves will fail clearly
        return
    missing = sorted({item for found in answers.values() for item in found})
    if missing:
        raise BackendError(
            f"requirements missing on the dask workers: {', '.join(missing)}; install them in the "
            f"workers' image, or pass install_requirements=True to the backend"
        )


__all__ = ["check_workers", "install_requirements", "requirements_plugin_name"]
