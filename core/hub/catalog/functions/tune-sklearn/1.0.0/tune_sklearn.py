"""Hub function ``tune-sklearn``: the objective of an Optuna search over an estimator's parameters.

Run it through ``shoal.tune``: the search space names the estimator's own parameters (any keyword
the handler does not take itself goes to the estimator), constants fix the rest, and each trial
cross-validates ``model_class`` with the trial's values on the ``dataset`` input. A trial logs
``cv_score`` (the mean fold score, larger is better as scikit-learn scorers are; search with
``objective="max.cv_score"``), reports the running mean after every fold so Optuna's pruner can
stop a poor trial early, and logs the estimator refit on the whole table as ``model``: the best
trial's ``model`` artifact is the tuned model.

    shoal.tune(fn, {"model_class": "sklearn.ensemble.RandomForestClassifier",
                    "n_estimators": Int(10, 200), "max_depth": Int(2, 12)},
               objective="max.cv_score", n_trials=30, inputs={"dataset": "train.csv"})
"""

from __future__ import annotations

import importlib
from typing import Any

import shoal


def estimator_class(path: str) -> type:
    """The class at ``path`` (``package.module.Class``); a clear error when it is not an estimator."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"model_class must be a full import path such as 'sklearn.svm.SVC', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model_class {path!r}: cannot import module {module_name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not hasattr(cls, "fit"):
        raise ValueError(f"model_class {path!r} is not an estimator class (a class with fit) in {module_name!r}")
    return cls


def fit(model: Any, features: Any, label: Any, model_class: str) -> Any:
    """``model.fit``; a table with text columns the estimator cannot take gets an error naming them."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    try:
        return model.fit(features, label)
    except ValueError as exc:
        text = [str(n) for n in features.columns if not (is_numeric_dtype(features[n]) or is_bool_dtype(features[n]))]
        if not text:
            raise
        raise ValueError(
            f"{model_class} cannot fit the table ({exc}): the feature columns {text} are not numeric; "
            f"leave them out with feature_columns=[...] or encode them before training"
        ) from None


@shoal.function(
    name="tune-sklearn",
    requirements=["pandas", "pyarrow", "scikit-learn", "optuna"],
    description="Optuna search over a scikit-learn estimator's parameters through shoal.tune (cross-validated objective)",
    labels={"category": "training", "framework": "sklearn"},
)
def tune_sklearn(
    ctx: shoal.Context,
    dataset: shoal.DataItem,
    model_class: str = "sklearn.ensemble.RandomForestClassifier",
    label_column: str = "label",
    model_params: dict | None = None,
    feature_columns: list[str] | None = None,
    cv: int = 3,
    scoring: str | None = None,
    **search_params: Any,
) -> None:
    """Cross-validate ``model_class(**model_params, **search_params)`` on ``dataset``; log
    ``cv_score`` (and ``cv_score_std``) and the model refit on the whole table as ``model``.

    ``cv``: number of folds (stratified for classifiers); ``scoring``: a scikit-learn scorer name
    (default: the estimator's own ``score``, accuracy or R2).
    """
    if cv < 2:
        raise ValueError(f"cv must be at least 2 folds, got {cv}")
    import numpy as np
    from sklearn.base import clone, is_classifier
    from sklearn.metrics import check_scoring
    from sklearn.model_selection import check_cv

    params = {**(model_params or {}), **search_params}
    cls = estimator_class(model_class)
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ValueError(f"the parameters {sorted(params)} do not fit {model_class}: {exc}") from None
    frame = dataset.as_df()
    if label_column not in frame.columns:
        raise ValueError(
            f"label_column {label_column!r} is not a column of the table; its columns are {list(map(str, frame.columns))}"
        )
    missing = [name for name in feature_columns or [] if name not in frame.columns]
    if missing:
        raise ValueError(f"feature_columns {missing} are not columns of the table")
    features = frame[feature_columns or [name for name in frame.columns if name != label_column]]
    label = frame[label_column]
    scorer = check_scoring(estimator, scoring=scoring)
    folds = check_cv(cv, label, classifier=is_classifier(estimator))
    scores: list[float] = []
    for step, (train_rows, test_rows) in enumerate(folds.split(features, label)):
        fold_model = fit(clone(estimator), features.iloc[train_rows], label.iloc[train_rows], model_class)
        scores.append(float(scorer(fold_model, features.iloc[test_rows], label.iloc[test_rows])))
        ctx.report(float(np.mean(scores)), step)  # a tuning pruner may stop the trial here
    ctx.log_results({"cv_score": float(np.mean(scores)), "cv_score_std": float(np.std(scores)), "params": params})
    ctx.log_model(
        "model",
        body=fit(estimator, features, label, model_class),
        model_file="model.pkl",
        framework="sklearn",
        algorithm=model_class,
    )
