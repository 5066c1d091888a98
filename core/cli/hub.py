"""``shoal hub list | show | import | publish``: functions from hubs, verified before anything runs.

Typer only at import time; the hub machinery (``shoal.hub``) is imported when a command runs.
"""

from __future__ import annotations

import os

import typer

from . import output

hub_app = typer.Typer(
    help="Functions from hubs (hub://[source/]name[:version][@hash]): list, show, import, publish.",
    no_args_is_help=True,
)


def _project():
    import shoal

    return shoal.project(".")


def target_function(target: str, project):
    """``FILE.py:HANDLER`` from a file, a ``hub://`` reference, else a name/tag/hash of the project."""
    from shoal import Function
    from shoal.errors import ParamError

    if target.startswith("hub://"):
        return Function.from_hub(target, project=project)
    path, sep, handler = target.rpartition(":")
    if sep and (path.endswith(".py") or os.path.isfile(path)):
        return Function.from_file(path, handler)
    if target.endswith(".py"):
        raise ParamError(f"name the handler too: {target}:<function name>")
    return project.get_function(target)


@hub_app.command("list")
def hub_list(
    source: str | None = typer.Option(None, "--source", "-s", help="Only this source (a name from hubs:)."),
    as_json: bool = typer.Option(False, "--json", help="Print the listing as JSON."),
) -> None:
    """Every function of the hubs (read from their indexes; nothing is fetched)."""
    from shoal.hub import list_functions

    rows = list_functions(_project(), source)
    if as_json:
        output.print_json([row.to_dict() for row in rows])
        return
    output.print_table(
        "hub functions",
        ["source", "name", "latest", "versions", "hash", "description"],
        [[r.source, r.name, r.latest, ", ".join(r.versions), r.hash[:12], r.description or ""] for r in rows],
    )


@hub_app.command("show")
def hub_show(
    ref: str = typer.Argument(..., help="[hub://][SOURCE/]NAME[:VERSION][@HASH]"),
    as_json: bool = typer.Option(False, "--json", help="Print the verified function document as JSON."),
) -> None:
    """Fetch and verify one function, then print where it comes from, its hash and its source code."""
    from shoal import Function

    fn = Function.from_hub(ref, project=_project())
    if as_json:
        output.print_json({"ref": fn.labels.get("hub"), **fn.to_dict()})
        return
    typer.echo(f"hub reference  {fn.labels.get('hub')}")
    typer.echo(f"hash           {fn.hash}")
    typer.echo(f"handler        {fn.handler}")
    if fn.description:
        typer.echo(f"description    {fn.description}")
    requirements = fn.spec.requirements
    if requirements:
        typer.echo(f"requirements   {', '.join(requirements)}")
    typer.echo(f"--- code ({fn.code.kind}) ---")
    typer.echo(fn.code.text.rstrip("\n"))


@hub_app.command("import")
def hub_import(
    ref: str = typer.Argument(..., help="[hub://][SOURCE/]NAME[:VERSION][@HASH]"),
    tag: str | None = typer.Option(None, "--tag", "-t", help="Also tag the saved version (besides latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the saved version as JSON."),
) -> None:
    """Fetch, verify and save a hub function in the project's store (then `shoal run NAME` runs it)."""
    from shoal import Function

    project = _project()
    fn = project.functions.save(Function.from_hub(ref, project=project), tag=tag)
    if as_json:
        output.print_json({"name": fn.name, "hash": fn.hash, "ref": fn.labels.get("hub"), "tag": tag})
        return
    tagged = f" (tag {tag})" if tag else ""
    typer.echo(f"saved {fn.name}@{fn.hash[:12]}{tagged} from {fn.labels.get('hub')}")


@hub_app.command("publish")
def hub_publish(
    target: str = typer.Argument(..., help="FILE.py:HANDLER, or a function NAME[:tag|@hash] of the project."),
    hub: str = typer.Option(..., "--hub", help="The hub: a folder, an fsspec URL, or a source name from hubs:."),
    version: str = typer.Option(..., "--version", help="The version to publish, e.g. 1.2.0 (immutable)."),
    requires_shoal: str | None = typer.Option(
        None, "--requires-shoal", help="The shoal versions it works with (default: this major.minor and up)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the index entry as JSON."),
) -> None:
    """Write a function's files to a hub and list it in the hub's index (atomically)."""
    from shoal.hub import publish

    project = _project()
    fn = target_function(target, project)
    entry = publish(fn, hub, version, requires_shoal=requires_shoal, project=project)
    if as_json:
        output.print_json({"name": fn.name, "version": version, **entry.model_dump(exclude_none=True)})
        return
    typer.echo(f"published {fn.name}:{version} ({entry.hash[:12]}) to {hub}")


def register(app: typer.Typer) -> None:
    app.add_typer(hub_app, name="hub")
