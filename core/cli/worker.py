"""``shoal worker run UID``: execute one recorded run where this process is (a Kubernetes Job's pod).

The run was recorded as pending by whoever launched the worker; this loads the function version by
its hash from the project's database, executes the run in-process (``shoal.execution.execute``
through the local backend, with the function's retries and timeout) and records the outcome there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import typer

if TYPE_CHECKING:  # pragma: no cover
    from shoal import Project, Run
    from shoal.artifacts import Artifact

worker_app = typer.Typer(help="Execute recorded runs in this process (what Kubernetes Jobs run).", no_args_is_help=True)


def run_recorded(uid: str, project: Project) -> Run:
    """Execute the pending run ``uid`` of ``project`` here and record it; returns the finished Run."""
    from shoal import backends
    from shoal.artifacts import reference
    from shoal.errors import ShoalError
    from shoal.runner import Driver

    record = project.store.get_run(uid)
    if record.state != "pending":
        raise ShoalError(f"run {record.uid} is {record.state}, not pending; a run is executed once")
    project.store.claim_runs([record.uid])  # this process drives it now: if it dies, the run is ended
    fn = project.functions.get(f"{record.function}@{record.function_hash}")
    if fn.hash != record.function_hash:
        raise ShoalError(
            f"run {record.uid}: the stored function {fn.hash[:12]} is not the recorded {record.function_hash[:12]}"
        )
    # Recorded inputs are URLs (shoal.inputs.store_input), which reference() always resolves.
    inputs = cast("dict[str, Artifact]", {key: reference(url, key) for key, url in (record.inputs or {}).items()})
    backend = backends.get("local")
    try:
        driver = Driver(fn, project, backend, resolve_secrets=False)  # the pod has them (secretKeyRef)
        params = driver.check(record.params, inputs)
        fields = {
            "uid": record.uid,
            "function": record.function,
            "function_hash": record.function_hash,
            "params": record.params,
            "inputs": record.inputs,
            "parent": record.parent,
            "iteration": record.iteration,
            "backend": record.backend,
            "labels": record.labels,
            "created_at": record.created_at,
        }
        handle = driver.launch(fields, inputs, params=params)
        return handle.result()
    finally:
        project.flush()
        backend.close()


@worker_app.command("run")
def worker_run(
    uid: str = typer.Argument(..., help="The uid of a pending run."),
    database: str | None = typer.Option(
        None, "--database", envvar="SHOAL_DATABASE", help="Database URL of the project."
    ),
    artifacts: str | None = typer.Option(None, "--artifacts", envvar="SHOAL_ARTIFACTS", help="Artifact store URL."),
    project_name: str | None = typer.Option(None, "--project-name", envvar="SHOAL_PROJECT_NAME", help="Project name."),
) -> None:
    """Execute one pending run here and record it (exit 1 if it fails)."""
    import shoal

    project = shoal.Project(".", name=project_name, database=database, artifacts=artifacts)
    try:
        run = run_recorded(uid, project)
    finally:
        project.close()
    typer.echo(f"run {run.uid} {run.state}")
    if not run.ok:  # completed or pruned: a normal end
        raise typer.Exit(1)
