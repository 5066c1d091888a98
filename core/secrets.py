"""Secret values for ``env`` references (``{"secret": name, "key": key}``), kept out of the database.

A function spec only holds references; the driver resolves them just before a run is recorded and
hands the values to the worker inside the run's task (never in a record, a log or the hash).
Sources, first match wins:

1. the environment variable ``SHOAL_SECRET_<NAME>_<KEY>`` (see ``env_var_name``);
2. the project's secrets file, ``<project home>/secrets.json`` (``$SHOAL_SECRETS_FILE`` names
   another), readable and writable by its owner only, written by ``shoal secrets set``.

On Kubernetes the pods get them from Kubernetes secrets (``secretKeyRef``) instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import SecretError

if TYPE_CHECKING:  # pragma: no cover
    from .project import Project

FILE_NAME = "secrets.json"
FILE_ENV = "SHOAL_SECRETS_FILE"
ENV_PREFIX = "SHOAL_SECRET_"
MASK = "****"


def env_var_name(secret: str, key: str) -> str:
    """``SHOAL_SECRET_<NAME>_<KEY>``: name and key upper-cased, any character other than a letter or
    a digit as ``_`` (secret ``wandb``, key ``api-key`` -> ``SHOAL_SECRET_WANDB_API_KEY``)."""

    def part(text: str) -> str:
        return re.sub(r"[^A-Z0-9]", "_", text.upper())

    return f"{ENV_PREFIX}{part(secret)}_{part(key)}"


class SecretValues(dict):
    """Resolved values by variable name; its repr shows the names only, so a task printed in a log
    or an engine's error message shows no value."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{name!r}: {MASK!r}" for name in self) + "}"

    __str__ = __repr__


def mask(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each value replaced by ``****`` (longest first)."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_data(value: Any, values: tuple[str, ...]) -> Any:
    """JSON-like ``value`` with secret values masked in every string inside it."""
    if isinstance(value, str):
        return mask(value, values)
    if isinstance(value, dict):
        return {key: mask_data(item, values) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_data(item, values) for item in value)
    return value


class SecretsFile:
    """A JSON file ``{name: {key: value}}`` readable by its owner only (mode 0600).

    Every write replaces the file atomically (a temporary file created 0600 in the same folder, then
    renamed over it), under an exclusive lock so that two concurrent ``set`` calls both land.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)

    def read(self) -> dict[str, dict[str, str]]:
        try:
            handle = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return {}
        with handle:
            self._check_mode(os.fstat(handle.fileno()).st_mode)
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise SecretError(f"secrets file {self.path} is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(data, dict) or not all(
            isinstance(keys, dict) and all(isinstance(v, str) for v in keys.values()) for keys in data.values()
        ):
            raise SecretError(f"secrets file {self.path} must map secret names to {{key: value}}; fix or delete it")
        return data

    def _check_mode(self, mode: int) -> None:
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"secrets file {self.path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {self.path}"
            )

    def get(self, secret: str, key: str) -> str | None:
        return self.read().get(secret, {}).get(key)

    def listing(self) -> dict[str, list[str]]:
        """Secret names and their keys, sorted; never the values."""
        return {name: sorted(keys) for name, keys in sorted(self.read().items())}

    def set(self, secret: str, key: str, value: str) -> None:
        _check_name(secret, "secret name")
        _check_name(key, "key")
        if not isinstance(value, str):
            raise SecretError(f"the value of secret {secret!r} key {key!r} must be text")
        with self._locked():
            data = self.read()
            data.setdefault(secret, {})[key] = value
            self._write(data)

    def delete(self, secret: str, key: str | None = None) -> bool:
        """Remove one key, or the whole secret when ``key`` is None; False if it was not there."""
        with self._locked():
            data = self.read()
            keys = data.get(secret)
            if keys is None or (key is not None and key not in keys):
                return False
            if key is None or len(keys) == 1:
                del data[secret]
            else:
                del keys[key]
            self._write(data)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: writes are still atomic
                yield
                return
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def _write(self, data: Mapping[str, Any]) -> None:
        fd, temp = tempfile.mkstemp(prefix=".secrets-", dir=self.path.parent)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def _check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}", value):
        raise SecretError(f"invalid {what} {value!r}: use letters, digits, '-', '_' or '.' (as Kubernetes does)")


def secrets_file(project: Project) -> SecretsFile:
    """The project's secrets file: ``$SHOAL_SECRETS_FILE``, else ``<home>/secrets.json``."""
    override = os.environ.get(FILE_ENV)
    return SecretsFile(pathlib.Path(override).expanduser() if override else project.home / FILE_NAME)


def resolve(references: Mapping[str, Any], project: Project) -> SecretValues:
    """Values for ``{variable: SecretRef}``; SecretError naming every reference that has none."""
    values = SecretValues()
    if not references:
        return values
    source = secrets_file(project)
    stored: dict[str, dict[str, str]] | None = None
    missing = []
    for variable, ref in references.items():
        if isinstance(ref, Mapping):
            from .spec import SecretRef

            ref = SecretRef(**ref)
        value = os.environ.get(env_var_name(ref.secret, ref.key))
        if value is None:
            if stored is None:
                stored = source.read()
            value = stored.get(ref.secret, {}).get(ref.key)
        if value is None:
            missing.append((variable, ref))
        else:
            values[variable] = value
    if missing:
        variable, ref = missing[0]
        more = f" (and {len(missing) - 1} more: {', '.join(v for v, _ in missing[1:])})" if len(missing) > 1 else ""
        raise SecretError(
            f"env {variable!r}: secret {ref.secret!r} key {ref.key!r} is not set{more}; provide it with "
            f"`shoal secrets set {ref.secret} {ref.key}` (stored in {source.path}) or the environment "
            f"variable {env_var_name(ref.secret, ref.key)}"
        )
    return values
