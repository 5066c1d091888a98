"""``shoal.Project``: a name, a home folder, a database, an artifact store, and named functions.

Configuration comes, in rising priority, from the defaults (``./.shoal/`` with SQLite and a local
artifact folder), an optional ``shoal.yaml`` in the project folder, the environment
(``SHOAL_DATABASE``, ``SHOAL_ARTIFACTS``), and the arguments of ``shoal.project()``. Driver side;
reading ``shoal.yaml`` lives in ``shoal.project_config``.
"""

from __future__ import annotations

import builtins
import difflib
import logging
import os
import pathlib
import re
import threading
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import CodeError, NotFoundError, ParamError, ProjectError, ShoalError, SpecError
from .function import Function
from .project_config import CONFIG_FILE, config_entry, default_name, hub_entry, load_config, masked

__all__ = [
    "CONFIG_FILE",
    "FunctionRegistry",
    "Project",
    "RunRegistry",
    "current_project",
    "load_config",
    "masked",
    "project",
]

if TYPE_CHECKING:  # pragma: no cover
    from datetime import date, datetime

    from typing_extensions import Unpack

    from shoal.backends.base import Backend

    from .artifacts import ArtifactStore
    from .lifecycle import CancelOutcome, DeletionPlan, DeletionResult
    from .recorder import Recorder
    from .runs import Run
    from .store import FunctionRecord, Store

log = logging.getLogger("shoal.project")


class RunSelection(TypedDict, total=False):
    """Which runs a deletion is about, besides uids: the keywords of :meth:`RunRegistry.delete`."""

    state: str | builtins.list[str] | None
    before: str | date | datetime | None
    function: str | None


class FunctionRegistry:
    """``project.functions``: save versions, get them back by name, tag or hash, compare them."""

    def __init__(self, project: Project):
        self._project = project
        self._saved: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def save(self, fn: Function, tag: str | None = None) -> Function:
        """Store this version (idempotent) and move ``latest`` (and ``tag``) to it."""
        if not isinstance(fn, Function):
            raise ShoalError(f"expected a shoal.Function, got {type(fn).__name__}")
        self._project.store.save_function(
            fn.name, fn.hash, fn.to_dict(), description=fn.description, labels=fn.labels, tag=tag
        )
        with self._lock:
            self._saved.add((fn.name, fn.hash))
        return fn

    def ensure_saved(self, fn: Function) -> None:
        """Save before running, once per version and process."""
        with self._lock:
            if (fn.name, fn.hash) in self._saved:
                return
        self.save(fn)

    def get(self, ref: str) -> Function:
        """``name``, ``name:tag`` or ``name@<hash or unique prefix>``; a shoal.yaml name works too."""
        try:
            record = self._project.store.get_function(ref)
        except NotFoundError:
            if ref in self._project.function_specs:
                return self._project.function_from_config(ref)
            raise
        return Function.from_dict(record.spec)

    def record(self, ref: str) -> FunctionRecord:
        return self._project.store.get_function(ref)

    def list(self) -> list[FunctionRecord]:
        return self._project.store.list_functions()

    def history(self, name: str) -> builtins.list[FunctionRecord]:
        return self._project.store.function_history(name)

    def diff(self, a: str, b: str) -> str:
        """A unified diff of two versions' documents (spec, metadata and code)."""
        first, second = self.record(a), self.record(b)

        def lines(record) -> list[str]:
            import yaml

            doc = dict(record.spec)
            code = doc.pop("code", {})
            text = yaml.safe_dump(doc, sort_keys=True)
            return (text + "--- code ---\n" + code.get("text", "")).splitlines(keepends=True)

        return "".join(
            difflib.unified_diff(
                lines(first),
                lines(second),
                fromfile=f"{first.name}@{first.hash[:12]}",
                tofile=f"{second.name}@{second.hash[:12]}",
            )
        )


class RunRegistry:
    """``project.runs``: find, cancel and delete recorded runs.

    Runs left pending or running by a driver that died are ended (failed, ``DriverLost``) when the
    project's database is opened and whenever runs are listed.
    """

    def __init__(self, project: Project):
        self._project = project

    def get(self, uid: str) -> Run:
        from .runs import Run

        return Run.from_record(self._project.store.get_run(uid))

    def list(
        self,
        function: str | None = None,
        state: str | list[str] | None = None,
        parent: str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        from .runs import STATES, Run

        for name in [state] if isinstance(state, str) else list(state or ()):
            if name not in STATES:
                raise ParamError(f"unknown run state {name!r}; use one of {', '.join(STATES)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ParamError(f"limit must be a whole number >= 0 or None, got {limit!r}")
        self._project.end_lost_runs()
        records = self._project.store.list_runs(function=function, state=state, parent=parent, limit=limit)
        return [Run.from_record(r) for r in records]

    def logs(self, uid: str) -> str:
        return self.get(uid).logs

    def cancel(self, *uids: str | builtins.list[str]) -> builtins.list[CancelOutcome]:
        """Cancel pending or running runs (uids or unique prefixes, or lists of them) and their
        open children.

        A run this process drives is stopped through its handle; any other is recorded cancelled
        at once, and its driver, if alive, stops it at its next heartbeat (about 10 s). A run that
        ends before that keeps its outcome. Runs that already ended are left as they are.
        """
        from .lifecycle import cancel

        return cancel(self._project, [u for item in uids for u in ([item] if isinstance(item, str) else item)])

    def plan_delete(
        self, uids: str | builtins.list[str] | None = None, **selection: Unpack[RunSelection]
    ) -> DeletionPlan:
        """What :meth:`delete` would remove (and skip), without changing anything."""
        from .lifecycle import plan_delete

        return plan_delete(self._project, uids, **selection)

    def delete(
        self,
        uids: str | builtins.list[str] | None = None,
        *,
        state: str | builtins.list[str] | None = None,
        before: str | date | datetime | None = None,
        function: str | None = None,
    ) -> DeletionResult:
        """Delete runs by uid, or by ``state`` / ``before`` (created before; a date, datetime or ISO
        text) / ``function``, with their children and their artifacts' files.

        Runs still pending or running under a live driver are skipped (cancel them first).
        """
        return self.plan_delete(uids, state=state, before=before, function=function).execute()


class Project:
    """Where functions, runs and artifacts of one project are kept."""

    def __init__(
        self,
        path: str | os.PathLike = ".",
        *,
        name: str | None = None,
        home: str | os.PathLike | None = None,
        database: str | None = None,
        artifacts: str | None = None,
        backend: str | None = None,
    ):
        self.root = pathlib.Path(path).resolve()
        config = load_config(self.root)
        self.config = config
        self.name = name or config.get("name") or default_name(self.root)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", str(self.name)):
            raise ProjectError(f"invalid project name {self.name!r}: use letters, digits, '-', '_' or '.'")
        self.home = self._path(home or config.get("home") or ".shoal")
        self.database = (
            database
            or os.environ.get("SHOAL_DATABASE")
            or self._database_url(config.get("database"))
            or f"sqlite:///{self.home / 'shoal.db'}"
        )
        artifacts = artifacts or os.environ.get("SHOAL_ARTIFACTS") or config.get("artifacts")
        self.artifacts_url = self._artifact_url(artifacts) if artifacts else str(self.home / "artifacts")
        self.default_backend = backend or config.get("backend")
        self.function_specs: dict[str, Any] = dict(config.get("functions") or {})
        self.functions = FunctionRegistry(self)
        self.runs = RunRegistry(self)
        self._store: Store | None = None
        self._artifacts: ArtifactStore | None = None
        self._recorder: Recorder | None = None
        self._lock = threading.Lock()

    def _path(self, value: str | os.PathLike) -> pathlib.Path:
        path = pathlib.Path(value).expanduser()
        return path if path.is_absolute() else self.root / path

    def _database_url(self, value: str | None) -> str | None:
        if not value:
            return None
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            relative = value[len("sqlite:///") :]
            if relative and relative != ":memory:":
                return f"sqlite:///{self._path(relative)}"
        return value

    def _artifact_url(self, value: str) -> str:
        return value if "://" in value else str(self._path(value))

    # -- lazily opened resources --------------------------------------------------------------
    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is not None:
                return self._store
            from .runs import cancel_live
            from .store import Store

            store = self._store = Store(self.database, project=self.name)
            store.heartbeat.on_cancelled = cancel_live  # ``shoal runs cancel`` from another process
        self.end_lost_runs(prune=True)
        return store

    def end_lost_runs(self, prune: bool = False) -> None:
        """End the open runs of drivers that died as failed (``DriverLost``); done on opening and
        on listing runs. A database that cannot be written is logged, not raised: reading goes on."""
        from .errors import StoreError

        store = self.store  # a database that cannot be opened is an error of its own
        try:
            store.end_lost_runs(prune=prune)
        except StoreError as exc:
            log.warning("could not end the runs of lost drivers: %s", exc)

    @property
    def artifacts(self) -> ArtifactStore:
        with self._lock:
            if self._artifacts is None:
                from .artifacts import ArtifactStore

                self._artifacts = ArtifactStore(self.artifacts_url)
            return self._artifacts

    @property
    def recorder(self) -> Recorder:
        store = self.store
        with self._lock:
            if self._recorder is None:
                from .recorder import Recorder

                self._recorder = Recorder(store)
            return self._recorder

    # -- functions by name ------------------------------------------------------------------------
    def function_from_config(self, name: str) -> Function:
        """Build the function ``name`` listed in shoal.yaml (file:handler plus spec fields).

        Options of a ``@shoal.function`` decorator in the file are the base; the yaml overrides
        them. Relative files resolve against the project folder, not the working folder.
        """
        try:
            entry = self.function_specs[name]
        except KeyError:
            listed = ", ".join(sorted(map(str, self.function_specs))) or "none"
            raise NotFoundError(f"function {name!r} is not in {CONFIG_FILE} (it lists: {listed})") from None
        where = f"{CONFIG_FILE}: functions.{name}"
        from_hub = hub_entry(entry, where)
        if from_hub is not None:  # a hub function under this project's name, the yaml's fields on top
            ref, options = from_hub
            fn = Function.from_hub(ref, project=self)
            try:
                return fn.with_spec(name=name, **options) if options or name != fn.name else fn
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from exc
        file, handler, options = config_entry(entry, where)
        try:
            return Function.from_file(self._path(file), handler, name=name, **options)
        except (SpecError, CodeError) as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        except TypeError as exc:  # a field of the wrong shape that the spec checks did not catch
            raise ProjectError(f"{where}: {exc}") from exc

    def get_function(self, ref: str) -> Function:
        """A shoal.yaml function by name (built from its file), a ``hub://`` reference (verified, see
        ``shoal.hub``), else a stored version by reference."""
        if ref.startswith("hub://"):
            return Function.from_hub(ref, project=self)
        base = ref.split(":")[0].split("@")[0]
        if ref == base and ref in self.function_specs:
            return self.function_from_config(ref)
        try:
            return self.functions.get(ref)
        except NotFoundError as exc:
            if ref != base or not self.function_specs:
                raise
            listed = ", ".join(sorted(map(str, self.function_specs)))
            raise NotFoundError(f"{exc}; {CONFIG_FILE} lists: {listed}") from None

    def watch_backend(self, backend: Backend) -> None:
        """Record the scaling events of ``backend`` in this project from now on.

        Idempotent and cheap, so it can be called for every driver. The recorder's thread pulls
        the events when it writes a batch of runs, and every flush (including the one at
        interpreter exit) pulls them too; each new event is also logged on ``shoal.scaling``.
        """
        self.recorder.watch(backend)

    def flush(self) -> None:
        """Wait until every finished run, and every scaling event seen so far, is in the database."""
        if self._recorder is not None:
            self._recorder.flush()

    def close(self) -> None:
        with self._lock:
            recorder = self._recorder
        if recorder is not None:
            recorder.close()
        with self._lock:
            store, self._store, self._recorder = self._store, None, None
        if store is not None:
            store.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shoal.Project {self.name} root={self.root} database={masked(self.database)}>"


_projects: dict[tuple, Project] = {}
_projects_lock = threading.Lock()


class ProjectSettings(TypedDict, total=False):
    """The keywords of :class:`Project` besides its folder, as :func:`project` takes them."""

    name: str | None
    home: str | os.PathLike | None
    database: str | None
    artifacts: str | None
    backend: str | None


def project(path: str | os.PathLike = ".", **settings: Unpack[ProjectSettings]) -> Project:
    """Open (or create on first write) the project at ``path`` with ``Project``'s keywords (``name``,
    ``home``, ``database``, ``artifacts``, ``backend``); one instance per settings and process."""
    environment = (os.environ.get("SHOAL_DATABASE"), os.environ.get("SHOAL_ARTIFACTS"))
    given = frozenset((key, str(value)) for key, value in settings.items() if value is not None)
    key = (str(pathlib.Path(path).resolve()), given, environment)
    with _projects_lock:
        found = _projects.get(key)
        if found is None:
            found = _projects[key] = Project(path, **settings)
        return found


def current_project() -> Project:
    """The project of the working folder (used when a run names none)."""
    return project(".")
