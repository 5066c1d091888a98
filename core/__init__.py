"""shoal: elastic serverless functions on your laptop, on Dask, on Ray, and on Kubernetes.

A ``shoal.Function`` is code plus every operational detail needed to run it, versioned by a content
hash; ``fn.run()``, ``fn.submit()`` and ``fn.map()`` execute it as recorded runs on a backend.
Importing shoal loads no engine (Dask, Ray, Optuna, Kubernetes) and no database driver.
"""

from __future__ import annotations

from .artifacts import Artifact
from .context import Context
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
    ShoalError,
    SpecError,
    StoreError,
    WorkerLostError,
)
from .function import Function, function
from .project import Project, project
from .runs import Run, RunHandle, RunState

__version__ = "0.1.0"

__all__ = [
    "AmbiguousError",
    "Artifact",
    "ArtifactError",
    "BackendError",
    "CodeError",
    "Context",
    "Function",
    "NotFoundError",
    "ParamError",
    "Project",
    "ProjectError",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "RunState",
    "RunTimeoutError",
    "ShoalError",
    "SpecError",
    "StoreError",
    "WorkerLostError",
    "function",
    "project",
]
