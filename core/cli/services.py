"""``shoal serve``, ``shoal deploy`` and ``shoal services list | show | delete``: functions served
over HTTP (real-time functions).

``serve`` keeps the service in the foreground (Ctrl-C or SIGTERM stops it and deletes it);
``deploy`` puts it on a running Ray cluster and returns. What the services recorded (state,
replica bounds, request metrics per interval, recent failed requests, scaling events) is read from
the project's database, so ``services show`` works from any machine that can open it.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import typer
from rich.text import Text

from shoal.errors import ParamError

from . import output, targets

services_app = typer.Typer(help="Deployed services: list, show, delete.", no_args_is_help=True)
SERVE_BACKENDS = ("local", "ray")
STATE_STYLE = {"running": "green", "deploying": "cyan", "failed": "red", "deleted": "dim"}
SHOWN_METRICS = 10  # intervals shown by `services show` (newest first)
SHOWN_ERRORS = 5
EVENTS_PREFIX = "service:"  # a Ray service's scaling events are recorded under backend "service:<name>"


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``deploy`` and ``services`` to the main command line."""
    app.command("serve")(serve)
    app.command("deploy")(deploy)
    app.add_typer(services_app, name="services")


def _scaling(values: list[str]) -> dict[str, Any]:
    """``--scaling knob=value`` pairs, numbers as numbers (deploy checks the knobs and their values)."""
    return {key: _number(text) for key, text in targets.pairs(values, "--scaling").items()}


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _announce(service, fn, backend: str) -> None:
    typer.echo(f"service {service.name} ({fn.name}@{fn.hash[:12]}) on {backend}: {service.url}", err=False)
    sys.stdout.flush()


# -- shoal serve ----------------------------------------------------------------------------------
def serve(
    target: str = typer.Argument(..., help="FILE.py:HANDLER, or a function NAME[:tag|@hash]."),
    backend: str = typer.Option(
        "local", "--backend", "-b", help="local (one process, starlette + uvicorn) or ray (Ray Serve, autoscaling)."
    ),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it on every interface)."),
    name: str | None = typer.Option(None, "--name", help="Service name and URL path (default: the function's)."),
    scaling: list[str] = typer.Option(
        [], "--scaling", help="ray: an autoscaling knob=number (repeatable), e.g. downscale_delay_s=30."
    ),
    max_ongoing: int | None = typer.Option(
        None, "--max-ongoing-requests", help="Requests a replica runs at once (Ray Serve's default: 5)."
    ),
    max_queued: int | None = typer.Option(
        None, "--max-queued-requests", help="Requests waiting beyond those (-1: no limit); past both: HTTP 503."
    ),
) -> None:
    """Serve a function over HTTP in the foreground; Ctrl-C stops the service and deletes it."""
    if backend not in SERVE_BACKENDS:
        hint = f"shoal deploy {target} --backend {backend}" if backend.startswith("ray://") else "--backend local"
        raise ParamError(
            f"--backend {backend!r}: shoal serve runs local or ray (a Ray instance of its own); "
            f"for a running Ray cluster use: {hint}"
        )
    if scaling and backend == "local":
        raise ParamError("--scaling: the local backend has one replica and no autoscaling; use --backend ray")
    fn = targets.load_target(target)
    project = targets.open_project()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        service = _deploy(fn, backend, name, host, port, project, scaling, max_ongoing, max_queued)
    except BaseException:
        signal.signal(signal.SIGTERM, previous)
        raise
    try:
        _announce(service, fn, backend)
        typer.echo("press Ctrl-C to stop", err=True)
        service.wait()
    except KeyboardInterrupt:
        typer.echo(f"stopping {service.name}", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        service.delete()


def _deploy(fn, backend, name, host, port, project, scaling, max_ongoing, max_queued) -> Any:
    """``shoal.services.deploy`` with the CLI's options (the overload knobs are checked there)."""
    from shoal.services import deploy

    return deploy(
        fn,
        backend,
        name=name,
        host=host,
        port=port,
        project=project,
        scaling=_scaling(scaling) or None,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- shoal deploy ---------------------------------------------------------------------------------
def deploy(
    target: str = typer.Argument(..., help="A function NAME[:tag|@hash], or FILE.py:HANDLER."),
    backend: str = typer.Option(..., "--backend", "-b", help="The Ray cluster's address: ray://HOST:10001."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="HTTP port of the cluster's Serve proxy."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address Serve binds on the head (0.0.0.0 exposes it)."),
    name: str | None = typer.Option(None, "--name", help="Service name and URL path (default: the function's)."),
    scaling: list[str] = typer.Option([], "--scaling", help="An autoscaling knob=number (repeatable)."),
    max_ongoing: int | None = typer.Option(
        None, "--max-ongoing-requests", help="Requests a replica runs at once (Ray Serve's default: 5)."
    ),
    max_queued: int | None = typer.Option(
        None, "--max-queued-requests", help="Requests waiting beyond those (-1: no limit); past both: HTTP 503."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the service's status as JSON."),
) -> None:
    """Deploy a function onto a running Ray cluster as a Ray Serve application, and return.

    Deploying a new version of the function rolls the service in place; the same version again
    changes nothing.
    """
    if not backend.startswith("ray://"):
        raise ParamError(
            f"--backend {backend!r}: shoal deploy needs a running Ray cluster, e.g. --backend ray://head:10001 "
            f"(to serve from this terminal: shoal serve {target} --backend {backend if backend in SERVE_BACKENDS else 'local'})"
        )
    with targets.stdout_reserved(as_json):
        fn = targets.load_target(target)
        project = targets.open_project()
        service = _deploy(fn, backend, name, host, port, project, scaling, max_ongoing, max_queued)
        status = service.status()
    if as_json:
        output.print_json(_status_dict(status))
    else:
        _announce(service, fn, backend)
        _status_table(status)


# -- shoal services -------------------------------------------------------------------------------
@services_app.command("list")
def services_list(
    all_: bool = typer.Option(False, "--all", "-a", help="Include deleted services."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The project's services: state, backend, replica bounds, version, URL."""
    from shoal.services import list_services

    records = list_services(targets.open_project(), include_deleted=all_)
    if as_json:
        output.print_json([record_dict(r) for r in records])
        return
    rows = (
        (
            r.name,
            _state(r.state),
            r.backend,
            f"{r.min_replicas}..{r.max_replicas}",
            f"{r.function}@{r.function_hash[:12]}",
            r.url,
            _when(r.updated_at),
        )
        for r in records
    )
    columns = ("name", "state", "backend", "replicas", "version", "url", "updated (UTC)")
    output.print_table(f"services ({len(records)})", columns, rows)


@services_app.command("show")
def services_show(
    name: str = typer.Argument(..., help="The service's name."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One service: state, replicas, URL, version, request metrics, recent errors, scaling events."""
    from shoal.services import get_service, service_errors, service_metrics

    project = targets.open_project()
    with targets.stdout_reserved(as_json):
        record = get_service(name, project)
        status, unreachable = _live_status(record, project)
        metrics = service_metrics(name, project, limit=SHOWN_METRICS)
        errors = service_errors(name, project, limit=SHOWN_ERRORS)
        events = _scaling_events(record, project)
    if as_json:
        output.print_json(
            {
                **record_dict(record),
                "status": _plain(status) if status is not None else None,
                "status_error": unreachable,
                "metrics": [_plain(m) for m in metrics],
                "errors": [_plain(e) for e in errors],
                "scaling_events": [output.event_dict(e) for e in events],
            }
        )
        return
    _record_table(record, status, unreachable)
    _metrics_table(metrics)
    _errors_list(errors)
    output.events_table(events)


@services_app.command("delete")
def services_delete(name: str = typer.Argument(..., help="The service's name.")) -> None:
    """Stop a service where it runs (its Ray cluster, or the local server's process) and record it deleted."""
    from shoal.services import delete_service

    delete_service(name, targets.open_project())
    typer.echo(f"deleted service {name}")


# -- presentation ---------------------------------------------------------------------------------
def _scaling_events(record, project) -> list:
    """The scaling events recorded for the service (a local service has one replica: none)."""
    if record.backend == "local":
        return []
    return project.store.list_scaling_events(backend=f"{EVENTS_PREFIX}{record.name}", limit=SHOWN_METRICS)


def _plain(item: Any) -> dict[str, Any]:
    import dataclasses

    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dataclasses.asdict(item).items()}


def record_dict(record) -> dict[str, Any]:
    """A ``ServiceRecord`` as JSON data (its spec document left out: ``shoal functions show`` has it)."""
    data = _plain(record)
    data.pop("spec", None)
    return data


def _status_dict(status) -> dict[str, Any]:
    return _plain(status)


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pairs_table(rows: list[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    output.console.print(table)


def _status_table(status) -> None:
    _pairs_table(
        [
            ("state", _state(status.state)),
            (
                "replicas",
                f"{status.replicas} (target {status.target}, bounds {status.min_replicas}..{status.max_replicas})",
            ),
            ("version", status.version),
            ("url", status.url),
        ]
    )


def _live_status(record, project) -> tuple[Any, str | None]:
    """The service's status asked of what serves it, or None and why it could not be asked."""
    from shoal.errors import ShoalError
    from shoal.services import service_status

    if record.state == "deleted":
        return None, None
    if record.backend == "ray":  # a Ray instance of its own: only the process serving it can reach it
        return None, "live status only in the process that serves it: its Ray instance is its own"
    try:
        return service_status(record.name, project), None
    except ShoalError as exc:
        return None, f"live status unavailable: {output.one_line(str(exc))}"


def _record_table(record, status=None, unreachable: str | None = None) -> None:
    if status is not None:
        state = Text.assemble(
            _state(record.state), f" (now {status.state}{': ' + status.message if status.message else ''})"
        )
        target = "" if status.target is None else f", target {status.target}"
        replicas = f"{status.replicas} now{target}, bounds {record.min_replicas}..{record.max_replicas}"
    else:
        state = Text.assemble(_state(record.state), f" ({unreachable})" if unreachable else "")
        replicas = f"bounds {record.min_replicas}..{record.max_replicas}"
    _pairs_table(
        [
            ("service", record.name),
            ("state", state),
            (
                "backend",
                record.backend + (f" ({record.address})" if record.address not in (None, record.backend) else ""),
            ),
            ("replicas", replicas),
            ("version", f"{record.function}@{record.function_hash}"),
            ("url", record.url),
            ("created", _when(record.created_at)),
            ("updated", _when(record.updated_at)),
        ]
    )


def _metrics_table(metrics) -> None:
    if not metrics:
        output.note("no requests recorded")
        return
    total, failed = sum(m.requests for m in metrics), sum(m.errors for m in metrics)
    rows = (
        (
            _when(m.started_at),
            m.replica,
            str(m.requests),
            Text(str(m.errors), style="red" if m.errors else ""),
            _ms(m.p50_ms),
            _ms(m.p95_ms),
            _ms(m.p99_ms),
            _ms(m.max_ms),
        )
        for m in metrics
    )
    columns = ("interval from (UTC)", "replica", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms")
    output.print_table(f"requests: {total}, errors: {failed} (last {len(metrics)} intervals)", columns, rows)


def _errors_list(errors) -> None:
    if not errors:
        output.note("no failed requests recorded")
        return
    output.console.print(Text(f"recent errors ({len(errors)})", style="bold"))
    for error in errors:
        head = f"{_when(error.time)} HTTP {error.status} {error.type}: {error.message} (request {error.request_id})"
        output.console.print(Text(output.one_line(head), style="red"), soft_wrap=True)
        if error.traceback:
            output.console.print(Text(error.traceback.rstrip()), soft_wrap=True)
