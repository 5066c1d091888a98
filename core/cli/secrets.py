"""``shoal secrets set | list | delete``: the project's secrets file (values are never printed).

Secret values are what a function's ``env={"VAR": {"secret": name, "key": key}}`` references
resolve to on local, Dask and Ray runs (see ``shoal.secrets``).
"""

from __future__ import annotations

import sys

import typer

secrets_app = typer.Typer(
    help="Secret values for env secret references, kept outside the database (values are never printed).",
    no_args_is_help=True,
)


def _file():
    from shoal.secrets import secrets_file

    from .targets import open_project as _project

    return secrets_file(_project())


def _read_value(value: str | None, from_file: str | None, secret: str, key: str) -> str:
    """The value from the argument, a file, stdin when it is not a terminal, else a hidden prompt."""
    from shoal.errors import ParamError

    if value is not None and from_file is not None:
        raise ParamError("give the value or --from-file, not both")
    if from_file is not None:
        try:
            with open(from_file, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise ParamError(f"--from-file {from_file}: {exc.strerror or exc}") from None
    if value is not None:
        return value
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        return text[:-1] if text.endswith("\n") else text
    return typer.prompt(f"value of {secret} {key}", hide_input=True, confirmation_prompt=True)


@secrets_app.command("set")
def secrets_set(
    secret: str = typer.Argument(..., help="Secret name, as in env={'VAR': {'secret': NAME, 'key': KEY}}."),
    key: str = typer.Argument(..., help="Key within the secret."),
    value: str | None = typer.Argument(
        None, help="The value (visible in shell history: prefer the prompt, stdin or --from-file)."
    ),
    from_file: str | None = typer.Option(None, "--from-file", "-f", help="Read the value from this file."),
) -> None:
    """Store a secret value in the project's secrets file (owner-only, mode 0600)."""
    store = _file()
    store.set(secret, key, _read_value(value, from_file, secret, key))
    typer.echo(f"set secret {secret} key {key} in {store.path}")


@secrets_app.command("list")
def secrets_list(as_json: bool = typer.Option(False, "--json", help="Print each name with its keys as JSON.")) -> None:
    """Secret names and their keys (never the values)."""
    from . import output

    listing = _file().listing()
    if as_json:
        output.print_json(listing)
        return
    if not listing:
        typer.echo("no secrets; add one with: shoal secrets set NAME KEY")
    for name, keys in listing.items():
        typer.echo(f"{name}: {', '.join(keys)}")


@secrets_app.command("delete")
def secrets_delete(
    secret: str = typer.Argument(..., help="Secret name."),
    key: str | None = typer.Argument(None, help="One key (default: the whole secret)."),
) -> None:
    """Remove a secret, or one of its keys (exit 1 if it is not there)."""
    from shoal.errors import NotFoundError

    store = _file()
    if not store.delete(secret, key):
        what = f"secret {secret!r}" + (f" has no key {key!r}" if key is not None else " is not set")
        raise NotFoundError(f"{what} in {store.path}; see: shoal secrets list")
    typer.echo(f"deleted secret {secret}" + (f" key {key}" if key is not None else ""))
