"""MLRun handlers run on shoal as written.

``my_job`` below follows the handler of MLRun's "MLRun execution context" documentation page: a
first parameter named ``context``, the run's name and uid, a secret, an input file, results, a
label, artifacts from a body and from a local file, and a DataFrame logged as a dataset. It runs
unchanged on the local backend and on the session's real Dask and Ray backends, and from the
command line; only ``mlrun.run_function`` is replaced by ``fn.run``. (The page's Plotly artifact is
left out: it needs MLRun's own artifact class.)
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid

import pandas as pd
import pytest

import shoal
from shoal.artifacts import ArtifactStore
from shoal.context import NO_MEANING
from shoal.errors import ArtifactError, ParamError, UnsupportedError

SECRET = "key-" + uuid.uuid4().hex  # unique, so finding it in a log is a leak

HANDLERS = '''
import pandas as pd

import shoal


def my_job(context, p1=1, p2="x", workdir="."):
    # what the run is, and what it was given: a secret and an input file
    context.logger.info("my_job starting", p2=p2)
    print(f"Run: {context.name} (uid={context.uid})")
    print(f"Params: p1={p1}, p2={p2}")
    print("accesskey = {}".format(context.get_secret("ACCESS_KEY")))
    print("file\\n{}\\n".format(context.get_input("infile.txt", "infile.txt").get()))

    # scalar results and a label of the run
    context.log_result("accuracy", p1 * 2)
    context.log_results({"loss": p1 * 3, "p2": p2})
    context.set_label("framework", "sklearn")

    # artifacts: bodies named by a file name, and a file the job wrote
    context.log_artifact(
        "model",
        body=b"abc is 123",
        local_path="model.txt",
        labels={"framework": "xgboost"},
    )
    context.log_artifact("html_result", body=b"<b> Some HTML <b>", local_path="result.html")
    # (the page writes to the working folder, which on a worker is the engine's: ``workdir`` keeps
    # the file in the test's own folder)
    summary = f"{workdir}/summary-{context.uid}.csv"
    with open(summary, "w") as handle:
        handle.write("metric,value\\naccuracy,%d\\n" % (p1 * 2))
    context.log_artifact("summary", local_path=summary)

    # a table
    visits = {
        "city": ["Oslo", "Lima", "Pune", "Baku", "Nice"],
        "country": ["NO", "PE", "IN", "AZ", "FR"],
        "year": [2019, 2020, 2021, 2022, 2023],
        "visits": [31, 87, 45, 12, 66],
    }
    df = pd.DataFrame(visits, columns=["city", "country", "year", "visits"])
    context.log_dataset("mydf", df=df, stats=True)


def reads(context, table: shoal.DataItem):
    raw = context.get_input("raw.bin")
    with open(raw.local(), "rb") as handle:
        local_bytes = handle.read()
    return {
        "raw_get": raw.get().decode(),
        "raw_slice": raw.get(size=3, offset=2, encoding="utf-8"),
        "raw_local": local_bytes.decode(),
        "raw_key": raw.key,
        "raw_url_ok": raw.url.startswith("file://"),
        "csv_total": int(context.get_input("data.csv").as_df()["b"].sum()),
        "csv_suffix": context.get_input("data.csv").suffix,
        "frame": context.get_input("frame").as_df().to_dict("list"),
        "table_columns": list(table.as_df().columns),
    }


def trains(context, n: int = 3):
    context.logger.info("training on %d rows", n, seed=7)
    model = {"weights": list(range(n))}
    context.log_model(
        "clf",
        body=model,
        framework="sklearn",
        algorithm="ridge",
        metrics={"accuracy": 0.75},
        parameters={"n": n},
        labels={"team": "ml"},
    )
    return {"iteration": context.iteration, "project": context.project, "n": context.get_param("n")}


def asks_the_store(context):
    return context.get_store_resource("store://artifacts/default/mydata")


class DataItem:  # stands for mlrun.DataItem (MLRun is not installed here): typed by its name
    pass


def typed_like_mlrun(context, data: DataItem):
    return {"total": int(data.as_df()["b"].sum()), "given": type(data).__module__}
'''

EXPECTED_DF = pd.DataFrame(
    {
        "city": ["Oslo", "Lima", "Pune", "Baku", "Nice"],
        "country": ["NO", "PE", "IN", "AZ", "FR"],
        "year": [2019, 2020, 2021, 2022, 2023],
        "visits": [31, 87, 45, 12, 66],
    }
)


@pytest.fixture
def handlers(tmp_path):
    path = tmp_path / "handlers.py"
    path.write_text(HANDLERS)
    return path


def test_my_job_runs_unchanged(project, handlers, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_SECRET_STORE_ACCESS", SECRET)
    infile = tmp_path / "infile.txt"
    infile.write_text("hello from the input file")
    fn = shoal.Function.from_file(handlers, "my_job", env={"ACCESS_KEY": {"secret": "store", "key": "access"}})

    run = fn.run({"p1": 2, "workdir": str(tmp_path)}, inputs={"infile.txt": infile}, backend=engine, project=project, watch=False)

    assert run.state == "completed", run.error
    assert run.results == {"accuracy": 4, "loss": 6, "p2": "x"}
    # the logger's line (keyword values appended), the prints, the secret read but masked
    assert "my_job starting p2='x'" in run.logs
    assert f"Run: my_job (uid={run.uid})" in run.logs
    assert "Params: p1=2, p2=x" in run.logs
    assert "accesskey = ****" in run.logs and SECRET not in run.logs
    assert "hello from the input file" in run.logs
    # set_label lands in the run's record
    stored = project.runs.get(run.uid)
    assert run.labels == {"framework": "sklearn"} and stored.labels == {"framework": "sklearn"}
    # every artifact loads back equal, from the returned run and from the database
    for record in (run, stored):
        artifacts = record.artifacts
        assert set(artifacts) == {"model", "html_result", "summary", "mydf"}
        assert artifacts["model"].load() == b"abc is 123"
        assert artifacts["model"].url.endswith("/model.txt") and artifacts["model"].format == "txt"
        assert artifacts["model"].meta["labels"] == {"framework": "xgboost"}
        assert artifacts["html_result"].load() == b"<b> Some HTML <b>"
        assert artifacts["html_result"].meta["filename"] == "result.html"
        assert artifacts["summary"].load().read_text() == "metric,value\naccuracy,4\n"
        pd.testing.assert_frame_equal(artifacts["mydf"].load(), EXPECTED_DF)
        assert artifacts["mydf"].meta["category"] == "dataset"
        assert artifacts["mydf"].meta["stats"]["visits"]["mean"] == pytest.approx(EXPECTED_DF["visits"].mean())
    pd.testing.assert_frame_equal(run.output("mydf"), EXPECTED_DF)


def test_get_input_gives_data_items(project, handlers, engine, tmp_path):
    earlier = shoal.Function.from_file(handlers, "my_job").run(
        {"p1": 1, "workdir": str(tmp_path)}, inputs={"infile.txt": b"x"}, backend="local", project=project, watch=False
    )
    assert earlier.ok, earlier.error
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"0123456789")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,10\n2,32\n")
    fn = shoal.Function.from_file(handlers, "reads")

    run = fn.run(
        inputs={
            "raw.bin": raw,
            "data.csv": csv,
            "frame": earlier.artifacts["mydf"],  # an artifact of an earlier run
            "table": pd.DataFrame({"u": [1], "v": [2]}),  # a value, stored by shoal
        },
        backend=engine,
        project=project,
        watch=False,
    )

    assert run.state == "completed", run.error
    assert run.results == {
        "raw_get": "0123456789",
        "raw_slice": "234",
        "raw_local": "0123456789",
        "raw_key": "raw.bin",
        "raw_url_ok": True,
        "csv_total": 42,
        "csv_suffix": ".csv",
        "frame": EXPECTED_DF.to_dict("list"),
        "table_columns": ["u", "v"],
    }


def test_a_parameter_typed_as_mlrun_data_item_gets_one(project, handlers, tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,10\n2,32\n")
    run = shoal.Function.from_file(handlers, "typed_like_mlrun").run(
        inputs={"data": csv}, backend="local", project=project, watch=False
    )
    assert run.results == {"total": 42, "given": "shoal.data_item"}, run.error


def test_model_metadata_labels_and_iteration(project, handlers):
    fn = shoal.Function.from_file(handlers, "trains")
    runs = fn.map([{"n": 2}, {"n": 4}], backend="local", project=project)

    assert [r.results for r in runs] == [
        {"iteration": 0, "project": "test", "n": 2},
        {"iteration": 1, "project": "test", "n": 4},
    ]
    assert "training on 4 rows seed=7" in runs[1].logs
    model = project.runs.get(runs[1].uid).artifacts["clf"]
    assert model.load() == {"weights": [0, 1, 2, 3]}
    assert model.meta["framework"] == "sklearn" and model.meta["algorithm"] == "ridge"
    assert model.meta["metrics"] == {"accuracy": 0.75} and model.meta["parameters"] == {"n": 4}
    assert model.meta["labels"] == {"team": "ml"}
    assert "accuracy" not in runs[1].results  # metrics stay with the model, as in MLRun


def test_context_is_never_a_parameter(project, handlers, tmp_path):
    fn = shoal.Function.from_file(handlers, "my_job")
    refused = "unknown parameter 'context' for my_job: its first parameter receives the run's context"
    with pytest.raises(ParamError, match=refused):
        fn.run({"context": 1, "p1": 2}, project=project, watch=False)
    assert project.runs.list() == []


def cli(cwd, *args):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], cwd=cwd, env=environ, capture_output=True, text=True,
        timeout=120,
    )


def test_cli_runs_the_handler_with_param(handlers, tmp_path):
    (tmp_path / "infile.txt").write_text("from the command line")
    done = cli(tmp_path, "run", "handlers.py:my_job", "--param", "p1=2", "--input", "infile.txt=infile.txt", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "completed"
    assert record["params"] == {"p1": 2}
    assert record["results"] == {"accuracy": 4, "loss": 6, "p2": "x"}
    assert record["labels"] == {"framework": "sklearn"}

    refused = cli(tmp_path, "run", "handlers.py:my_job", "--param", "context=1")
    assert refused.returncode == 2
    assert "its first parameter receives the run's context" in refused.stderr
    assert "missing required" not in refused.stderr


def test_names_without_meaning_raise_the_named_error(project, handlers, tmp_path):
    run = shoal.Function.from_file(handlers, "asks_the_store").run(project=project, watch=False)
    assert run.state == "failed"
    assert run.error["type"] == "shoal.errors.UnsupportedError"
    assert "get_store_resource has no meaning in shoal" in run.error["message"]
    assert "context.get_input(key)" in run.error["message"]

    ctx = shoal.Context(artifact_store=ArtifactStore(str(tmp_path / "store")), artifact_prefix="p/runs/u")
    for name, hint in NO_MEANING.items():
        with pytest.raises(UnsupportedError) as caught:
            getattr(ctx, name)
        assert hint in str(caught.value)
        assert not hasattr(ctx, name)
    with pytest.raises(AttributeError) as plain:
        ctx.no_such_name
    assert not isinstance(plain.value, UnsupportedError)
    with pytest.raises(UnsupportedError, match="tag=.*run.artifacts"):
        ctx.log_artifact("m", body=b"1", tag="v2")
    with pytest.raises(UnsupportedError, match="viewer"):
        ctx.log_artifact("m", body=b"1", viewer="table")
    with pytest.raises(UnsupportedError, match="feature store"):
        ctx.log_model("m", body=b"1", feature_vector="store://feature-vectors/p/v")
    with pytest.raises(UnsupportedError, match="log_artifact under a key of its own"):
        ctx.log_dataset("d", df=EXPECTED_DF, extra_data={"chart": b"png"})
    assert ctx.artifacts == {}
    item = shoal.DataItem(ctx.log_artifact("kept", body=b"abc"))
    for write in (lambda: item.put(b"x"), lambda: item.upload("f"), item.delete, lambda: item.open("wb")):
        with pytest.raises(UnsupportedError, match="log_artifact"):
            write()
    assert item.get() == b"abc"


def test_artifact_keywords_in_process(tmp_path):
    """MLRun's artifact keywords that do have a meaning: where files go, formats, model forms."""
    store = ArtifactStore(str(tmp_path / "store"))
    ctx = shoal.Context(uid="u1", function="f", artifact_store=store, artifact_prefix="p/runs/u1")
    assert ctx.artifact_path == (tmp_path / "store" / "p" / "runs" / "u1").as_uri()

    sub = ctx.log_artifact("a", body="text", artifact_path=ctx.artifact_subpath("data"))
    assert sub.url == f"{ctx.artifact_path}/data/a.txt" and sub.load() == "text"
    relative = ctx.log_artifact("b", body=b"1", artifact_path="+/more")
    assert relative.url == f"{ctx.artifact_path}/more/b.bin"
    exact = ctx.log_artifact("c", body=b"22", target_path=str(tmp_path / "out" / "c.raw"))
    assert exact.url == (tmp_path / "out" / "c.raw").as_uri() and exact.load() == b"22"
    # the positional shoal form and kind= still work
    assert ctx.log_artifact("d", [1, 2]).load() == [1, 2]
    assert ctx.log_artifact("e", {"x": 1}, kind="pickle").load() == {"x": 1}

    as_csv = ctx.log_dataset("t", df=EXPECTED_DF, format="csv", preview=2, label_column="visits")
    assert as_csv.url.endswith("/t.csv") and as_csv.kind == "csv"
    pd.testing.assert_frame_equal(as_csv.load(), EXPECTED_DF)
    assert as_csv.meta["preview"] == EXPECTED_DF.head(2).to_dict("records")
    assert as_csv.meta["label_column"] == "visits"
    pd.testing.assert_frame_equal(shoal.DataItem(as_csv).as_df(), EXPECTED_DF)
    with pytest.raises(ArtifactError, match="parquet or csv"):
        ctx.log_dataset("t2", df=EXPECTED_DF, format="xlsx")
    with pytest.raises(ArtifactError, match="pandas DataFrame"):
        ctx.log_dataset("t3", df=[1, 2])

    model_file = tmp_path / "model.pkl"
    model_file.write_bytes(pickle.dumps({"w": 1}))
    from_file = ctx.log_model("m1", model_file=str(model_file), training_set=EXPECTED_DF, label_column="visits")
    assert pickle.loads(from_file.local_path().read_bytes()) == {"w": 1}
    assert [c["name"] for c in from_file.meta["outputs"]] == ["visits"]
    assert [c["name"] for c in from_file.meta["inputs"]] == ["city", "country", "year"]
    model_dir = tmp_path / "model_dir"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"w")
    from_dir = ctx.log_model("m2", model_dir=str(model_dir), model_file="weights.bin")
    assert (from_dir.load() / "weights.bin").read_bytes() == b"w" and from_dir.meta["model_file"] == "weights.bin"
    with pytest.raises(ArtifactError, match="needs the model"):
        ctx.log_model("m3")
    with pytest.raises(ArtifactError, match="local_path .* does not exist"):
        ctx.log_artifact("f", local_path=str(tmp_path / "missing.txt"))
    with pytest.raises(ArtifactError, match="has no input 'nope'.*inputs="):
        ctx.get_input("nope")
    with pytest.raises(ArtifactError, match="no such file or folder"):
        ctx.get_input("gone", str(tmp_path / "gone.txt"))
    by_url = ctx.get_input("infile", str(model_file))
    assert by_url.local() == str(model_file) and by_url.key == "infile"
    assert ctx.get_cached_artifact("m2") is ctx.artifacts["m2"]
    ctx.set_label("owner", 7)
    ctx.set_label("owner", "other", replace=False)
    assert ctx.labels == {"owner": "7"}
