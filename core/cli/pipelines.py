"""``shoal pipelines list | graph | resume``, and the steps table ``shoal runs show`` prints for a
pipeline run."""

from __future__ import annotations

import typer

from shoal.errors import AmbiguousError, NotFoundError, ParamError

from . import output

pipelines_app = typer.Typer(help="Pipeline runs: list, graph, resume.", no_args_is_help=True)
KIND_LABEL = "shoal.kind"


def _project():
    from .targets import open_project as opened

    return opened()


def _pipeline_run(project, uid: str):
    try:
        run = project.runs.get(uid)
    except (NotFoundError, AmbiguousError) as exc:
        raise ParamError(f"UID: {exc}") from None
    if run.labels.get(KIND_LABEL) != "pipeline":
        raise ParamError(f"UID: run {run.uid[:12]} of {run.function} is not a pipeline run; see shoal pipelines list")
    return run


def _steps(project, run) -> list:
    return sorted(project.store.list_runs(parent=run.uid), key=lambda r: r.iteration or 0)


def print_steps(project, run) -> None:
    """The steps of pipeline run ``run``: state (and the run a cached one reuses) and duration."""
    from shoal.runs import Run

    steps = [Run.from_record(record) for record in _steps(project, run)]
    rows = (
        (
            step.labels.get("shoal.step", step.function),
            step.uid[:12],
            output.state_cell(step.state, step.cached_from),
            output.duration_cell(step.duration),
        )
        for step in steps
    )
    output.print_table(f"steps ({len(steps)})", ("step", "uid", "state", "duration"), rows)


@pipelines_app.command("list")
def pipelines_list(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="At most this many pipeline runs."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pipeline runs, newest first."""
    project = _project()
    found: list = []
    batch = max(limit * 5, 100)
    before = None
    while len(found) < limit:
        page = project.store.list_runs(parent=None, limit=batch, created_before=before)
        found.extend(r for r in page if (r.labels or {}).get(KIND_LABEL) == "pipeline")
        if len(page) < batch:
            break
        before = page[-1].created_at
    from shoal.runs import Run

    runs = [Run.from_record(record) for record in found[:limit]]
    if as_json:
        output.print_json([r.to_dict() for r in runs])
    else:
        output.runs_table(runs)


@pipelines_app.command("graph")
def pipelines_graph(
    uid: str = typer.Argument(..., help="A pipeline run (uid or unique prefix)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Also draw it into this .png or .svg file."),
) -> None:
    """Print the run's graph as Mermaid text (steps coloured by state); --out draws a picture."""
    from shoal.pipelines.graph import draw, graph_of, mermaid

    project = _project()
    run = _pipeline_run(project, uid)
    graph = graph_of(run, {record.uid: record.state for record in _steps(project, run)})
    typer.echo(mermaid(graph), nl=False)
    if out:
        output.note(f"wrote {draw(graph, out)}")


@pipelines_app.command("resume")
def pipelines_resume(
    uid: str = typer.Argument(..., help="A pipeline run to run again (uid or unique prefix)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Default: the backend it ran on."),
) -> None:
    """Run a pipeline run's version again with its parameters: completed steps come back cached,
    the rest (failed, cancelled, left open by a killed driver) run."""
    project = _project()
    run = _pipeline_run(project, uid)
    pipeline = project.functions.get(f"{run.function}@{run.function_hash}")
    again = pipeline.run(run.params, backend=backend or run.backend or None, project=project)
    output.run_summary(again)
    print_steps(project, again)
    if not again.ok:
        raise typer.Exit(1)
