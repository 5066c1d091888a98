"""Human-readable output of the CLI (rich tables); JSON output is built in main."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


STATE_STYLE = {"completed": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "pending": "dim"}


def run_summary(run, detail: bool = False) -> None:
    style = STATE_STYLE.get(run.state, "")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", run.uid)
    table.add_row("function", f"{run.function}@{run.function_hash[:12]}")
    table.add_row("state", f"[{style}]{run.state}[/]")
    table.add_row("duration", _duration(run.duration))
    if run.attempts > 1:
        table.add_row("attempts", str(run.attempts))
    if detail:
        table.add_row("backend", run.backend or "-")
        table.add_row("started", _when(run.started_at))
        if run.parent:
            table.add_row("parent", f"{run.parent} (iteration {run.iteration})")
        for key, value in run.params.items():
            table.add_row(f"param {key}", _short(value))
        for key, value in run.inputs.items():
            table.add_row(f"input {key}", _short(value))
    for key, value in run.results.items():
        table.add_row(f"result {key}", _short(value))
    for key, series in (run.metrics or {}).items():
        if series:
            table.add_row(f"metric {key}", f"{series[-1][1]:g} (step {series[-1][0]}, {len(series)} points)")
    for key, artifact in run.artifacts.items():
        table.add_row(f"artifact {key}", f"{artifact.kind}, {artifact.size} B, {artifact.url}")
    if run.error:
        table.add_row("error", f"[red]{run.error.get('type')}: {run.error.get('message')}[/]")
    console.print(table)
    if detail and run.error and run.error.get("traceback"):
        console.print(run.error["traceback"].rstrip(), markup=False)


def runs_table(runs) -> None:
    table = Table(title=f"runs ({len(runs)})")
    for column in ("uid", "function", "state", "started", "duration", "results"):
        table.add_column(column)
    for run in runs:
        style = STATE_STYLE.get(run.state, "")
        table.add_row(
            run.uid[:12],
            run.function + (f" #{run.iteration}" if run.iteration is not None else ""),
            f"[{style}]{run.state}[/]",
            _when(run.started_at),
            _duration(run.duration),
            _short(run.results, 50) if run.results else "",
        )
    console.print(table)


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
    table = Table(title=title)
    for column in ("name", "hash", "tags", "created", "description"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record.name, record.hash[:12], ", ".join(record.tags), _when(record.created_at), record.description or ""
        )
    console.print(table)


def function_document(record) -> None:
    import yaml

    doc = dict(record.spec)
    code = doc.pop("code", {})
    console.print(f"[bold]{record.name}[/]@{record.hash}  tags: {', '.join(record.tags) or '-'}")
    console.print(Syntax(yaml.safe_dump(doc, sort_keys=False), "yaml", background_color="default"))
    if code.get("kind") == "source":
        console.print(f"[bold]code[/] ({code.get('origin', '')})")
        console.print(Syntax(code.get("text", ""), "python", background_color="default", line_numbers=True))
    else:
        console.print(f"[bold]code[/]: {code.get('kind')} ({len(code.get('text', ''))} bytes)")
    sys.stdout.flush()
