"""The ``shoal`` command line: run functions, inspect versions and runs, create projects.

Errors print as one line on stderr with a non-zero exit (2 for bad input, 1 for failures);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import sys
from typing import Any

import typer

from shoal.errors import ShoalError

from . import output
from .targets import input_paths, load_target, open_project, pairs, stdout_reserved

app = typer.Typer(
    help="shoal: elastic serverless functions on local threads, Dask or Ray, with recorded runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
functions_app = typer.Typer(help="Stored function versions.", no_args_is_help=True)
from .runs import runs_app  # noqa: E402 - list, show, logs, cancel, delete

cluster_app = typer.Typer(help="Workers and scaling events of the execution engines.", no_args_is_help=True)
app.add_typer(functions_app, name="functions")
app.add_typer(runs_app, name="runs")
app.add_typer(cluster_app, name="cluster")
from .k8s import k8s_app  # noqa: E402 - typer only; Kubernetes is imported when a command runs
from .worker import worker_app  # noqa: E402

app.add_typer(k8s_app, name="k8s")
app.add_typer(worker_app, name="worker")
from .secrets import secrets_app  # noqa: E402

app.add_typer(secrets_app, name="secrets")
from .pipelines import pipelines_app  # noqa: E402 - list, graph, resume

app.add_typer(pipelines_app, name="pipelines")
from . import tune as _tune  # noqa: E402 - typer only; Optuna is imported when a command runs

_tune.register(app)
from . import services as _services  # noqa: E402 - typer only; the engines are imported when a command runs

_services.register(app)  # serve, deploy, services list | show | delete

from . import hub as _hub  # noqa: E402 - typer only; shoal.hub is imported when a command runs

_hub.register(app)  # hub list | show | import | publish

_state: dict[str, Any] = {"debug": False, "cwd": None}


def _flags_without_type() -> None:
    """Show flags as flags in ``--help``: typer's rich help prints a value type beside every option,
    ``<bool>`` beside flags that take no value (its plain help leaves it out)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "shoal_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else shown(self, ctx)

    display_type_rich.shoal_flags = True  # type: ignore[attr-defined]  # a marker: patched once
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]  # typer has no hook for it


_flags_without_type()


@app.callback()
def _options(
    project: str | None = typer.Option(
        None,
        "--project",
        "-C",
        envvar="SHOAL_PROJECT_DIR",
        help="Run as if started in this project folder (like git -C): shoal.yaml, files and inputs are found there.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show whole tracebacks, shoal's own frames included."),
) -> None:
    _state["debug"] = output.full_tracebacks = debug
    _state["cwd"] = os.getcwd()  # where the user is, for commands we print (before -C moves us)
    if project:
        _enter(project)


def _enter(folder: str) -> None:
    """Change into the project folder, which must exist: a typo must not create a new project."""
    from shoal.errors import ProjectError

    if not os.path.isdir(folder):
        raise ProjectError(f"project folder {folder} does not exist; create it with: shoal init {folder}")
    os.chdir(folder)


# -- shoal run ----------------------------------------------------------------------------------
@app.command()
def run(
    target: str = typer.Argument(..., help="FILE.py:HANDLER, hub://NAME[:version], or a function NAME[:tag|@hash]."),
    param: list[str] = typer.Option([], "--param", "-p", help="Parameter key=value (repeatable)."),
    input: list[str] = typer.Option([], "--input", "-i", help="Input key=path-or-URL (repeatable)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="local (default), or another backend."),
    as_json: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Stream the handler's output."),
    cache: bool | None = typer.Option(
        None,
        "--cache/--no-cache",
        help="Reuse a completed run with the same cache key instead of running (default: off for a "
        "function, on for a pipeline's steps).",
    ),
    refresh: bool = typer.Option(False, "--refresh", help="Run anyway (implies --cache); the new run is reused next."),
    cache_version: str | None = typer.Option(
        None, "--cache-version", help="Part of the cache key: bump it to invalidate earlier results."
    ),
    cache_expires: float | None = typer.Option(
        None, "--cache-expires", help="Reuse only runs that ended at most this many seconds ago."
    ),
    cache_ignore: list[str] = typer.Option(
        [], "--cache-ignore", help="A parameter (or input) left out of the cache key (repeatable)."
    ),
) -> None:
    """Run a function once and record the run (exit 1 if it fails, 2 for bad input)."""
    from .runs import run_target

    with stdout_reserved(as_json):
        fn = load_target(target)
        project = open_project()
        params = pairs(param, "--param")
        inputs = input_paths(pairs(input, "--input"))
        result = run_target(
            fn,
            params,
            inputs,
            backend=backend,
            project=project,
            watch=watch and not as_json,
            cache=cache,
            refresh=refresh,
            cache_version=cache_version,
            cache_expires=cache_expires,
            cache_ignore=cache_ignore,
        )
    if as_json:
        output.print_json(result.to_dict())
    else:
        output.run_summary(result)
    if not result.ok:  # completed or pruned: a normal end
        raise typer.Exit(1)


# -- shoal init ---------------------------------------------------------------------------------
@app.command()
def init(
    path: str = typer.Argument(".", help="Project folder (created if missing)."),
    name: str | None = typer.Option(None, "--name", help="Project name (default: the folder name)."),
    example: bool = typer.Option(True, "--example/--no-example", help="Add an example train.py."),
) -> None:
    """Create a project: shoal.yaml, the .shoal home with its database, and an example function."""
    from shoal.project import masked
    from shoal.scaffold import create_project

    project, created = create_project(path, name=name, example=example)
    for item in created:
        typer.echo(f"created {item}")
    typer.echo(f"project {project.name}: database {masked(project.database)}, artifacts {project.artifacts_url}")
    if "train" in project.function_specs:
        typer.echo(f"next: {_next_command(project.root)} run train --param lr=0.05")


def _next_command(root: pathlib.Path) -> str:
    """``shoal [-C FOLDER]`` as the user can type it in the folder they are in: the program as they
    invoked it (``.venv/bin/shoal`` when that is not the ``shoal`` on PATH, ``python -m ...``), and
    ``-C`` rather than ``cd`` so that a relative program path still works."""
    here = _state["cwd"] or os.getcwd()
    program = _program()
    folder = os.path.relpath(root, here)
    if folder == ".":
        return program
    if folder.startswith(".."):
        folder = str(root)
    return f"{program} -C {shlex.quote(folder)}"


def _program() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "shoal"
    if os.path.basename(argv0) in ("main.py", "__main__.py") or argv0 in ("-m", "-c"):
        python = os.path.basename(sys.executable)
        on_path = shutil.which(python)
        same = on_path is not None and os.path.realpath(on_path) == os.path.realpath(sys.executable)
        return f"{python if same else shlex.quote(sys.executable)} -m shoal.cli.main"
    name = os.path.basename(argv0)
    on_path = shutil.which(name)
    if on_path is not None and os.path.realpath(on_path) == os.path.realpath(argv0):
        return name
    return shlex.quote(argv0)


# -- shoal functions ------------------------------------------------------------------------------
@functions_app.command("list")
def functions_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """The latest version of every stored function."""
    records = open_project().functions.list()
    if as_json:
        output.print_json([output.function_dict(r) for r in records])
    else:
        output.functions_table(records, title="functions")


@functions_app.command("show")
def functions_show(
    ref: str = typer.Argument(..., help="NAME, NAME:tag or NAME@hash-prefix."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One version's document (spec, metadata, code)."""
    record = open_project().functions.record(ref)
    if as_json:
        output.print_json(output.function_dict(record, full=True))
    else:
        output.function_document(record)


@functions_app.command("history")
def functions_history(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every stored version of a function, newest first."""
    records = open_project().functions.history(name)
    if as_json:
        output.print_json([output.function_dict(r) for r in records])
    else:
        output.functions_table(records, title=f"history of {name}")


@functions_app.command("diff")
def functions_diff(a: str, b: str) -> None:
    """Differences between two versions (spec and code), as a unified diff."""
    text = open_project().functions.diff(a, b)
    typer.echo(text if text else "no differences")


# -- shoal cluster ------------------------------------------------------------------------------
EMBEDDED_NOTE = (
    "embedded clusters live only while a shoal process runs; showing recorded scaling events "
    "(give --backend dask://HOST:8786 to list the workers of a running cluster)"
)


def _live_workers(address: str) -> tuple[list, str]:
    """Connect to a running engine, list its workers, and disconnect (the cluster is not touched).

    Returns the workers and the label under which that engine's scaling events are recorded.
    """
    from shoal import backends
    from shoal.recorder import backend_label

    backend = backends.get(address)  # the scheme names the engine (tcp:// and tls:// are Dask's)
    try:
        return backend.workers(), backend_label(backend)
    finally:
        backend.close()


@cluster_app.command("status")
def cluster_status(
    backend: str | None = typer.Option(
        None,
        "--backend",
        "-b",
        help="A backend name (filters the events) or an engine address (also lists its live workers).",
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="At most this many events (0: all)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"workers": [...], "events": [...]} only.'),
) -> None:
    """Recorded scaling events of the project, and the live workers of an engine given by address."""
    workers = None
    label = backend
    with stdout_reserved(as_json):
        if backend is not None and "://" in backend:
            workers, label = _live_workers(backend)
        events = open_project().store.list_scaling_events(backend=label, limit=limit or None)
    if as_json:
        output.print_json(
            {
                "workers": [output.worker_dict(w) for w in workers or []],
                "events": [output.event_dict(e) for e in events],
            }
        )
        return
    if workers is None:
        output.note(EMBEDDED_NOTE)
    else:
        output.workers_table(workers, title=f"workers of {label}")
    output.events_table(events)


@app.command()
def version() -> None:
    """Print the shoal version."""
    import shoal

    typer.echo(shoal.__version__)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors and meaningful exit codes, tracebacks only with --debug."""
    try:
        app(args=argv)  # typer exits by itself on success, usage errors and typer.Exit
    except ShoalError as exc:
        _fail(exc, str(exc), exc.exit_code)
    except OSError as exc:  # a folder that cannot be created, a file that cannot be read...
        _fail(exc, str(exc), 1)
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback with --debug
        _fail(exc, f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)", 1)


def _fail(exc: BaseException, message: str, code: int) -> None:
    if _state["debug"]:
        raise exc
    output.error(message)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
