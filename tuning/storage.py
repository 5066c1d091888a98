"""Where studies live: the default storage of a project, and storage URLs -> Optuna storages.

Default: a journal file in the project's home folder when the project database is SQLite (measured
on a 2-core machine, an Optuna journal file sustained ~175-225 ask/tell cycles per second with 1-8
writer processes where SQLite managed 7-45; see perf/tuning_storage.py), else the project's own
database (PostgreSQL), which every machine of a team or cluster reaches.

Storages are named by a small picklable ``StorageRef`` so workers rebuild (once per process) the
same storage the driver uses; a study in a local file is refused with a remote backend.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shoal.errors import TuningError

from . import wording

if TYPE_CHECKING:  # pragma: no cover
    from shoal.project import Project

JOURNAL_FILE = "studies.journal"
#: seconds between heartbeats of running trials (RDB storages), and how long one may be missed
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
EXAMPLES = (
    "give a URL such as sqlite:///studies.db, postgresql+psycopg://user@host/db, mysql://..., "
    "redis://host:6379, journal:///path/studies.journal (or a path ending in .journal), or an Optuna storage"
)


@dataclass(frozen=True)
class StorageRef:
    """A storage by kind and target, cheap to pickle; ``open()`` builds it once per process."""

    kind: str  # rdb, journal-file, journal-redis, object
    target: str  # URL or file path; for "object" a key naming the pickled storage
    payload: bytes | None = field(default=None, repr=False, compare=False)  # object storages only
    redis_prefix: str = ""
    shared: bool = False  # a journal file on a volume every worker mounts (``?shared=true``)

    @property
    def local_file(self) -> bool:
        """True when the storage is a file on this machine (not reachable from other machines)."""
        if self.kind == "journal-file":
            return not self.shared
        return self.kind == "rdb" and self.target.startswith("sqlite")

    def describe(self) -> str:
        if self.kind == "object":
            return "an Optuna storage object"
        from shoal.store.engine import mask

        return mask(self.target) if "://" in self.target else self.target

    def open(self, *, heartbeat: bool = False) -> Any:
        """The Optuna storage (cached per process and kind of use)."""
        key = (self.kind, self.target, self.redis_prefix, heartbeat)
        with _lock:
            storage = _cache.get(key)
            if storage is None:
                storage = _cache[key] = self._build(heartbeat)
            return storage

    def _build(self, heartbeat: bool) -> Any:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

        try:
            if self.kind == "object":
                return pickle.loads(self.payload)  # type: ignore[arg-type]
            if self.kind == "journal-file":
                pathlib.Path(self.target).parent.mkdir(parents=True, exist_ok=True)
                from .journal_lock import QueuedJournalLock

                return JournalStorage(JournalFileBackend(self.target, lock_obj=QueuedJournalLock(self.target)))
            if self.kind == "journal-redis":
                try:
                    import redis  # noqa: F401
                except ImportError:
                    raise TuningError(
                        "a redis:// storage needs the redis package: pip install redis (or 'shoal[tuning]')"
                    ) from None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    backend = JournalRedisBackend(self.target, prefix=self.redis_prefix)
                _ping_redis(self.target)  # unreachable server: fail now, with the URL
                return JournalStorage(backend)
            options: dict[str, Any] = {"engine_kwargs": _engine_kwargs(self.target), "skip_compatibility_check": True}
            if heartbeat:
                options.update(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(self.target, **options)
        except TuningError:
            raise
        except Exception as exc:  # noqa: BLE001 - any driver/connection problem: one line with the URL
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TuningError(f"cannot open the study storage {self.describe()}: {first}") from None


def _ping_redis(url: str) -> None:
    """Reach the Redis server at ``url`` once (the backend's own client connects lazily)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    finally:
        client.close()


_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # wait for the write lock instead of failing
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
    return {"pool_pre_ping": True}


def default_ref(project: Project) -> StorageRef:
    """The project's default study storage (see the module docstring for why)."""
    if project.database.startswith("sqlite"):
        return StorageRef("journal-file", str(project.home / JOURNAL_FILE))
    return StorageRef("rdb", _rdb_url(project.database))


def resolve(storage: Any, project: Project) -> StorageRef:
    """A StorageRef for ``storage`` (None: the project's default); TuningError if unusable."""
    if storage is None:
        return default_ref(project)
    if isinstance(storage, StorageRef):
        return storage
    if isinstance(storage, os.PathLike):
        return StorageRef("journal-file", str(_project_path(os.fspath(storage), project)))
    if isinstance(storage, str):
        return _from_url(storage.strip(), project)
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        return StorageRef("rdb", storage.url)
    journal_file = _shoal_journal_file(storage)
    if journal_file is not None:  # one shoal opened: the same file, named (and checked) as a path
        return StorageRef("journal-file", journal_file)
    if isinstance(storage, optuna.storages.BaseStorage):
        try:
            payload = pickle.dumps(storage)
        except Exception as exc:  # noqa: BLE001 - whatever its state refuses: one line, how to fix
            raise TuningError(
                f"the storage object {type(storage).__name__} cannot be pickled for the workers ({exc}); "
                f"give {wording.option('storage')} a URL or a path instead; {EXAMPLES}"
            ) from None
        return StorageRef("object", f"object:{hashlib.sha256(payload).hexdigest()[:16]}", payload)
    raise TuningError(f"storage must be a URL, a path or an Optuna storage, got {type(storage).__name__}; {EXAMPLES}")


def _shoal_journal_file(storage: Any) -> str | None:
    """The journal file of a JournalStorage locked the way shoal locks its own (``QueuedJournalLock``),
    else None: a journal under another lock (e.g. Optuna's open lock for NFS) keeps that lock."""
    from ._optuna_compat import journal_file
    from .journal_lock import QueuedJournalLock

    found = journal_file(storage)
    return found[0] if found is not None and isinstance(found[1], QueuedJournalLock) else None


def _from_url(url: str, project: Project) -> StorageRef:
    if not url:
        raise TuningError(f"storage is empty; {EXAMPLES}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query)
        prefix = "".join(v for k, v in pairs if k == "prefix")
        rest = urlencode([(k, v) for k, v in pairs if k != "prefix"])
        return StorageRef("journal-redis", urlunsplit(parts._replace(query=rest)), redis_prefix=prefix)
    if scheme in ("journal", "file"):
        path, _, query = url.split("://", 1)[1].partition("?")
        if not path:
            raise TuningError(f"storage {url!r} names no file; write journal:///path/to/studies.journal")
        shared = dict(parse_qsl(query)).get("shared", "").lower() in ("1", "true", "yes")
        return StorageRef("journal-file", str(_project_path(path, project)), shared=shared)
    if scheme == "":
        if url.endswith((".journal", ".log", ".jsonl")):
            return StorageRef("journal-file", str(_project_path(url, project)))
        raise TuningError(f"storage {url!r} is neither a URL nor a journal file path; {EXAMPLES}")
    if scheme.split("+")[0] in ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql"):
        return StorageRef("rdb", _rdb_url(url, project))
    raise TuningError(f"unsupported storage URL scheme {scheme!r}; {EXAMPLES}")


def _rdb_url(url: str, project: Project | None = None) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3, the driver shoal ships with
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and project is not None:
        relative = url[len("sqlite:///") :]
        if relative and relative != ":memory:":
            return f"sqlite:///{_project_path(relative, project)}"
    return url


def _project_path(path: str, project: Project) -> pathlib.Path:
    resolved = pathlib.Path(os.path.expanduser(path))
    return resolved if resolved.is_absolute() else (project.root / resolved)


def refuse_remote(ref: StorageRef, backend: Any) -> None:
    """A local-file storage cannot be shared with workers on other machines: refuse, before any trial."""
    if ref.local_file and getattr(backend, "remote", False):
        raise TuningError(
            f"the study storage {ref.describe()} is a file on this machine, but the {backend.name} backend's "
            f"workers may run elsewhere and could not reach it; give {wording.option('storage')} a server "
            "(postgresql+psycopg://..., redis://...) or a journal file on a volume every worker mounts "
            "(journal:///mnt/shared/studies.journal?shared=true)"
        )
