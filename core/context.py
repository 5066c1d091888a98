"""``shoal.Context``: what a running handler sees and logs through."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import sys
from typing import Any, Callable, Mapping

from . import artifact_logging as logged
from .artifacts import Artifact, ArtifactStore, reference
from .data_item import DataItem
from .errors import ArtifactError, UnsupportedError

_logger: logging.Logger | None = None


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time, so run capture sees it."""

    @property  # type: ignore[override]
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


def finite_or_text(value: float) -> float | str:
    """A float as the store keeps it: non-finite values become "NaN", "Infinity" or "-Infinity"
    (the store's JSON convention, which PostgreSQL accepts and ``float()`` reads back)."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def to_json_value(value: Any) -> tuple[bool, Any]:
    """(True, value as plain JSON) when ``value`` can be recorded as a result, else (False, None).

    The converted value is exactly what the database gives back (plain bool/int/float/str, lists,
    string keys), so a returned Run and the stored one agree.
    """
    if value is None:
        return True, None
    if isinstance(value, bool):
        return True, bool(value)
    if isinstance(value, int):
        return True, int(value)
    if isinstance(value, float):
        return True, finite_or_text(value)
    if isinstance(value, str):
        return True, str.__str__(value)  # the text itself, also for str enums
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == () and type(value).__module__ == "numpy":
        return to_json_value(item())
    if isinstance(value, (list, tuple)):
        out = []
        for element in value:
            ok, converted = to_json_value(element)
            if not ok:
                return False, None
            out.append(converted)
        return True, out
    if isinstance(value, Mapping):
        out_map = {}
        for key, element in value.items():
            ok, converted = to_json_value(element)
            if not ok or not isinstance(key, (str, int, float, bool)):
                return False, None
            out_map[str(key)] = converted
        return True, out_map
    return False, None


_UNSET: Any = object()

#: MLRun context names with no meaning in shoal, and the shoal way (each a ``_NoMeaning`` on Context)
NO_MEANING = {
    "get_store_resource": "shoal has no store:// resources; pass the data as an input "
    "(fn.run(inputs={key: path_or_url}) or --input key=path) and read it with context.get_input(key)",
    "get_project_object": "handlers get no project object; read context.project and pass what the handler "
    "needs with params= or inputs=",
    "get_project_param": "shoal projects have no parameters; pass the value with params= or the function's defaults",
    "get_child_context": "child runs are runs of their own in shoal: fn.map([...]) for a set of parameter sets, "
    "shoal.tune(fn, space) for a search; each child has its parent and its iteration",
    "update_child_iterations": "child runs are recorded by fn.map / shoal.tune, each as a run of its own",
    "mark_as_best": "shoal.tune records the best trial itself (result.best_run)",
    "log_iteration_results": "shoal.tune records the best trial itself (result.best_run)",
    "set_state": "a run's state comes from how the handler ends: return to complete, raise to fail",
    "commit": "shoal records everything the handler logged when the run ends (also when it fails); "
    "remove the call",
    "update_artifact": "logged artifacts never change; log the new value with context.log_artifact under "
    "the same key",
    "set_annotation": "runs carry labels, not annotations: use context.set_label(key, value)",
    "annotations": "runs carry labels, not annotations: read context.labels",
    "node_selector": "placement belongs to the function spec (Function(..., node_selector=...)), not the run",
    "get_notifications": "shoal sends no notifications; wait on the run handle (handle.result()) instead",
    "log_document": "shoal has no document artifacts; store the text with context.log_artifact(key, body=...)",
    "store_run": "shoal records the run itself when it ends; remove the call",
}


class _NoMeaning:
    """A Context attribute MLRun has and shoal does not: reading it raises UnsupportedError (an
    AttributeError, so ``hasattr`` is False) with the shoal way."""

    def __init__(self, name: str, hint: str):
        self.name, self.hint = name, hint

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        raise UnsupportedError(f"context.{self.name} has no meaning in shoal: {self.hint}")


class Context:
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
        self._labels: dict[str, str] = dict(labels or {})
        self.labels_set: dict[str, str] = {}  # set_label calls: added to the run's recorded labels
        self._secrets: dict[str, str] = dict(secrets or {})
        self.params: dict[str, Any] = dict(params or {})
        self.inputs: dict[str, Artifact] = dict(inputs or {})
        self.attempt = attempt
        self._trial = trial
        self._trial_factory: Callable[[], Any] | None = None
        self._params_chosen = False  # set_params was called: the record takes the params from the worker
        self.results: dict[str, Any] = {}
        self.metrics: dict[str, list[list[float]]] = {}
        self.artifacts: dict[str, Artifact] = {}
        self._store = artifact_store
        self._prefix = artifact_prefix
        self._reporter = reporter

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Add parameters chosen on the worker before the handler runs (a tuning trial's sampled
        values); the run's record then holds them."""
        self.params.update(values)
        self._params_chosen = True

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
    def logger(self) -> logging.LoggerAdapter:
        """A logger whose lines land in the run's captured logs (keyword values are appended to the
        line, as MLRun's logger does)."""
        global _run_logger
        if _run_logger is None:
            _run_logger = _RunLogger(_user_logger(), {})
        return _run_logger

    # -- MLRun's names for what the run is ------------------------------------------------------
    @property
    def name(self) -> str:
        """The function's name (MLRun: the run's name)."""
        return self.function

    @property
    def parameters(self) -> dict[str, Any]:
        """A copy of the run's parameters."""
        return dict(self.params)

    @property
    def labels(self) -> dict[str, str]:
        """The run's labels, with those set by ``set_label``."""
        return {**self._labels, **self.labels_set}

    def set_label(self, key: str, value: Any, replace: bool = True) -> None:
        """Add a label to the run's record (the value as text); ``replace=False`` keeps an existing one."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"label keys must be non-empty strings, got {key!r}")
        if replace or key not in self.labels:
            self.labels_set[key] = str(value)

    @property
    def artifact_path(self) -> str:
        """The URL of the run's artifact folder (where ``log_artifact`` writes)."""
        store = self._require_store()
        return store.fs.unstrip_protocol(f"{store.root}/{self._prefix}")

    def artifact_subpath(self, *subpaths: str) -> str:
        """A folder URL below the run's artifact folder (for ``artifact_path=``)."""
        return "/".join([self.artifact_path, *(part.strip("/") for part in subpaths)])

    def get_param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def get_secret(self, key: str) -> str | None:
        """A secret of the run: an env variable the function maps to a secret (``env={key: {"secret":
        ..., "key": ...}}``), else the environment variable ``key``, else None (as MLRun's does)."""
        if key in self._secrets:
            return self._secrets[key]
        return os.environ.get(key)

    def get_input(self, key: str, url: str = "") -> DataItem:
        """The run's input ``key`` as a data item (``.local()``, ``.get()``, ``.as_df()``, ...);
        ``url`` (a path or an fsspec URL) names it when the run was given no such input."""
        if key not in self.inputs:
            if not url:
                given = ", ".join(sorted(self.inputs)) or "none"
                raise ArtifactError(
                    f"the run has no input {key!r} (inputs: {given}); pass it with fn.run(inputs={{{key!r}: "
                    f"path_or_url}}) or --input {key}=PATH, or give get_input a url"
                )
            artifact = reference(url, key)
            if artifact is None:
                raise ArtifactError(f"get_input({key!r}): no such file or folder: {url}")
            self.inputs[key] = artifact
        return DataItem(self.inputs[key])

    def get_dataitem(self, url: str) -> DataItem:
        """A data item for a path or an fsspec URL (``s3://bucket/file.csv``)."""
        artifact = reference(url, os.path.basename(os.fspath(url).rstrip("/")) or "item")
        if artifact is None:
            raise ArtifactError(f"get_dataitem needs a path or an fsspec URL, got {url!r}")
        return DataItem(artifact)

    def get_cached_artifact(self, key: str) -> Artifact:
        """An artifact this run logged, by key."""
        try:
            return self.artifacts[key]
        except KeyError:
            logged_keys = ", ".join(self.artifacts) or "none"
            raise ArtifactError(f"this run logged no artifact {key!r} (logged: {logged_keys})") from None

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
            key, content, kind=kind, filename=filename, artifact_path=artifact_path, target_path=target_path,
            labels=labels, format=None if logged.is_frame(content) else format, method="log_artifact",
        )

    def log_dataset(
        self,
        key: str,
        df: Any,
        tag: str = "",
        local_path: str | os.PathLike | None = None,
        artifact_path: str | None = None,
        upload: bool | None = True,
        labels: Mapping[str, Any] | None = None,
        format: str = "",
        preview: int | bool | None = None,
        stats: bool | None = None,
        db_key: Any = None,
        target_path: str | None = "",
        extra_data: Any = None,
        label_column: str | list[str] | None = None,
    ) -> Artifact:
        """Store a pandas DataFrame (parquet, or ``format="csv"``); it loads back as a DataFrame
        (``run.output(key)``, ``get_input(key).as_df()``).

        ``local_path``: its suffix picks the format and names the file; an existing file there is
        stored instead of ``df`` (as MLRun does). ``preview`` (rows) and ``stats`` are recorded in
        the artifact's metadata, with ``label_column`` and ``labels``.
        """
        logged.refuse("log_dataset", tag=tag, upload=upload, db_key=db_key, extra_data=extra_data)
        if not logged.is_frame(df):
            raise ArtifactError(
                f"log_dataset({key!r}) expects a pandas DataFrame, got {type(df).__name__}; store other values "
                f"with context.log_artifact"
            )
        filename = os.path.basename(os.fspath(local_path)) if local_path else None
        kind = logged.frame_kind(format or pathlib.PurePath(filename or "x.parquet").suffix, "log_dataset")
        meta = logged.dataset_meta(df, preview=preview, stats=stats, label_column=label_column)
        content: Any = df
        stored_kind = kind
        if local_path and os.path.isfile(local_path):  # the file written by the handler is the dataset
            content, stored_kind, filename = pathlib.Path(local_path), None, None
        artifact = self._put(
            key, content, kind=stored_kind, filename=filename, artifact_path=artifact_path,
            target_path=target_path, labels=labels, meta=meta, method="log_dataset",
        )
        if artifact.kind != kind:
            artifact = dataclasses.replace(artifact, kind=kind)
            self.artifacts[key] = artifact
        return artifact

    def log_model(
        self,
        key: str,
        body: Any = None,
        framework: str = "",
        tag: str = "",
        model_dir: str | os.PathLike | None = None,
        model_file: str | os.PathLike | None = None,
        algorithm: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
        artifact_path: str | None = None,
        upload: bool | None = True,
        labels: Mapping[str, Any] | None = None,
        inputs: list | None = None,
        outputs: list | None = None,
        feature_vector: str | None = None,
        feature_weights: list | None = None,
        training_set: Any = None,
        label_column: str | list[str] | None = None,
        extra_data: Any = None,
        db_key: Any = None,
    ) -> Artifact:
        """Store a model: ``body`` (bytes such as ``pickle.dumps(model)``, or the model object
        itself, stored by pickle), else the file ``model_file`` or the folder ``model_dir``.

        With a body, ``model_file`` names the stored file. ``framework``, ``algorithm``,
        ``metrics``, ``parameters``, ``labels`` and the input/output columns (``inputs``/``outputs``
        or read off ``training_set`` and ``label_column``) are recorded in the artifact's metadata,
        not as run results (as in MLRun; log results with ``log_results``).
        """
        logged.refuse(
            "log_model", tag=tag, upload=upload, db_key=db_key, extra_data=extra_data,
            feature_vector=feature_vector, feature_weights=feature_weights,
        )
        meta = logged.model_meta(
            framework=framework, algorithm=algorithm, metrics=metrics, parameters=parameters,
            model_file=model_file, label_column=label_column, inputs=inputs, outputs=outputs,
            training_set=training_set,
        )
        filename = None
        if body is not None:
            content: Any = body
            filename = os.path.basename(os.fspath(model_file)) if model_file else None
        elif model_dir is not None or model_file is not None:
            source = os.fspath(model_dir if model_dir is not None else model_file)
            if "://" in source or not os.path.exists(source):
                raise ArtifactError(
                    f"log_model({key!r}): {source!r} is not a local file or folder; write the model to a local "
                    f"file (or pass its bytes as body=)"
                )
            content = pathlib.Path(source)
        else:
            raise ArtifactError(f"log_model({key!r}) needs the model: body=, model_file= or model_dir=")
        return self._put(
            key, content, kind=None, filename=filename, artifact_path=artifact_path, target_path=None,
            labels=labels, meta=meta, method="log_model",
        )

    def _require_store(self) -> ArtifactStore:
        if self._store is None:
            raise ArtifactError("this context has no artifact store (it is not inside a run)")
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


for _name, _hint in NO_MEANING.items():
    setattr(Context, _name, _NoMeaning(_name, _hint))
