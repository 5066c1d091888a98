"""How MLRun's artifact keywords map onto a shoal artifact: where it goes, what it is, its metadata.

``Context.log_artifact``, ``log_dataset`` and ``log_model`` accept MLRun's arguments so that MLRun
handlers run unchanged. This module turns those arguments into a destination (store and path), a
packager kind and the metadata recorded with the artifact; arguments that mean nothing in shoal
(a Kubeflow viewer, a version tag, an artifact-table key) raise ``UnsupportedError`` naming the
shoal way, never pass silently.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from .artifacts import ArtifactStore
from .errors import ArtifactError, UnsupportedError

#: DataFrame formats by name (or file suffix) -> the packager kind that writes them
FRAME_KINDS = {"parquet": "pandas", "pq": "pandas", "csv": "csv"}

#: MLRun arguments with no meaning in shoal, and what to do instead
_REFUSED = {
    "tag": "artifacts are versioned by the run that logged them; read one back with run.artifacts[key] "
    "(or `shoal runs show <uid>`), and drop tag=",
    "viewer": "shoal has no Kubeflow viewers; drop viewer=",
    "db_key": "every artifact is recorded with its run under its key; drop db_key=",
    "upload": "shoal always writes artifacts to the project's artifact store; drop upload=False",
    "extra_data": "log each extra file or value with context.log_artifact under a key of its own",
    "feature_vector": "shoal has no feature store; record the vector's name with labels= or parameters=",
    "feature_weights": "shoal has no feature store; record the weights in parameters=",
}


def refuse(method: str, **given: Any) -> None:
    """UnsupportedError for the first argument given a value that has no meaning in shoal
    (MLRun's defaults pass: ``tag=""``, ``upload=True``, ``None``)."""
    for name, value in given.items():
        default = value in (None, True) if name == "upload" else value is None or value == ""
        if not default:
            raise UnsupportedError(f"{method}({name}=...) has no meaning in shoal: {_REFUSED[name]}")


def is_frame(value: Any) -> bool:
    cls = type(value)
    return cls.__module__.split(".")[0] == "pandas" and cls.__name__ == "DataFrame"


def frame_kind(format: str, method: str) -> str:
    """The packager kind for a DataFrame stored in ``format`` (a name or a suffix)."""
    name = format.lstrip(".").lower()
    try:
        return FRAME_KINDS[name]
    except KeyError:
        raise ArtifactError(
            f"{method}: a DataFrame is stored as parquet or csv, not {format!r}; pass format='parquet' or "
            f"format='csv' (or a local_path ending in .parquet or .csv)"
        ) from None


def check_format(format: str) -> str:
    """A recorded format: a short name such as ``txt`` or ``pkl`` (the artifacts table holds 64)."""
    text = str(format).lstrip(".")
    if not text or len(text) > 16 or not text.replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise ArtifactError(f"invalid artifact format {format!r}: use a short name such as 'csv', 'txt' or 'pkl'")
    return text


def check_labels(labels: Any, method: str) -> dict[str, str]:
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and k for k in labels):
        raise ArtifactError(f"{method}: labels= must map names to values, e.g. {{'framework': 'sklearn'}}")
    return {key: str(value) for key, value in labels.items()}


def destination(
    store: ArtifactStore, prefix: str, key: str, artifact_path: Any, target_path: Any
) -> tuple[ArtifactStore, str, bool]:
    """``(store, path, exact)``: where an artifact is written.

    Default: the run's folder. ``artifact_path``: a folder (a path or an fsspec URL; ``+/sub`` is
    ``sub`` below the run's folder, as MLRun reads it). ``target_path``: the exact file, written
    as named (``exact``: no suffix is added).
    """
    if target_path:
        text = os.fspath(target_path).rstrip("/")
        if "://" not in text:
            text = str(pathlib.Path(text).absolute())
        parent, _, name = text.rpartition("/")
        if not name:
            raise ArtifactError(f"target_path {target_path!r} names no file; give a file path or URL")
        return ArtifactStore(parent or "/"), name, True
    if artifact_path:
        text = os.fspath(artifact_path)
        if text.startswith("+/"):
            sub = text[2:].strip("/")
            return store, f"{prefix}/{sub}/{key}" if sub else f"{prefix}/{key}", False
        return ArtifactStore(text), key, False
    return store, f"{prefix}/{key}", False


def _json(name: str, value: Any, method: str) -> Any:
    from .context import to_json_value

    ok, converted = to_json_value(value)
    if not ok:
        raise ArtifactError(f"{method}: {name}= must hold JSON values (numbers, text, lists, mappings)")
    return converted


def dataset_meta(df: Any, *, preview: Any, stats: Any, label_column: Any) -> dict[str, Any]:
    """A dataset's metadata: a preview of its first rows and per-column statistics when asked for."""
    import json

    meta: dict[str, Any] = {"category": "dataset"}
    if preview:
        rows = 20 if preview is True else int(preview)
        meta["preview"] = json.loads(df.head(rows).to_json(orient="records", date_format="iso"))
    if stats:
        described = df.iloc[:, :100].describe(include="all")
        meta["stats"] = json.loads(described.to_json(date_format="iso"))
    if label_column is not None:
        meta["label_column"] = _json("label_column", label_column, "log_dataset")
    return meta


def _schema(frame: Any, columns: list[str]) -> list[dict[str, str]]:
    return [{"name": str(column), "value_type": str(frame[column].dtype)} for column in columns]


def model_meta(
    *,
    framework: str,
    algorithm: Any,
    metrics: Any,
    parameters: Any,
    model_file: Any,
    label_column: Any,
    inputs: Any,
    outputs: Any,
    training_set: Any,
) -> dict[str, Any]:
    """A model's metadata: framework, algorithm, metrics, parameters, and its input and output
    columns (given, or read off ``training_set`` with ``label_column`` as the outputs)."""
    method = "log_model"
    meta: dict[str, Any] = {"category": "model"}
    if framework:
        meta["framework"] = str(framework)
    if algorithm:
        meta["algorithm"] = str(algorithm)
    meta["metrics"] = _json("metrics", dict(metrics or {}), method)
    meta["parameters"] = _json("parameters", dict(parameters or {}), method)
    if model_file:
        meta["model_file"] = os.path.basename(os.fspath(model_file))
    if label_column is not None:
        meta["label_column"] = _json("label_column", label_column, method)
    if training_set is not None:
        if inputs:
            raise ArtifactError("log_model: give inputs= or training_set=, not both")
        if not is_frame(training_set):
            raise ArtifactError("log_model: training_set= must be a pandas DataFrame")
        labels = [label_column] if isinstance(label_column, str) else list(label_column or [])
        meta["inputs"] = _schema(training_set, [c for c in training_set.columns if c not in labels])
        meta["outputs"] = _schema(training_set, [c for c in labels if c in training_set.columns])
    else:
        if inputs:
            meta["inputs"] = _json("inputs", inputs, method)
        if outputs:
            meta["outputs"] = _json("outputs", outputs, method)
    return meta
