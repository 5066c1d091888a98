"""Hub function ``evaluate``: a stored model's metrics on a table, with confusion-matrix and ROC PNGs.

Inputs: ``model`` (a ``train-sklearn`` model artifact, or a pickle/joblib file of a fitted estimator)
and ``test`` (a CSV or Parquet table, or a ``split`` artifact). Classifiers: accuracy, precision,
recall, F1 (macro), ROC AUC, the confusion matrix as a result and as ``confusion_matrix.png``, and
``roc_curve.png`` (one-vs-rest curves for several classes). Regressors: R2, MAE, RMSE and
``predicted_vs_actual.png``. Figures are drawn on matplotlib's Agg canvas without pyplot.
"""

from __future__ import annotations

import io
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


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def confusion_png(matrix: Any, classes: list[str]) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes)
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("confusion matrix")
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in ticks:
        for column in ticks:
            value = matrix[row, column]
            axes.text(
                column, row, str(value), ha="center", va="center", color="white" if value > threshold else "black"
            )
    return _png(figure)


def roc_png(label: Any, probabilities: Any, classes: list[Any]) -> bytes:
    """ROC curves from scikit-learn's ``roc_curve``: the positive class, or each class against the rest."""
    from matplotlib.figure import Figure
    from sklearn.metrics import auc, roc_curve

    figure = Figure(figsize=(4.5, 4))
    axes = figure.add_subplot()
    pairs = [(classes[1], probabilities[:, 1])] if len(classes) == 2 else list(zip(classes, probabilities.T))
    for positive, scores in pairs:
        false_positive, true_positive, _ = roc_curve(label == positive, scores)
        axes.plot(false_positive, true_positive, label=f"{positive} (AUC {auc(false_positive, true_positive):.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("ROC curve")
    axes.legend(loc="lower right")
    return _png(figure)


def scatter_png(actual: Any, predicted: Any) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4))
    axes = figure.add_subplot()
    axes.scatter(actual, predicted, s=10)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    axes.plot([low, high], [low, high], linestyle="--", color="grey")
    axes.set_xlabel("actual")
    axes.set_ylabel("predicted")
    axes.set_title("predicted vs actual")
    return _png(figure)


@shoal.function(
    name="evaluate",
    requirements=["pandas", "pyarrow", "scikit-learn", "matplotlib"],
    description="Metrics of a stored model on a table, with confusion matrix and ROC curve PNGs",
    labels={"category": "model-testing", "framework": "sklearn"},
)
def evaluate(ctx: shoal.Context, model: shoal.DataItem, test: shoal.DataItem, label_column: str = "label") -> None:
    """Log the model's metrics on ``test`` as results and its figures as PNG artifacts."""
    import numpy as np
    from sklearn import metrics
    from sklearn.base import is_classifier

    estimator = load_model(model)
    frame = test.as_df()
    if label_column not in frame.columns:
        raise ValueError(
            f"label_column {label_column!r} is not a column of the test table; its columns are {list(map(str, frame.columns))}"
        )
    names = getattr(estimator, "feature_names_in_", None)
    features = frame[list(names)] if names is not None else frame.drop(columns=[label_column])
    label = frame[label_column].to_numpy()
    predicted = estimator.predict(features)
    if not is_classifier(estimator):
        ctx.log_results(
            {
                "r2": float(metrics.r2_score(label, predicted)),
                "mae": float(metrics.mean_absolute_error(label, predicted)),
                "rmse": float(np.sqrt(metrics.mean_squared_error(label, predicted))),
            }
        )
        ctx.log_artifact(
            "predicted_vs_actual_png", body=scatter_png(label, predicted), local_path="predicted_vs_actual.png"
        )
        return
    classes = list(getattr(estimator, "classes_", np.unique(label)))
    ctx.log_results(
        {
            "accuracy": float(metrics.accuracy_score(label, predicted)),
            "precision": float(metrics.precision_score(label, predicted, average="macro", zero_division=0)),
            "recall": float(metrics.recall_score(label, predicted, average="macro", zero_division=0)),
            "f1": float(metrics.f1_score(label, predicted, average="macro", zero_division=0)),
        }
    )
    matrix = metrics.confusion_matrix(label, predicted, labels=classes)
    ctx.log_result("confusion_matrix", matrix.tolist())
    ctx.log_result("classes", [value.item() if hasattr(value, "item") else value for value in classes])
    ctx.log_artifact(
        "confusion_matrix_png", body=confusion_png(matrix, [str(c) for c in classes]), local_path="confusion_matrix.png"
    )
    if hasattr(estimator, "predict_proba") and len(np.unique(label)) > 1:
        probabilities = estimator.predict_proba(features)
        if len(classes) == 2:
            ctx.log_result("roc_auc", float(metrics.roc_auc_score(label, probabilities[:, 1])))
        else:
            ctx.log_result(
                "roc_auc", float(metrics.roc_auc_score(label, probabilities, multi_class="ovr", labels=classes))
            )
        ctx.log_artifact("roc_curve_png", body=roc_png(label, probabilities, classes), local_path="roc_curve.png")
