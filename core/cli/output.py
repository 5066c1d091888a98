"""Output of the CLI: rich tables for people, strict JSON for scripts, one-line errors.

Everything that comes from users or their code (results, parameters, error messages, descriptions,
paths) is passed to rich as ``Text``, never as a markup string: a value such as ``[/x]`` or
``:smile:`` must print literally, not raise ``MarkupError`` or turn into an emoji.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from shoal.json_values import finite_floats

#: Width without a terminal: rich would cut everything to 80 columns (values ending in "…") when
#: output goes to a pipe, a file or CI logs; there, tables and lines print whole instead.
UNBOUNDED = 100_000


def _console(stderr: bool = False) -> Console:
    """A console as wide as the terminal, or unbounded without one (``COLUMNS`` still decides when set)."""
    made = Console(stderr=stderr, highlight=False)
    if not made.is_terminal and not os.environ.get("COLUMNS"):
        made.width = UNBOUNDED
    return made


console = _console()
errors = _console(stderr=True)
#: ``shoal --debug``: show recorded tracebacks whole, shoal's own frames included.
full_tracebacks = False

STATE_STYLE = {
    "completed": "green",
    "pruned": "blue",
    "failed": "red",
    "cancelled": "yellow",
    "cached": "green",
    "upstream_failed": "red",
    "running": "cyan",
    "pending": "dim",
}


# -- errors and JSON --------------------------------------------------------------------------------
def one_line(message: str) -> str:
    """Join a multi-line message into one line (errors are one line; tracebacks need --debug)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def error(message: str) -> None:
    """``error: <message>`` on stderr, on one line, printed literally."""
    errors.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)


def note(message: str) -> None:
    """A one-line remark for people (never on the JSON path)."""
    console.print(_text(one_line(message), "dim"), soft_wrap=True)


def json_text(data: Any) -> str:
    """Strict JSON (no NaN tokens, which jq and JavaScript reject); unknown objects as strings."""
    return json.dumps(finite_floats(data), indent=2, default=str, allow_nan=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


# -- cells ------------------------------------------------------------------------------------------
def _text(value: Any, style: str = "") -> Text:
    """A literal table cell."""
    return Text(value if isinstance(value, str) else str(value), style=style)


def _short(value: Any, width: int = 60) -> Text:
    """A value for a table cell; shortened to ``width`` on a terminal only (elsewhere printed whole)."""
    text = value if isinstance(value, str) else json.dumps(finite_floats(value), default=str)
    cut = console.is_terminal and len(text) > width
    return _text(text[: width - 1] + "…" if cut else text)


def traceback_text(error: dict | None) -> str:
    """A recorded error's traceback as users see it: from their code on, or whole with ``--debug``."""
    if not error:
        return ""
    return (full_tracebacks and error.get("traceback_full")) or error.get("traceback") or ""


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def duration_cell(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def state_cell(state: str, cached_from: str | None = None) -> Text:
    shown = f"{state} from {cached_from[:12]}" if cached_from else state
    return _text(shown, STATE_STYLE.get(state, ""))


def _metric(series: list) -> str:
    step, value = series[-1][0], series[-1][1]
    shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return f"{shown} (step {step}, {len(series)} points)"


def print_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str | Text]]) -> None:
    """A titled table on stdout; the title and plain-string cells print literally (they hold
    names and values from users), ``Text`` cells keep their style."""
    table = Table(title=_text(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else _text(cell) for cell in row))
    console.print(table)


# -- runs -------------------------------------------------------------------------------------------
def _listed_results(run) -> dict:
    """A run's results as tables show them: a pipeline run's graph is left to its steps table and
    ``shoal pipelines graph`` (it lists every step and reference, too long for a cell)."""
    if (run.labels or {}).get("shoal.kind") == "pipeline":
        return {key: value for key, value in run.results.items() if key != "graph"}
    return run.results


def run_summary(run, detail: bool = False) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", run.uid)
    table.add_row("function", _text(f"{run.function}@{run.function_hash[:12]}"))
    table.add_row("state", state_cell(run.state))
    if run.cached_from:
        table.add_row("cached from", run.cached_from)
    table.add_row("duration", duration_cell(run.duration))
    if run.attempts > 1:
        table.add_row("attempts", str(run.attempts))
    if detail:
        table.add_row("backend", _text(run.backend or "-"))
        table.add_row("started", _when(run.started_at))
        if run.parent:
            table.add_row("parent", f"{run.parent} (iteration {run.iteration})")
        for key, value in run.params.items():
            table.add_row(_text(f"param {key}"), _short(value))
        for key, value in run.inputs.items():
            table.add_row(_text(f"input {key}"), _short(value))
    for key, value in _listed_results(run).items():
        table.add_row(_text(f"result {key}"), _short(value))
    for key, series in (run.metrics or {}).items():
        if series:
            table.add_row(_text(f"metric {key}"), _text(_metric(series)))
    for key, artifact in run.artifacts.items():
        table.add_row(_text(f"artifact {key}"), _text(f"{artifact.kind}, {artifact.size} B, {artifact.url}"))
    if run.error:
        message = f"{run.error.get('type')}: {run.error.get('message')}"
        table.add_row("error", _text(message, "red"))
    console.print(table)
    if detail and traceback_text(run.error):
        console.print(_text(traceback_text(run.error).rstrip()))


def runs_table(runs) -> None:
    rows = (
        (
            run.uid[:12],
            _text(run.function + (f" #{run.iteration}" if run.iteration is not None else "")),
            state_cell(run.state, run.cached_from),
            _when(run.started_at),
            duration_cell(run.duration),
            _short(_listed_results(run), 50) if run.results else "",
        )
        for run in runs
    )
    print_table(f"runs ({len(runs)})", ("uid", "function", "state", "started", "duration", "results"), rows)


# -- functions --------------------------------------------------------------------------------------
def function_dict(record, full: bool = False) -> dict[str, Any]:
    data = {
        "name": record.name,
        "hash": record.hash,
        "tags": list(record.tags),
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "description": record.description,
        "labels": record.labels,
    }
    if full:
        data["document"] = record.spec
    return data


def functions_table(records, title: str) -> None:
    rows = (
        (
            _text(record.name),
            record.hash[:12],
            _text(", ".join(record.tags)),
            _when(record.created_at),
            _text(record.description or ""),
        )
        for record in records
    )
    print_table(title, ("name", "hash", "tags", "created", "description"), rows)


def function_document(record) -> None:
    import yaml

    doc = dict(record.spec)
    code = doc.pop("code", {})
    header = Text.assemble((record.name, "bold"), f"@{record.hash}  tags: {', '.join(record.tags) or '-'}")
    console.print(header, soft_wrap=True)
    console.print(Syntax(yaml.safe_dump(doc, sort_keys=False), "yaml", background_color="default"))
    if code.get("kind") == "source":
        console.print(Text.assemble(("code", "bold"), f" ({code.get('origin', '')})"))
        console.print(Syntax(code.get("text", ""), "python", background_color="default", line_numbers=True))
    else:
        console.print(Text.assemble(("code", "bold"), f": {code.get('kind')} ({len(code.get('text', ''))} bytes)"))
    sys.stdout.flush()


# -- clusters ---------------------------------------------------------------------------------------
def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def event_dict(record) -> dict[str, Any]:
    return {
        "time": record.time.isoformat(),
        "backend": record.backend,
        "direction": record.direction,
        "workers_before": record.workers_before,
        "workers_after": record.workers_after,
        "reason": record.reason,
    }


def worker_dict(worker) -> dict[str, Any]:
    """A ``WorkerInfo`` as JSON data."""
    return dataclasses.asdict(worker)


def events_table(records) -> None:
    if not records:
        note("no scaling events recorded")
        return
    rows = (
        (
            _when(record.time),
            _text(record.backend),
            _text(record.direction, "green" if record.direction == "up" else "yellow"),
            f"{_count(record.workers_before)} -> {_count(record.workers_after)}",
            _text(record.reason),
        )
        for record in records
    )
    columns = ("time (UTC)", "backend", "direction", "before -> after", "reason")
    print_table(f"scaling events ({len(records)})", columns, rows)


def workers_table(workers, title: str) -> None:
    rows = (
        (
            _text(worker.name),
            _text(worker.address),
            _text(worker.state),
            str(worker.slots),
            _text(", ".join(uid[:12] for uid in worker.running) or "-"),
        )
        for worker in workers
    )
    print_table(f"{title} ({len(workers)})", ("name", "address", "state", "slots", "running"), rows)
