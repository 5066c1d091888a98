"""Output of the CLI: rich tables for people, strict JSON for scripts, one-line errors.

Everything that comes from users or their code (results, parameters, error messages, descriptions,
paths) is passed to rich as ``Text``, never as a markup string: a value such as ``[/x]`` or
``:smile:`` must print literally, not raise ``MarkupError`` or turn into an emoji.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

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


def _finite(value: Any) -> Any:
    """Non-finite floats as the strings the store uses ("NaN", "Infinity"), so output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def note(message: str) -> None:
    """A one-line remark for people (never on the JSON path)."""
    console.print(_text(one_line(message), "dim"), soft_wrap=True)


def json_text(data: Any) -> str:
    """Strict JSON (no NaN tokens, which jq and JavaScript reject); unknown objects as strings."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


# -- cells ------------------------------------------------------------------------------------------
def _text(value: Any, style: str = "") -> Text:
    """A literal table cell."""
    return Text(value if isinstance(value, str) else str(value), style=style)


def _short(value: Any, width: int = 60) -> Text:
    """A value for a table cell; shortened to ``width`` on a terminal only (elsewhere printed whole)."""
    text = value if isinstance(value, str) else json.dumps(_finite(value), default=str)
    cut = console.is_terminal and len(text) > width
    return _text(text[: width - 1] + "…" if cut else text)


def traceback_text(error: dict | None) -> str:
    """A recorded error's traceback as users see it: from their code on, or whole with ``--debug``."""
    if not error:
        return ""
    return (full_tracebacks and error.get("traceback_full")) or error.get("traceback") or ""


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _state(state: str) -> Text:
    return _text(state, STATE_STYLE.get(state, ""))


def _metric(series: list) -> str:
    step, value = series[-1][0], series[-1][1]
    shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return f"{shown} (step {step}, {len(series)} points)"


# -- runs -------------------------------------------------------------------------------------------
def run_summary(run, detail: bool = False) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", run.uid)
    table.add_row("function", _text(f"{run.function}@{run.function_hash[:12]}"))
    table.add_row("state", _state(run.state))
    table.add_row("duration", _duration(run.duration))
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
    for key, value in run.results.items():
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
    table = Table(title=f"runs ({len(runs)})")
    for column in ("uid", "function", "state", "started", "duration", "results"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.uid[:12],
            _text(run.function + (f" #{run.iteration}" if run.iteration is not None else "")),
            _state(run.state),
            _when(run.started_at),
            _duration(run.duration),
            _short(run.results, 50) if run.results else "",
        )
    console.print(table)


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
    table = Table(title=_text(title))
    for column in ("name", "hash", "tags", "created", "description"):
        table.add_column(column)
    for record in records:
        table.add_row(
            _text(record.name),
            record.hash[:12],
            _text(", ".join(record.tags)),
            _when(record.created_at),
            _text(record.description or ""),
        )
    console.print(table)


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
    return {
        "name": worker.name,
        "address": worker.address,
        "state": worker.state,
        "slots": worker.slots,
        "running": list(worker.running),
        "resources": dict(worker.resources),
    }


def events_table(records) -> None:
    if not records:
        note("no scaling events recorded")
        return
    table = Table(title=f"scaling events ({len(records)})")
    for column in ("time (UTC)", "backend", "direction", "before -> after", "reason"):
        table.add_column(column)
    for record in records:
        table.add_row(
            _when(record.time),
            _text(record.backend),
            _text(record.direction, "green" if record.direction == "up" else "yellow"),
            f"{_count(record.workers_before)} -> {_count(record.workers_after)}",
            _text(record.reason),
        )
    console.print(table)


def workers_table(workers, title: str) -> None:
    table = Table(title=_text(f"{title} ({len(workers)})"))
    for column in ("name", "address", "state", "slots", "running"):
        table.add_column(column)
    for worker in workers:
        table.add_row(
            _text(worker.name),
            _text(worker.address),
            _text(worker.state),
            str(worker.slots),
            _text(", ".join(uid[:12] for uid in worker.running) or "-"),
        )
    console.print(table)
