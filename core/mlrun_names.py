"""MLRun's ``MLClientCtx`` names on ``shoal.Context``, so handlers written for MLRun run unchanged.

``MLRunNames`` is a mixin that ``Context`` inherits: the names that mean the same in shoal
(``log_dataset``, ``log_model``, ``get_input``, ``get_dataitem``, ``get_secret``, ``set_label``,
``artifact_path``, ...) are implemented here on top of the Context's own state; the names with no
meaning in shoal (``NO_MEANING``) raise ``UnsupportedError`` naming the shoal way. Shoal's own API
(``log_result``, ``log_metric``, ``log_artifact``, ``report``, ...) stays in ``shoal.context``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from . import artifact_logging as logged
from .artifacts import Artifact, ArtifactStore, reference
from .data_item import DataItem
from .errors import ArtifactError, UnsupportedError

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
    "commit": "shoal records everything the handler logged when the run ends (also when it fails); remove the call",
    "update_artifact": "logged artifacts never change; log the new value with context.log_artifact under the same key",
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


class MLRunNames:
    """MLRun's MLClientCtx names on shoal.Context (a mixin: ``Context`` holds the state they read)."""

    # The Context state these names read and write (set by ``Context.__init__``).
    function: str
    params: dict[str, Any]
    inputs: dict[str, Artifact]
    artifacts: dict[str, Artifact]
    labels_set: dict[str, str]
    _labels: dict[str, str]
    _secrets: dict[str, str]
    _prefix: str
    _require_store: Callable[[], ArtifactStore]
    _put: Callable[..., Artifact]

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
        stored_kind: str | None = kind
        if local_path and os.path.isfile(local_path):  # the file written by the handler is the dataset
            content, stored_kind, filename = pathlib.Path(local_path), None, None
        artifact = self._put(
            key,
            content,
            kind=stored_kind,
            filename=filename,
            artifact_path=artifact_path,
            target_path=target_path,
            labels=labels,
            meta=meta,
            method="log_dataset",
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
            "log_model",
            tag=tag,
            upload=upload,
            db_key=db_key,
            extra_data=extra_data,
            feature_vector=feature_vector,
            feature_weights=feature_weights,
        )
        meta = logged.model_meta(
            framework=framework,
            algorithm=algorithm,
            metrics=metrics,
            parameters=parameters,
            model_file=model_file,
            label_column=label_column,
            inputs=inputs,
            outputs=outputs,
            training_set=training_set,
        )
        filename = None
        if body is not None:
            content: Any = body
            filename = os.path.basename(os.fspath(model_file)) if model_file else None
        elif (model_path := model_dir if model_dir is not None else model_file) is not None:
            source = os.fspath(model_path)
            if "://" in source or not os.path.exists(source):
                raise ArtifactError(
                    f"log_model({key!r}): {source!r} is not a local file or folder; write the model to a local "
                    f"file (or pass its bytes as body=)"
                )
            content = pathlib.Path(source)
        else:
            raise ArtifactError(f"log_model({key!r}) needs the model: body=, model_file= or model_dir=")
        return self._put(
            key,
            content,
            kind=None,
            filename=filename,
            artifact_path=artifact_path,
            target_path=None,
            labels=labels,
            meta=meta,
            method="log_model",
        )


for _name, _hint in NO_MEANING.items():
    setattr(MLRunNames, _name, _NoMeaning(_name, _hint))
