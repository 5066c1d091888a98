"""Checks that pods can reach where runs are recorded and artifacts written.

Pods run on other machines: a SQLite database or an artifact folder on the driver's disk is not
theirs, so a Kubernetes backend refuses them before it creates anything.
"""

from __future__ import annotations

from shoal.errors import UnreachableStorageError

LOCAL_SCHEMES = ("file", "local", "memory")


def is_local_url(url: str) -> bool:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return scheme in ("",) + LOCAL_SCHEMES


def check_reachable(
    database: str | None = None, artifacts: str | None = None, *, what: str = "a Kubernetes backend"
) -> None:
    """Raise KubernetesError for a SQLite database or a local artifact store."""
    if database is not None and str(database).lower().startswith("sqlite"):
        raise UnreachableStorageError(
            f"{what} cannot use the SQLite database {database}: pods cannot reach it; set `database:` in "
            f"shoal.yaml or SHOAL_DATABASE to a server, e.g. postgresql+psycopg://user@db:5432/shoal"
        )
    if artifacts is not None and is_local_url(str(artifacts)):
        raise UnreachableStorageError(
            f"{what} cannot use the local artifact store {artifacts}: pods cannot write there; set "
            f"`artifacts:` in shoal.yaml or SHOAL_ARTIFACTS to a shared URL such as s3://bucket/shoal or gs://bucket/shoal"
        )


def check_project(project, *, what: str = "a Kubernetes backend") -> None:
    check_reachable(project.database, project.artifacts_url, what=what)


def launcher_project(fn, project, engine: str, launcher: str):
    """The project a ``dask-k8s``/``ray-k8s`` launcher records into, checked reachable from pods;
    a launcher renders the function's own pods, so it cannot be made without the function."""
    if fn is None:
        from shoal.errors import BackendError

        raise BackendError(
            f"the {engine} backend renders the function's pods, so it needs the function: "
            f"use backend=shoal.backends.kubernetes.{launcher}(fn, namespace=...)"
        )
    if project is None:
        from shoal.project import current_project

        project = current_project()
    check_project(project, what=f"the {engine} backend")
    return project
