"""Hub function ``predict``: batch predictions of a stored model over a table, as a table artifact.

Inputs: ``model`` (a ``train-sklearn`` model artifact, or a pickle/joblib file of a fitted estimator)
and ``table`` (CSV or Parquet, or an earlier run's table artifact). The artifact ``predictions`` is
the table with a ``prediction`` column added (and one ``proba_<class>`` column per class with
``probabilities``); the model's own feature names pick the columns it reads, so extra columns
such as an id or the label pass through untouched. Rows are predicted ``batch_size`` at a time.
"""

from __future__ import annotations

import pickle
from typing import Any

import shoal


def load_model(item: shoal.DataItem) -> Any:
    """The fitted estimator in ``item``: a pickled artifact, a ``.joblib`` file or a pickle file."""
    if item.artifact.kind == "pickle":
        return item.artifact.load()
    if item.suffix == ".joblib":
        import joblib

        return joblib.load(item.local())
    with open(item.local(), "rb") as handle:
        return pickle.load(handle)


@shoal.function(
    name="predict",
    requirements=["pandas", "pyarrow", "scikit-learn"],
    description="Batch predictions of a stored model over a table, logged as a table artifact",
    labels={"category": "model-serving", "framework": "sklearn"},
)
def predict(
    ctx: shoal.Context,
    model: shoal.DataItem,
    table: shoal.DataItem,
    label_column: str | None = None,
    prediction_column: str = "prediction",
    probabilities: bool = False,
    batch_size: int = 10_000,
    format: str = "parquet",
) -> None:
    """Predict every row of ``table`` and log the table with its predictions as ``predictions``.

    ``label_column``, when the table has it, is left out of the features (and kept in the output).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if format not in ("parquet", "csv"):
        raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")
    import numpy as np
    import pandas as pd

    estimator = load_model(model)
    frame = table.as_df()
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise ValueError(
                f"the table lacks the model's feature columns {missing}; its columns are {list(map(str, frame.columns))}"
            )
        features = frame[list(names)]
    else:
        features = frame.drop(columns=[label_column]) if label_column in frame.columns else frame
    want_proba = probabilities and hasattr(estimator, "predict_proba")
    if probabilities and not want_proba:
        raise ValueError(f"probabilities=True but {type(estimator).__name__} has no predict_proba")
    predicted, proba = [], []
    for start in range(0, len(features), batch_size):
        batch = features.iloc[start : start + batch_size]
        predicted.append(estimator.predict(batch))
        if want_proba:
            proba.append(estimator.predict_proba(batch))
    output = frame.copy()
    output[prediction_column] = np.concatenate(predicted) if predicted else []
    if want_proba:
        values = np.concatenate(proba) if proba else np.empty((0, len(estimator.classes_)))
        columns = pd.DataFrame(values, columns=[f"proba_{value}" for value in estimator.classes_], index=output.index)
        output = pd.concat([output, columns], axis=1)
    ctx.log_dataset("predictions", output, format=format)
    ctx.log_result("rows", int(len(output)))
    if label_column is not None and label_column in frame.columns:
        ctx.log_result(
            "accuracy" if hasattr(estimator, "classes_") else "mean_absolute_error",
            _agreement(estimator, frame[label_column], output[prediction_column]),
        )


def _agreement(estimator: Any, label: Any, predicted: Any) -> float:
    """Share of correct predictions for a classifier, mean absolute error for a regressor."""
    if hasattr(estimator, "classes_"):
        return float((label.to_numpy() == predicted.to_numpy()).mean())
    return float((label - predicted).abs().mean())
