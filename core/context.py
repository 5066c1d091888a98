"""``shoal.Context``: what a running handler sees and logs through.

Worker side. MLRun's context names live in ``shoal.mlrun_names`` (a mixin Context inherits); the
JSON conversion of results in ``shoal.json_values`` (``to_json_value`` and ``finite_or_text`` are
re-exported here, where callers import them).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from . import artifact_logging as logged
from .artifacts import Artifact, ArtifactStore
from .errors import ArtifactError
from .json_values import finite_or_text, to_json_value
from .mlrun_names import NO_MEANING, MLRunNames

__all__ = ["NO_MEANING", "Context", "finite_or_text", "to_json_value"]

_logger: logging.Logger | None = None


@functools.lru_cache(maxsize=16)
def artifact_store(url: str) -> ArtifactStore:
    """The artifact store at ``url``, opened once per process: resolving an fsspec URL costs about
    a third of a short run's own time on a worker (measured), and a store holds no per-run state.
    A run's Context opens it when the handler first stores something (importing fsspec, the first
    time, costs ~20 ms of a fresh worker's CPU)."""
    return ArtifactStore(url)


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time, so run capture sees it."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _user_logger() -> logging.Logger:
    global _logger
    if _logger is None:
        logger = logging.getLogger("shoal.run")
        if not logger.handlers:
            handler = _CurrentStdoutHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _logger = logger
    return _logger


_LOG_KEYWORDS = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})


class _RunLogger(logging.LoggerAdapter):
    """The run's logger, also taking values as keywords as MLRun's does
    (``logger.info("epoch done", loss=0.1)`` logs ``epoch done loss=0.1``)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs  # keep the caller's extra= (the base class would replace it)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        fields = {key: kwargs.pop(key) for key in list(kwargs) if key not in _LOG_KEYWORDS}
        if fields and self.isEnabledFor(level):
            if args:  # format now: the values appended below may hold a '%'
                msg, args = str(msg) % args, ()
            msg = f"{msg} " + " ".join(f"{key}={value!r}" for key, value in fields.items())
        super().log(level, msg, *args, **kwargs)


_run_logger: _RunLogger | None = None


_UNSET: Any = object()


class Context(MLRunNames):
    """Passed to handlers that ask for it (a first parameter named ``ctx`` or ``context``, or typed
    ``shoal.Context``).

    Everything logged here is recorded with the run, also when the handler fails afterwards. MLRun's
    context names work where they mean the same (``log_artifact(key, body=, local_path=)``,
    ``log_dataset``, ``log_model``, ``get_input``, ``get_secret``, ``set_label``, ``name``,
    ``project``, ``iteration``, ``artifact_path``, ...); the others raise ``UnsupportedError``
    naming the shoal way (see ``NO_MEANING``).
    """

    def __init__(
        self,
        *,
        uid: str = "",
        function: str = "",
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Artifact] | None = None,
        artifact_store: ArtifactStore | None = None,
        artifact_url: str | None = None,
        artifact_prefix: str = "",
        reporter: Callable[[float, int | None], None] | None = None,
        trial: Any = None,
        attempt: int = 1,
        project: str = "",
        iteration: int | None = None,
        labels: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
    ):
        self.uid = uid
        self.function = function
        self.project = project
        #: the run's index among its siblings (a map's item, a tuning trial's number); 0 otherwise
        self.iteration = iteration or 0
        self._labels: dict[str, str] = dict(labels) if labels else {}
        self.labels_set: dict[str, str] = {}  # set_label calls: added to the run's recorded labels
        self._secrets: dict[str, str] = dict(secrets) if secrets else {}
        self.params: dict[str, Any] = dict(params) if params else {}
        self.inputs: dict[str, Artifact] = dict(inputs) if inputs else {}
        self.attempt = attempt
        if trial is not None:
            self._trial = trial
        self.results: dict[str, Any] = {}
        self.metrics: dict[str, list[list[float | str]]] = {}  # [step, value]; non-finite values as text
        self.artifacts: dict[str, Artifact] = {}
        self._store = artifact_store
        self._store_url = artifact_url  # opened on first use: most runs store nothing
        self._prefix = artifact_prefix
        if reporter is not None:
            self._reporter = reporter

    # What most runs never set, as class defaults: a Context is made for every run.
    _trial: Any = None
    _trial_factory: Callable[[], Any] | None = None
    _params_chosen = False  # see params_chosen
    _reporter: Callable[[float, int | None], None] | None = None

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Add parameters chosen on the worker before the handler runs (a tuning trial's sampled
        values); the run's record then holds them."""
        self.params.update(values)
        self._params_chosen = True

    @property
    def params_chosen(self) -> bool:
        """Whether ``set_params`` was called: the run's record then takes its parameters from here."""
        return self._params_chosen

    @property
    def trial(self) -> Any:
        """The Optuna trial of a tuning run (None outside tuning), built on first use: most
        objectives only read their parameters and never need it."""
        if self._trial is None and self._trial_factory is not None:
            self._trial = self._trial_factory()
        return self._trial

    @trial.setter
    def trial(self, value: Any) -> None:
        self._trial = value

    @property
    def built_trial(self) -> Any:
        """The trial if it is built (set, or asked for through ``trial``), else None: never builds
        one, for code that must not pay for a trial the handler did not use."""
        return self._trial

    def attach_trial(self, factory: Callable[[], Any], reporter: Callable[[float, int | None], None]) -> None:
        """Make this run a tuning trial (``shoal.tuning`` does, where the run executes): ``factory``
        builds the trial on first use of ``trial``, and ``report`` hands values to ``reporter``."""
        self._trial_factory = factory
        self._reporter = reporter

    @property
    def logger(self) -> logging.LoggerAdapter:
        """A logger whose lines land in the run's captured logs (keyword values are appended to the
        line, as MLRun's logger does)."""
        global _run_logger
        if _run_logger is None:
            _run_logger = _RunLogger(_user_logger(), {})
        return _run_logger

    def log_result(self, key: str, value: Any) -> None:
        """Record a JSON value as a result; other values are stored as an artifact under ``key``."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"result keys must be non-empty strings, got {key!r}")
        ok, converted = to_json_value(value)
        if ok:
            self.results[key] = converted
            return
        self.log_artifact(key, value)
        self.logger.info("result %r (%s) is not JSON; stored as artifact %r", key, type(value).__name__, key)

    def log_results(self, results: Mapping[str, Any]) -> None:
        for key, value in results.items():
            self.log_result(str(key), value)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Append ``value`` at ``step`` (default: the next step) to the metric series ``key``
        (NaN and infinities are kept as "NaN"/"Infinity", as the store keeps them)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
        series = self.metrics.setdefault(key, [])
        step = len(series) if step is None else int(step)
        series.append([step, finite_or_text(value)])

    def log_artifact(
        self,
        key: str,
        value: Any = _UNSET,
        local_path: str | os.PathLike | None = None,
        artifact_path: str | None = None,
        tag: str = "",
        viewer: str | None = None,
        target_path: str | None = None,
        src_path: str | os.PathLike | None = None,
        upload: bool | None = None,
        labels: Mapping[str, Any] | None = None,
        format: str | None = None,
        db_key: Any = None,
        *,
        body: Any = None,
        kind: str | None = None,
    ) -> Artifact:
        """Store a value (array, frame, bytes, text, JSON, object) or a local file/folder path.

        A ``str`` naming an existing file or folder is stored as that file or folder; any other
        string as text. Pass ``pathlib.Path`` to be explicit.

        MLRun's form works too: ``body=`` is the value; ``local_path=`` (or ``src_path=``) alone is
        a file or folder to store, and with a body it names the stored file (its suffix, e.g.
        ``model.txt``); ``artifact_path=`` a folder to write to (``+/sub`` below the run's folder),
        ``target_path=`` the exact file; ``labels=`` and ``format=`` are recorded with it.
        """
        if not isinstance(key, str):
            raise ArtifactError(
                f"log_artifact takes a key (text) first, got {type(key).__name__}: shoal has no artifact "
                f"objects; pass the content as body= (e.g. a figure as HTML text or image bytes)"
            )
        logged.refuse("log_artifact", tag=tag, viewer=viewer, upload=upload, db_key=db_key)
        local_path = local_path if local_path is not None else src_path
        if value is not _UNSET and body is not None:
            raise ArtifactError(f"log_artifact({key!r}) got both a value and body=; pass one of them")
        filename = None
        if value is _UNSET and body is None:
            if local_path is None:
                raise ArtifactError(
                    f"log_artifact({key!r}) needs something to store: a value (second argument or body=) "
                    f"or a file or folder with local_path="
                )
            if not os.path.exists(local_path):
                raise ArtifactError(
                    f"log_artifact({key!r}): local_path {os.fspath(local_path)!r} does not exist; to store a "
                    f"value under that file name pass the value as body= too"
                )
            content: Any = pathlib.Path(local_path)
        else:
            content = body if value is _UNSET else value
            if local_path is not None:
                filename = os.path.basename(os.fspath(local_path).rstrip("/"))
        if kind is None and logged.is_frame(content) and (format or filename):
            kind = logged.frame_kind(format or pathlib.PurePath(filename or "").suffix, "log_artifact")
        elif format:
            format = logged.check_format(format)
        return self._put(
            key,
            content,
            kind=kind,
            filename=filename,
            artifact_path=artifact_path,
            target_path=target_path,
            labels=labels,
            format=None if logged.is_frame(content) else format,
            method="log_artifact",
        )

    def _require_store(self) -> ArtifactStore:
        if self._store is None:
            if self._store_url is None:
                raise ArtifactError("this context has no artifact store (it is not inside a run)")
            self._store = artifact_store(self._store_url)
        return self._store

    def _put(
        self,
        key: str,
        content: Any,
        *,
        kind: str | None,
        filename: str | None,
        artifact_path: Any,
        target_path: Any,
        labels: Mapping[str, Any] | None,
        method: str,
        format: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Write ``content`` where the arguments say and record it as this run's artifact ``key``."""
        store, path, exact = logged.destination(self._require_store(), self._prefix, key, artifact_path, target_path)
        suffix = None
        if exact:
            suffix = ""
        elif filename and (kind in ("csv", "pandas") or isinstance(content, (bytes, bytearray, memoryview, str))):
            suffix = pathlib.PurePath(filename).suffix  # the bytes are written as they are: keep the name's
        artifact = store.put(path, content, key=key, kind=kind, suffix=suffix)
        extra: dict[str, Any] = dict(meta or {})
        if filename:
            extra["filename"] = filename
        if labels:
            extra["labels"] = logged.check_labels(labels, method)
        changes: dict[str, Any] = {}
        if extra:
            changes["meta"] = {**artifact.meta, **extra}
        if format:
            changes["format"] = format
        if changes:
            artifact = dataclasses.replace(artifact, **changes)
        self.artifacts[key] = artifact
        return artifact

    def report(self, value: float, step: int | None = None) -> None:
        """Report an intermediate objective value at ``step`` (default: the next step); a tuning
        pruner may stop the trial here. The value is recorded as the metric ``objective``: outside
        tuning here, in a trial by the trial itself (so that its direct ``trial.report`` calls are
        recorded too, and each value once).
        """
        if self._reporter is None:
            self.log_metric("objective", value, step)
        else:  # the trial checks value and step, as Optuna's trial.report does
            self._reporter(value, len(self.metrics.get("objective", ())) if step is None else step)

    def __repr__(self) -> str:
        return f"<shoal.Context run={self.uid} function={self.function}>"
