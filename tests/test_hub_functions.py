"""The functions shipped in shoal's hub (describe, split, train-sklearn, evaluate, predict,
tune-sklearn), loaded by ``hub://`` reference and verified, on local, Dask and Ray; and a pipeline
built only from them.

Each function is checked against the same computation done here with pandas / scikit-learn on
``tests/data/hub_classification.csv`` (120 rows, four features, a balanced binary ``label``).
"""

from __future__ import annotations

import io
import pathlib
import pickle

import pytest

import shoal
from shoal.tuning import Float

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from sklearn.linear_model import LogisticRegression  # noqa: E402  (after the skips above)
from sklearn.metrics import accuracy_score, confusion_matrix  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "hub_classification.csv"
CATALOG = pathlib.Path(shoal.__file__).parent / "hub" / "catalog" / "functions"
SHIPPED = {
    "describe": ("describe.py", "describe"),
    "split": ("split.py", "split"),
    "train-sklearn": ("train_sklearn.py", "train_sklearn"),
    "evaluate": ("evaluate.py", "evaluate"),
    "predict": ("predict.py", "predict"),
    "tune-sklearn": ("tune_sklearn.py", "tune_sklearn"),
}
FEATURES = ["f1", "f2", "f3", "f4"]


def is_png(data: bytes) -> bool:
    """Bytes matplotlib reads back as an image with pixels."""
    import matplotlib.image

    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    return pixels.shape[0] > 10 and pixels.shape[1] > 10


def completed(run: shoal.Run) -> shoal.Run:
    assert run.state == "completed", run.error
    return run


@pytest.fixture(scope="module")
def table():
    return pd.read_csv(DATA)


@pytest.fixture
def halves(tmp_path, table):
    """The table split in two CSV files (even rows / odd rows) and a model fitted on the first."""
    train, test = table.iloc[::2].reset_index(drop=True), table.iloc[1::2].reset_index(drop=True)
    train_path, test_path = tmp_path / "train.csv", tmp_path / "test.csv"
    train.to_csv(train_path, index=False)
    test.to_csv(test_path, index=False)
    model = LogisticRegression(C=0.5).fit(train[FEATURES], train["label"])
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(pickle.dumps(model))
    return {"train": train_path, "test": test_path, "model": model_path, "fitted": model, "test_frame": test}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_catalog_documents_match_their_sources(project, name):
    """function.yaml is what the source file builds to (same hash, requirements declared), and the
    hub import is verified and labelled with its resolved reference."""
    file, handler = SHIPPED[name]
    from_source = shoal.Function.from_file(CATALOG / name / "1.0.0" / file, handler)
    from_hub = shoal.Function.from_hub(f"hub://{name}")
    assert from_hub.name == from_source.name == name
    assert from_hub.hash == from_source.hash
    assert from_hub.labels["hub"] == f"hub://shoal/{name}:1.0.0@{from_source.hash}"
    assert "pandas" in from_hub.spec.requirements and from_hub.description


def test_describe(project, engine, table):
    run = completed(
        shoal.Function.from_hub("describe").run(
            {"label_column": "label", "bins": 10}, inputs={"table": DATA}, backend=engine
        )
    )
    assert run.results["rows"] == 120 and run.results["columns"] == 5
    assert run.results["missing"] == {name: 0 for name in [*FEATURES, "label"]}
    assert run.results["class_counts"] == {"0": 60, "1": 60}
    summary = run.artifacts["summary"].load().set_index("column")
    assert summary.loc["f2", "mean"] == pytest.approx(table["f2"].mean())
    assert summary.loc["f3", "max"] == pytest.approx(table["f3"].max())
    correlation = run.artifacts["correlation"].load().set_index("column")
    assert correlation.loc["f1", "f3"] == pytest.approx(table["f1"].corr(table["f3"]))
    assert is_png(run.artifacts["correlation_png"].load())
    assert {f"hist_{name}" for name in FEATURES} <= set(run.artifacts)
    assert all(is_png(run.artifacts[f"hist_{name}"].load()) for name in FEATURES)


def test_split(project, engine, table):
    run = completed(
        shoal.Function.from_hub("split").run(
            {"test_size": 0.25, "label_column": "label", "random_state": 3}, inputs={"table": DATA}, backend=engine
        )
    )
    train, test = run.artifacts["train"].load(), run.artifacts["test"].load()
    assert run.results == {"train_rows": 90, "test_rows": 30}
    assert (len(train), len(test)) == (90, 30)
    assert test["label"].value_counts().to_dict() == {0: 15, 1: 15}  # stratified
    rebuilt = pd.concat([train, test]).sort_values(FEATURES).reset_index(drop=True)
    assert rebuilt.equals(table.sort_values(FEATURES).reset_index(drop=True))


def test_train_sklearn(project, engine, halves):
    run = completed(
        shoal.Function.from_hub("train-sklearn").run(
            {"model_class": "sklearn.linear_model.LogisticRegression", "model_params": {"C": 0.5, "max_iter": 300}},
            inputs={"dataset": halves["train"], "test": halves["test"]},
            backend=engine,
        )
    )
    model = run.artifacts["model"].load()
    assert isinstance(model, LogisticRegression) and model.C == 0.5 and model.max_iter == 300
    test = halves["test_frame"]
    assert run.results["accuracy"] == pytest.approx(model.score(test[FEATURES], test["label"]))
    assert 0.5 < run.results["train_accuracy"] <= 1 and 0.5 < run.results["roc_auc"] <= 1
    assert run.artifacts["model"].meta["algorithm"] == "sklearn.linear_model.LogisticRegression"


def test_evaluate(project, engine, halves):
    run = completed(
        shoal.Function.from_hub("evaluate").run(
            {"label_column": "label"}, inputs={"model": halves["model"], "test": halves["test"]}, backend=engine
        )
    )
    test, model = halves["test_frame"], halves["fitted"]
    predicted = model.predict(test[FEATURES])
    assert run.results["accuracy"] == pytest.approx(accuracy_score(test["label"], predicted))
    assert run.results["confusion_matrix"] == confusion_matrix(test["label"], predicted).tolist()
    assert run.results["classes"] == [0, 1] and 0.5 < run.results["roc_auc"] <= 1
    assert is_png(run.artifacts["confusion_matrix_png"].load()) and is_png(run.artifacts["roc_curve_png"].load())


def test_predict(project, engine, halves):
    run = completed(
        shoal.Function.from_hub("predict").run(
            {"probabilities": True, "label_column": "label", "batch_size": 7},
            inputs={"model": halves["model"], "table": halves["test"]},
            backend=engine,
        )
    )
    out, test, model = run.artifacts["predictions"].load(), halves["test_frame"], halves["fitted"]
    assert out["prediction"].tolist() == model.predict(test[FEATURES]).tolist()
    assert out[["proba_0", "proba_1"]].to_numpy() == pytest.approx(model.predict_proba(test[FEATURES]))
    assert out[FEATURES + ["label"]].equals(test)  # the table's columns pass through
    assert run.results["rows"] == 60
    assert run.results["accuracy"] == pytest.approx(model.score(test[FEATURES], test["label"]))


def test_tune_sklearn(project, engine, halves):
    fn = shoal.Function.from_hub("tune-sklearn")
    result = shoal.tune(
        fn,
        {"model_class": "sklearn.linear_model.LogisticRegression", "C": Float(0.01, 10, log=True), "cv": 3},
        objective="max.cv_score",
        n_trials=3,
        inputs={"dataset": halves["train"]},
        backend=engine,
        seed=5,
    )
    done = [trial for trial in result.trials if trial["state"] == "complete"]
    assert len(done) == 3 and result.best_value == max(trial["values"][0] for trial in done)
    assert result.best_value == pytest.approx(result.best_run.results["cv_score"])
    best = result.best_run.artifacts["model"].load()
    assert isinstance(best, LogisticRegression) and best.C == pytest.approx(result.best_params["C"])
    assert [step for step, _ in result.best_run.metrics["objective"]] == [0, 1, 2]  # one report per fold


def test_bad_input_is_a_failed_run_naming_the_field(project, tmp_path, table):
    """A wrong class path, label column or a text feature fails the run with an error that names
    it and the fix, and logs no artifact."""
    train = shoal.Function.from_hub("train-sklearn")
    run = train.run({"model_class": "sklearn.nowhere.Model"}, inputs={"dataset": DATA}, backend="local")
    assert run.state == "failed" and "model_class 'sklearn.nowhere.Model'" in run.error["message"]
    assert "model" not in run.artifacts
    run = shoal.Function.from_hub("split").run({"label_column": "target"}, inputs={"table": DATA}, backend="local")
    assert run.state == "failed" and "label_column 'target'" in run.error["message"]
    assert "train" not in run.artifacts and "label" in run.error["message"]
    table.assign(city=["Oslo", "Lima"] * 60).to_csv(tmp_path / "text.csv", index=False)
    run = train.run({"model_class": "sklearn.svm.SVC"}, inputs={"dataset": tmp_path / "text.csv"}, backend="local")
    assert run.state == "failed" and "feature columns ['city'] are not numeric" in run.error["message"]
    assert "feature_columns=" in run.error["message"] and "model" not in run.artifacts


def test_pipeline_of_hub_functions(project, engine):
    """split -> train-sklearn -> evaluate, every step a hub function; a rerun is all cached."""
    split, train, evaluate = (shoal.Function.from_hub(name) for name in ("split", "train-sklearn", "evaluate"))

    @shoal.pipeline
    def classify(table: str, model_class: str = "sklearn.ensemble.RandomForestClassifier", trees: int = 20):
        parts = split.submit({"label_column": "label", "test_size": 0.3}, inputs={"table": table})
        model = train.submit(
            {"model_class": model_class, "model_params": {"n_estimators": trees, "random_state": 0}},
            inputs={"dataset": parts.output("train")},
        )
        return evaluate.submit({}, inputs={"model": model.output("model"), "test": parts.output("test")})

    run = classify.run({"table": str(DATA)}, backend=engine, project=project)
    assert run.state == "completed", run.error
    assert run.results["steps"] == {"completed": 3}
    steps = {step.function: step for step in project.store.list_runs(parent=run.uid)}
    assert set(steps) == {"split", "train-sklearn", "evaluate"}
    scored = steps["evaluate"]
    assert 0.5 < scored.results["accuracy"] <= 1 and sum(map(sum, scored.results["confusion_matrix"])) == 36
    again = classify.run({"table": str(DATA)}, backend=engine, project=project)
    assert again.results["steps"] == {"cached": 3}


def test_regressor_train_evaluate_predict(project, halves):
    """A regressor takes the regression paths: R2/MAE/RMSE, a predicted-vs-actual PNG, and the
    model's own feature names pick the columns predict reads (the label passes through)."""
    from sklearn.metrics import mean_absolute_error, r2_score

    trained = completed(
        shoal.Function.from_hub("train-sklearn").run(
            {"model_class": "sklearn.linear_model.Ridge", "label_column": "f4", "feature_columns": ["f1", "f2", "f3"]},
            inputs={"dataset": halves["train"], "test": halves["test"]},
            backend="local",
        )
    )
    model, test = trained.artifacts["model"].load(), halves["test_frame"]
    predicted = model.predict(test[["f1", "f2", "f3"]])
    assert trained.results["r2"] == pytest.approx(r2_score(test["f4"], predicted))
    scored = completed(
        shoal.Function.from_hub("evaluate").run(
            {"label_column": "f4"},
            inputs={"model": trained.artifacts["model"], "test": halves["test"]},
            backend="local",
        )
    )
    assert scored.results["mae"] == pytest.approx(mean_absolute_error(test["f4"], predicted))
    assert is_png(scored.artifacts["predicted_vs_actual_png"].load())
    batch = completed(
        shoal.Function.from_hub("predict").run(
            {"label_column": "f4"},
            inputs={"model": trained.artifacts["model"], "table": halves["test"]},
            backend="local",
        )
    )
    assert batch.artifacts["predictions"].load()["prediction"].to_numpy() == pytest.approx(predicted)
    assert batch.results["mean_absolute_error"] == pytest.approx(mean_absolute_error(test["f4"], predicted))
