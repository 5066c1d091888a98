"""``shoal runs list | show | logs | cancel | delete``: recorded runs from the command line.

Listing (and opening the project) ends the runs of drivers that died as failed (``DriverLost``).
Bad input (an unknown uid, state or date) exits 2 with a message naming the argument or flag.
"""

from __future__ import annotations

import typer

from shoal.errors import AmbiguousError, NotFoundError, ParamError

from . import output

runs_app = typer.Typer(help="Recorded runs: list, show, logs, cancel, delete.", no_args_is_help=True)
STATE_HELP = "pending, running, completed, pruned, failed or cancelled"


def _project():
    from .targets import open_project as opened

    return opened()


def _states(values: list[str]) -> list[str]:
    from shoal.runs import STATES

    for value in values:
        if value not in STATES:
            raise ParamError(f"--state: unknown run state {value!r}; use one of {', '.join(STATES)}")
    return values


def cache_options(
    is_pipeline: bool,
    cache: bool | None,
    refresh: bool,
    cache_version: str | None,
    cache_expires: float | None,
    cache_ignore: list[str],
):
    """``shoal run``'s ``--cache/--no-cache``, ``--refresh``, ``--cache-version``, ``--cache-expires``
    and ``--cache-ignore`` as the ``CacheOptions`` of ``fn.run(cache=...)`` / ``pipeline.run(cache=...)``.

    Caching is off by default for a function and on for a pipeline's steps, as in Python; the other
    flags turn it on for a function (``--refresh`` alone: run anyway, and be the run reused next).
    Any of them with ``--no-cache`` is bad input, named by its flag."""
    from shoal.step_cache import CacheOptions

    given = [
        flag
        for flag, value in (
            ("--refresh", refresh),
            ("--cache-version", cache_version is not None),
            ("--cache-expires", cache_expires is not None),
            ("--cache-ignore", bool(cache_ignore)),
        )
        if value
    ]
    if cache is False and given:
        raise ParamError(f"{', '.join(given)} has no effect with --no-cache; drop one of them")
    enabled = cache if cache is not None else (is_pipeline or bool(given))
    if is_pipeline and cache_ignore:
        raise ParamError("--cache-ignore names parameters of one function; give cache_ignore= to the step in Python")
    try:
        return CacheOptions.from_call(
            enabled, refresh, cache_ignore or None, cache_expires, cache_version, default=is_pipeline
        )
    except ParamError as exc:  # worded for Python (cache_expires=...): name the flag instead
        raise ParamError(str(exc).replace("cache_", "--cache-").replace("refresh", "--refresh")) from None


def run_target(
    fn,
    params: dict,
    inputs: dict,
    *,
    backend: str | None,
    project,
    watch: bool,
    cache: bool | None = None,
    refresh: bool = False,
    cache_version: str | None = None,
    cache_expires: float | None = None,
    cache_ignore: list[str] | None = None,
):
    """What ``shoal run`` runs: a pipeline (its body here, its steps on the backend) or one run of a
    function, with the cache flags applied; returns the recorded Run."""
    from shoal.runner import run_function

    is_pipeline = getattr(fn, "document_kind", "function") == "pipeline"
    options = cache_options(is_pipeline, cache, refresh, cache_version, cache_expires, list(cache_ignore or []))
    if is_pipeline:
        return fn.run(
            params,
            inputs,
            backend=backend,
            project=project,
            from_text=True,
            cache=options.enabled,
            refresh=options.refresh,
            cache_expires=options.expires,
            cache_version=options.version,
        )
    return run_function(
        fn, params, inputs, backend=backend, project=project, watch=watch, from_text=True, cache=options
    )


def _uid_error(exc: Exception) -> ParamError:
    """An unknown or ambiguous UID argument is bad input (exit 2), named as such."""
    return ParamError(f"UID: {exc}")


@runs_app.command("list")
def runs_list(
    function: str | None = typer.Option(None, "--function", "-f"),
    state: str | None = typer.Option(None, "--state", "-s", help=STATE_HELP),
    parent: str | None = typer.Option(None, "--parent"),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="At most this many runs (0: all)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recorded runs, newest first."""
    if state is not None:
        _states([state])
    runs = _project().runs.list(function=function, state=state, parent=parent, limit=limit or None)
    if as_json:
        output.print_json([r.to_dict() for r in runs])
    else:
        output.runs_table(runs)


@runs_app.command("show")
def runs_show(uid: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One run: parameters, results, artifacts, error."""
    found = _project().runs.get(uid)
    if as_json:
        output.print_json(found.to_dict())
    else:
        output.run_summary(found, detail=True)
        if found.labels.get("shoal.kind") == "pipeline":
            from .pipelines import print_steps

            print_steps(_project(), found)


@runs_app.command("logs")
def runs_logs(uid: str) -> None:
    """The captured stdout/stderr of a run, then its error and traceback if it has one."""
    run = _project().runs.get(uid)
    if run.logs:
        typer.echo(run.logs, nl=not run.logs.endswith("\n"))
    else:
        typer.echo(f"run {run.uid} ({run.state}) has no log lines", err=True)
    if run.error:
        typer.echo(f"error: {run.error.get('type')}: {run.error.get('message')}")
        trace = output.traceback_text(run.error).rstrip("\n")
        if trace:
            typer.echo(trace)


@runs_app.command("cancel")
def runs_cancel(
    uids: list[str] = typer.Argument(..., metavar="UID", help="Runs to cancel (uids or unique prefixes)."),
    as_json: bool = typer.Option(False, "--json", help="Print what happened to each run as JSON."),
) -> None:
    """Cancel pending or running runs and their open children.

    Each run is recorded cancelled at once; its driver, if alive, stops it within about 10 s.
    """
    try:
        outcomes = _project().runs.cancel(*uids)
    except (NotFoundError, AmbiguousError) as exc:
        raise _uid_error(exc) from None
    if as_json:
        output.print_json([vars(outcome) for outcome in outcomes])
        return
    for outcome in outcomes:
        detail = f" ({outcome.detail})" if outcome.detail else ""
        verb = {"cancelled": "cancelled", "stopping": "stopping", "ended": "not cancelled"}[outcome.outcome]
        typer.echo(f"{outcome.uid}  {outcome.state} -> {verb}{detail}")


@runs_app.command("delete")
def runs_delete(
    uids: list[str] | None = typer.Argument(None, metavar="UID", help="Runs to delete (uids or unique prefixes)."),
    state: list[str] = typer.Option([], "--state", "-s", help=f"Delete runs in this state ({STATE_HELP}); repeatable."),
    before: str | None = typer.Option(
        None,
        "--before",
        help="Delete runs created before this date: YYYY-MM-DD[THH:MM[:SS]][+HH:MM], local time by default.",
    ),
    function: str | None = typer.Option(
        None, "--function", "-f", help="Only runs of this function (with --state/--before)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete runs (with their child runs) and their artifacts' files from the artifact store.

    Give UIDs, or --state and/or --before. Runs still open under a live driver are skipped: cancel them first.
    """
    from shoal.lifecycle import parse_before

    uids = uids or []
    _states(state)
    if uids and (state or before or function):
        raise ParamError("give UIDs or --state/--before/--function, not both")
    if not uids and not state and before is None:
        raise ParamError("name the runs to delete: UID..., or --state STATE and/or --before DATE")
    if before is not None:
        try:
            moment = parse_before(before)
        except ParamError:
            raise ParamError(
                f"--before {before!r} is not a date; write e.g. --before 2026-12-01 or --before 2026-12-01T08:30"
            ) from None
    else:
        moment = None
    try:
        plan = _project().runs.plan_delete(uids or None, state=state or None, before=moment, function=function)
    except (NotFoundError, AmbiguousError) as exc:
        raise _uid_error(exc) from None
    for record, why in plan.skipped:
        typer.echo(f"skipping {record.uid}: {why}", err=True)
    if not plan.runs:
        typer.echo("no runs to delete")
        return
    states = ", ".join(f"{count} {name}" for name, count in sorted(plan.states().items()))
    children = f", {plan.children} of them child runs" if plan.children else ""
    question = f"delete {len(plan.runs)} run(s) ({states}{children}) and {plan.artifact_count} artifact(s)?"
    if not yes and not _confirmed(question):
        typer.echo("nothing deleted (pass --yes to delete without asking)", err=True)
        raise typer.Exit(1)
    result = plan.execute()
    typer.echo(f"deleted {len(result.deleted)} run(s) and {result.artifacts_removed} artifact file(s)")
    if result.left_in_place:
        typer.echo(f"left {len(result.left_in_place)} artifact(s) stored outside the artifact store in place", err=True)
    for problem in result.problems:
        output.error(problem)
    if result.problems:
        raise typer.Exit(1)


def _confirmed(question: str) -> bool:
    """Ask on the terminal; no answer (end of input) is a no."""
    import click

    try:
        return typer.confirm(question, default=False)
    except click.exceptions.Abort:
        return False
