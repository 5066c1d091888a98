"""Hub sources: the ``hubs:`` list of shoal.yaml plus the hub shipped in shoal, and reading their bytes.

Every location is an fsspec URL. Credentials come from secret references (``shoal secrets set``),
never from the file; every read is bounded in time so an unreachable hub fails instead of hanging.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import HubSourceError, HubUnreachableError, SecretError

if TYPE_CHECKING:  # pragma: no cover
    from ..project import Project

SHIPPED = "shoal"
CATALOG = pathlib.Path(__file__).resolve().parent / "catalog"
TIMEOUT_ENV = "SHOAL_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
SOURCE_KEYS = ("name", "url", "options", "secrets", "timeout")
_SECRET_OPTION = re.compile(r"token|passw|secret|credential|authori[sz]ation|(^|_)key($|_)", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

T = TypeVar("T")


@dataclass(frozen=True)
class HubSource:
    """One named hub: an fsspec URL, its storage options, and secret references for credentials."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    # storage option (dotted for a nested one: headers.Authorization) -> {secret: NAME, key: KEY}
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    timeout: float | None = None

    @property
    def seconds(self) -> float:
        if self.timeout is not None:
            return self.timeout
        value = os.environ.get(TIMEOUT_ENV)
        try:
            return float(value) if value else DEFAULT_TIMEOUT
        except ValueError:
            raise HubSourceError(f"{TIMEOUT_ENV}={value!r} must be a number of seconds, e.g. 30") from None


def shipped_source() -> HubSource:
    return HubSource(SHIPPED, str(CATALOG))


def check_sources(value: Any, where: str = "shoal.yaml: hubs") -> list[HubSource]:
    """The ``hubs:`` entries as sources, each checked; HubSourceError naming the entry and the fix."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise HubSourceError(f"{where} must be a list of {{name: ..., url: ...}} entries")
    found: list[HubSource] = []
    for number, entry in enumerate(value):
        here = f"{where}[{number}]"
        if not isinstance(entry, Mapping):
            raise HubSourceError(f"{here} must be a mapping with name and url")
        unknown = sorted(set(entry) - set(SOURCE_KEYS), key=str)
        if unknown:
            raise HubSourceError(f"{here}: unknown key {unknown[0]!r}; valid keys: {', '.join(SOURCE_KEYS)}")
        name, url = entry.get("name"), entry.get("url")
        if not isinstance(name, str) or not _NAME.match(name):
            raise HubSourceError(f"{here}: 'name' must be letters, digits, '-', '_' or '.', got {name!r}")
        if not isinstance(url, str) or not url:
            raise HubSourceError(f"{here}: 'url' must be an fsspec URL or folder, e.g. github://org:repo@main/hub")
        if any(s.name == name for s in found):
            raise HubSourceError(f"{here}: source name {name!r} is listed twice; give each source its own name")
        options = entry.get("options") or {}
        if not isinstance(options, Mapping):
            raise HubSourceError(f"{here}: 'options' must map fsspec storage options to values")
        for key in _option_names(options):
            if _SECRET_OPTION.search(key):
                raise HubSourceError(
                    f"{here}: option {key!r} looks like a credential; move it to "
                    f"secrets: {{{key}: {{secret: NAME, key: KEY}}}} and store it with `shoal secrets set NAME KEY`"
                )
        secrets = entry.get("secrets") or {}
        if not isinstance(secrets, Mapping) or not all(
            isinstance(ref, Mapping) and set(ref) == {"secret", "key"} and all(isinstance(v, str) for v in ref.values())
            for ref in secrets.values()
        ):
            raise HubSourceError(f"{here}: 'secrets' must map storage options to {{secret: NAME, key: KEY}} references")
        timeout = entry.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise HubSourceError(f"{here}: 'timeout' must be a number of seconds > 0, got {timeout!r}")
        found.append(
            HubSource(
                name,
                url,
                dict(options),
                {k: dict(v) for k, v in secrets.items()},
                float(timeout) if timeout is not None else None,
            )
        )
    return found


def _option_names(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every option name, nested ones dotted (``headers.Authorization``)."""
    names = []
    for key, value in options.items():
        names.append(f"{prefix}{key}")
        if isinstance(value, Mapping):
            names.extend(_option_names(value, f"{prefix}{key}."))
    return names


def with_secrets(options: dict[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """``options`` with each secret value set at its option name; a dotted name sets a nested key
    (``headers.Authorization`` -> ``{"headers": {"Authorization": value}}``)."""
    merged = dict(options)
    for name, value in values.items():
        *parents, last = name.split(".")
        target = merged
        for part in parents:
            inner = target.get(part)
            target[part] = inner = dict(inner) if isinstance(inner, Mapping) else {}
            target = inner
        target[last] = value
    return merged


def project_sources(project: Project | None) -> list[HubSource]:
    """The project's sources in order, then the shipped hub (unless a source of the same name replaces it)."""
    sources = check_sources(project.config.get("hubs")) if project is not None else []
    if project is not None:  # a relative folder is relative to the project, not the working folder
        sources = [
            replace(s, url=str(project.root / s.url)) if "://" not in s.url and not os.path.isabs(s.url) else s
            for s in sources
        ]
    if not any(s.name == SHIPPED for s in sources):
        sources.append(shipped_source())
    return sources


def pick_source(sources: list[HubSource], name: str) -> HubSource:
    for source in sources:
        if source.name == name:
            return source
    listed = ", ".join(s.name for s in sources)
    raise HubSourceError(f"unknown hub source {name!r}; known sources: {listed} (add it under hubs: in shoal.yaml)")


def bounded(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()`` in a daemon thread, given up after ``seconds``: a hub that never answers cannot hang us."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="shoal-hub-read", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise HubUnreachableError(f"{what}: no answer within {seconds:g} s (set timeout: in hubs: or {TIMEOUT_ENV})")
    if "error" in box:
        raise box["error"]
    return box["value"]


class HubLocation:
    """An opened source: its filesystem and root, with bounded reads of paths relative to the root."""

    def __init__(self, source: HubSource, project: Project | None = None):
        self.source = source
        options = dict(source.options)
        if source.secrets:
            from ..secrets import resolve

            if project is None:
                from ..project import current_project

                project = current_project()
            try:
                values = resolve(source.secrets, project)
            except SecretError as exc:
                raise SecretError(
                    f"hub source {source.name!r}, secrets option {str(exc).removeprefix('env ')}"
                ) from None
            options = with_secrets(options, values)
        self.seconds = source.seconds
        protocol = source.url.split("://", 1)[0] if "://" in source.url else "file"
        if protocol in ("http", "https") and "client_kwargs" not in options:
            import aiohttp

            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=self.seconds)}
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(source.url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise HubSourceError(f"hub source {source.name!r} ({source.url}): {exc}") from None
        self.protocol = protocol
        self.root = self.root.rstrip("/") if self.root not in ("/", "") else self.root

    def url(self, relative: str) -> str:
        return posixpath.join(self.source.url.rstrip("/"), relative)

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if self.root else relative

    def read(self, relative: str) -> bytes:
        """The bytes at ``relative``; FileNotFoundError when absent, HubUnreachableError when unreadable."""
        where = self.url(relative)

        def call() -> bytes:
            return self.fs.cat_file(self.path(relative))

        try:
            return bounded(call, self.seconds, f"hub {self.source.name!r}: reading {where}")
        except (FileNotFoundError, HubUnreachableError):
            raise
        except Exception as exc:  # noqa: BLE001 - every transport has its own errors
            raise HubUnreachableError(
                f"hub {self.source.name!r} is unreachable: reading {where} failed: {type(exc).__name__}: {exc}"
            ) from None
