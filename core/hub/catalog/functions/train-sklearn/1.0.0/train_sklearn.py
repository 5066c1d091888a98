"""Hub function ``train-sklearn``: fit any scikit-learn estimator, named by its class path, on a table.

``model_class`` is an import path (``sklearn.ensemble.RandomForestClassifier``, or any estimator
with scikit-learn's API such as ``xgboost.XGBClassifier``) and ``model_params`` its keyword
arguments. The fitted model is logged as the artifact ``model`` (pickled, with its class, parameters,
features and metrics in the artifact's metadata); metrics on the training table, and on the
``test`` table when one is given, are logged as results (``train_accuracy``, ``accuracy``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

import shoal


def estimator_class(path: str) -> type:
    """The class at ``path`` (``package.module.Class``); a clear error when it is not an estimator."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"model_class must be a full import path such as 'sklearn.linear_model.LogisticRegression', got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model_class {path!r}: cannot import module {module_name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not hasattr(cls, "fit"):
        raise ValueError(f"model_class {path!r} is not an estimator class (a class with fit) in {module_name!r}")
    return cls


def features_and_label(frame: Any, label_column: str, feature_columns: list[str] | None) -> tuple[Any, Any]:
    """``(X, y)`` from ``frame``: the named features (default: every column but the label) and the label."""
    if label_column not in frame.columns:
        raise ValueError(
            f"label_column {label_column!r} is not a column of the table; its columns are {list(map(str, frame.columns))}"
        )
    features = feature_columns or [name for name in frame.columns if name != label_column]
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise ValueError(f"feature_columns {missing} are not columns of the table")
    return frame[features], frame[label_column]


def fit(model: Any, features: Any, label: Any, model_class: str) -> Any:
    """``model.fit``; a table with text columns the estimator cannot take gets an error naming them."""
    try:
        return model.fit(features, label)
    except ValueError as exc:
        text = [str(name) for name in features.columns if not is_numeric(features[name])]
        if not text:
            raise
        raise ValueError(
            f"{model_class} cannot fit the table ({exc}): the feature columns {text} are not numeric; "
            f"leave them out with feature_columns=[...] or encode them before training"
        ) from None


def is_numeric(column: Any) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return bool(is_numeric_dtype(column) or is_bool_dtype(column))


def as_frame(value: Any) -> Any:
    """A DataFrame from an input however it arrives: a DataItem, a DataFrame, or a local file path
    (an optional input's ``DataItem | None`` hint is handed the loaded value)."""
    if hasattr(value, "as_df"):
        return value.as_df()
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return value
    path = str(value)
    return pd.read_parquet(path) if path.endswith((".parquet", ".pq")) else pd.read_csv(path)


def score(model: Any, features: Any, label: Any) -> dict[str, float]:
    """Classification metrics (accuracy, macro F1, ROC AUC where probabilities exist) or regression
    metrics (R2, MAE, RMSE), by what kind of estimator ``model`` is."""
    import numpy as np
    from sklearn import metrics
    from sklearn.base import is_classifier

    predicted = model.predict(features)
    if not is_classifier(model):
        return {
            "r2": float(metrics.r2_score(label, predicted)),
            "mae": float(metrics.mean_absolute_error(label, predicted)),
            "rmse": float(np.sqrt(metrics.mean_squared_error(label, predicted))),
        }
    found = {
        "accuracy": float(metrics.accuracy_score(label, predicted)),
        "f1": float(metrics.f1_score(label, predicted, average="macro")),
    }
    if hasattr(model, "predict_proba") and len(np.unique(label)) > 1:
        probabilities = model.predict_proba(features)
        if probabilities.shape[1] == 2:
            found["roc_auc"] = float(metrics.roc_auc_score(label, probabilities[:, 1]))
        else:
            found["roc_auc"] = float(
                metrics.roc_auc_score(label, probabilities, multi_class="ovr", labels=model.classes_)
            )
    return found


@shoal.function(
    name="train-sklearn",
    requirements=["pandas", "pyarrow", "scikit-learn"],
    description="Fit any scikit-learn estimator (by class path and parameters) on a table; metrics and the model as artifacts",
    labels={"category": "training", "framework": "sklearn"},
)
def train_sklearn(
    ctx: shoal.Context,
    dataset: shoal.DataItem,
    model_class: str = "sklearn.ensemble.RandomForestClassifier",
    model_params: dict | None = None,
    label_column: str = "label",
    feature_columns: list[str] | None = None,
    test: shoal.DataItem | None = None,
) -> None:
    """Fit ``model_class(**model_params)`` on ``dataset``; log metrics and the model ``model``.

    Metrics on the training table are results prefixed ``train_``; with a ``test`` table its
    metrics are results under their own names (``accuracy``, ``f1``, ``roc_auc``; ``r2``, ``mae``,
    ``rmse`` for regressors).
    """
    cls = estimator_class(model_class)
    params = dict(model_params or {})
    try:
        model = cls(**params)
    except TypeError as exc:
        raise ValueError(f"model_params do not fit {model_class}: {exc}") from None
    table = dataset.as_df()
    features, label = features_and_label(table, label_column, feature_columns)
    fit(model, features, label, model_class)
    found = {f"train_{key}": value for key, value in score(model, features, label).items()}
    if test is not None:
        test_features, test_label = features_and_label(as_frame(test), label_column, list(features.columns))
        found.update(score(model, test_features, test_label))
    ctx.log_results(found)
    ctx.log_model(
        "model",
        body=model,
        model_file="model.pkl",
        framework="sklearn",
        algorithm=model_class,
        metrics=found,
        parameters={
            key: repr(value) if not isinstance(value, (int, float, str, bool, type(None))) else value
            for key, value in params.items()
        },
        training_set=table,
        label_column=label_column,
    )
