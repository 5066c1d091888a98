"""shoal: elastic serverless functions on your laptop, on Dask, on Ray, and on Kubernetes.

A ``shoal.Function`` is code plus every operational detail needed to run it, versioned by a content
hash; ``fn.run()``, ``fn.submit()`` and ``fn.map()`` execute it as recorded runs on a backend.
Importing shoal loads no engine (Dask, Ray, Optuna, Kubernetes) and no database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .artifacts import Artifact
from .context import Context
from .data_item import DataItem
from .errors import (
    AmbiguousError,
    ArtifactError,
    BackendError,
    CodeError,
    NotFoundError,
    ParamError,
    ProjectError,
    RunCancelledError,
    RunFailedError,
    RunTimeoutError,
    ServiceError,
    ShoalError,
    SpecError,
    StoreError,
    TuningError,
    UnsupportedError,
    WorkerLostError,
)
from .function import Function, function
from .project import Project, project
from .runs import Run, RunHandle, RunState, gather

if TYPE_CHECKING:  # imported on first use (``__getattr__``)
    from .pipelines.pipeline import Pipeline, pipeline

__version__ = "0.1.0"


def tune(fn, space=None, **options):
    """Run an Optuna hyperparameter search whose trials are runs of ``fn``; see ``shoal.tuning.tune``.

    A thin wrapper so that ``import shoal`` does not import Optuna.
    """
    from shoal.tuning import tune as _tune

    return _tune(fn, space, **options)


#: Subpackages reachable as attributes after ``import shoal`` (``shoal.backends.get(...)``), imported
#: on first use: none of them imports an engine, but loading them only when asked keeps
#: ``import shoal`` (and ``shoal --help``) fast.
_SUBPACKAGES = ("backends", "services", "tuning")
#: Names of the public API imported on first use too: pipelines load the worker-side execution
#: module (~30 ms of ``import shoal``, measured), which a script that defines no pipeline never needs.
_LAZY_NAMES = {"Pipeline": "pipelines", "pipeline": "pipelines"}


def __getattr__(name: str):
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # the import also sets the attribute
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES) | set(_LAZY_NAMES))


__all__ = [
    "AmbiguousError",
    "Artifact",
    "ArtifactError",
    "BackendError",
    "CodeError",
    "Context",
    "DataItem",
    "Function",
    "NotFoundError",
    "ParamError",
    "Pipeline",
    "Project",
    "ProjectError",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "RunState",
    "RunTimeoutError",
    "ServiceError",
    "ShoalError",
    "SpecError",
    "StoreError",
    "TuningError",
    "UnsupportedError",
    "WorkerLostError",
    "function",
    "gather",
    "pipeline",
    "project",
    "tune",
]
