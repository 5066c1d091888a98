"""Artifacts and inputs on real local folders and fsspec's memory:// filesystem: packagers, atomic
writes (no temporary files left, also after a failure), content hashes, content-addressed inputs."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

import shoal
from shoal.artifacts import PACKAGERS, Artifact, ArtifactStore, Packager, register_packager

from helpers import functions_from, wait_for

HANDLERS = '''
import pathlib
import time

import numpy as np
import pandas as pd

import shoal


def produce(ctx: shoal.Context, folder: str):
    ctx.log_artifact("array", np.arange(6).reshape(2, 3))
    ctx.log_artifact("frame", pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    ctx.log_artifact("raw", b"\\x00\\x01binary")
    ctx.log_artifact("note", "some text")
    ctx.log_artifact("config", {"layers": [1, 2], "name": "m"})
    ctx.log_artifact("table", pathlib.Path(folder) / "table.csv")
    ctx.log_artifact("model_dir", pathlib.Path(folder) / "model")
    ctx.log_artifact("objects", np.array([{"a": 1}, None], dtype=object))
    return {"model": np.ones(2)}


def total(data, scale: float = 1.0):
    return {"total": float(np.asarray(data).sum()) * scale, "type": type(data).__name__}


def read_text_input(doc):
    return {"text": pathlib.Path(doc).read_text(), "is_path": isinstance(doc, pathlib.Path)}


def read_folder_input(bundle):
    return {"content": (pathlib.Path(bundle) / "content.txt").read_text()}


def unpicklable(ctx):
    import threading
    ctx.log_result("before", 1)
    ctx.log_artifact("lock", threading.Lock())


def odd_file_name(ctx, folder: str):
    path = pathlib.Path(folder) / ("data." + "x" * 80)
    path.write_text("odd")
    ctx.log_artifact("odd", path)


class Slow:
    """Written by a packager that takes its time (registered below)."""


def _dump_slow(value, handle):
    pathlib.Path("dump-started").write_text("yes")
    for _ in range(1000):
        handle.write(b"x" * 1000)
        time.sleep(0.01)
    return {}


from shoal.artifacts import Packager, register_packager  # noqa: E402

register_packager(Packager("slow", ".slow", lambda v: isinstance(v, Slow), _dump_slow, lambda h, a: h.read()))


def slow_artifact(ctx):
    ctx.log_artifact("slow", Slow())


def frame_input(df):
    return {"rows": len(df), "cols": list(df.columns)}


def input_facts(ctx: shoal.Context, data):
    stored = ctx.inputs["data"]
    kind = "path" if isinstance(data, pathlib.Path) else type(data).__name__
    if isinstance(data, pathlib.Path) and data.is_dir():
        content = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    elif isinstance(data, pathlib.Path):
        content = data.read_text()
    elif isinstance(data, bytes):
        content = data.decode()
    else:
        content = np.asarray(data).tolist()
    return {"size": stored.size, "sha256": stored.sha256, "url": stored.url, "kind": stored.kind,
            "loaded": kind, "content": content}
'''


@pytest.fixture
def fn(tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


@pytest.fixture
def source_folder(tmp_path) -> Path:
    folder = tmp_path / "src"
    (folder / "model" / "sub").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"w" * 100)
    (folder / "model" / "sub" / "meta.txt").write_text("meta")
    (folder / "table.csv").write_text("a,b\n1,2\n")
    return folder


def check_stored(artifact: Artifact) -> bytes:
    """The stored bytes, after checking size and sha256 against them."""
    with fsspec.open(artifact.url, "rb") as handle:
        data = handle.read()
    assert artifact.size == len(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    return data


def temp_files(fs, root: str) -> list[str]:
    return [p for p in fs.find(root) if Path(p).name.startswith((".tmp-", ".staging-"))]


def test_every_packager_round_trips(any_project, fn, source_folder):
    run = fn("produce").run({"folder": str(source_folder)}, project=any_project, watch=False)
    assert run.state == "completed", run.error
    stored = any_project.runs.get(run.uid)
    assert stored.artifacts == run.artifacts
    a = stored.artifacts
    assert {k: v.kind for k, v in a.items()} == {
        "array": "numpy", "frame": "pandas", "raw": "bytes", "note": "text", "config": "json",
        "table": "file", "model_dir": "folder", "objects": "pickle", "model": "numpy",
    }
    for artifact in a.values():
        check_stored(artifact)

    np.testing.assert_array_equal(a["array"].load(), np.arange(6).reshape(2, 3))
    assert a["array"].meta == {"shape": [2, 3], "dtype": "int64"}
    pd.testing.assert_frame_equal(a["frame"].load(), pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert a["raw"].load() == b"\x00\x01binary"
    assert a["note"].load() == "some text"
    assert a["config"].load() == {"layers": [1, 2], "name": "m"}
    assert Path(a["table"].load()).read_text() == "a,b\n1,2\n" and a["table"].url.endswith("table.csv")
    folder = a["model_dir"].load()
    assert (folder / "weights.bin").read_bytes() == b"w" * 100
    assert (folder / "sub" / "meta.txt").read_text() == "meta"
    objects = a["objects"].load()
    assert objects.dtype == object and objects[0] == {"a": 1} and objects[1] is None
    np.testing.assert_array_equal(stored.output("model"), np.ones(2))

    fs, root = fsspec.core.url_to_fs(any_project.artifacts_url)
    assert temp_files(fs, root) == []


def test_failing_packager_leaves_no_temp_file_and_keeps_earlier_results(project, fn):
    run = fn("unpicklable").run(project=project, watch=False)
    assert run.state == "failed"
    assert run.error["type"] == "shoal.errors.ArtifactError" and "lock" in run.error["message"]
    assert run.results == {"before": 1} and run.artifacts == {}
    store_root = Path(project.artifacts_url)
    assert [p for p in store_root.rglob("*") if p.is_file()] == []  # nothing half-written


@pytest.fixture
def memory_store():
    url = f"memory://shoal-test-{uuid.uuid4().hex[:8]}"
    store = ArtifactStore(url)
    yield store
    if store.fs.exists(store.root):
        store.fs.rm(store.root, recursive=True)


def test_memory_store_put_and_load(memory_store):
    values = {"a": np.arange(300_000), "b": b"bytes", "c": "text", "d": [1, 2, {"x": None}], "e": pd.DataFrame({"z": [1.5]})}
    for key, value in values.items():
        artifact = memory_store.put(f"p/runs/r/{key}", value, key=key)
        assert artifact.url.startswith("memory://")
        check_stored(artifact)
    loaded = {key: Artifact.from_record(memory_store.put(f"p/runs/r/{key}", v, key=key).to_record()).load() for key, v in values.items()}
    np.testing.assert_array_equal(loaded["a"], values["a"])
    assert loaded["b"] == b"bytes" and loaded["c"] == "text" and loaded["d"] == [1, 2, {"x": None}]
    pd.testing.assert_frame_equal(loaded["e"], values["e"])
    assert temp_files(memory_store.fs, memory_store.root) == []


def test_memory_store_failure_leaves_no_temp_file(memory_store):
    with pytest.raises(shoal.ArtifactError, match="not picklable"):
        memory_store.put("p/runs/r/lock", threading.Lock(), key="lock")
    with pytest.raises(shoal.ArtifactError):
        memory_store.put("p/runs/r/arr", np.arange(3), key="arr", kind="json")
    assert memory_store.fs.find(memory_store.root) == []


def test_custom_packager_failing_mid_write(tmp_path):
    class Weird:
        pass

    def dump(value, handle):
        handle.write(b"x" * (3 << 20))  # more than the write buffer: bytes reach the temp file
        raise RuntimeError("packager broke")

    register_packager(Packager("weird", ".weird", lambda v: isinstance(v, Weird), dump, lambda h, a: None))
    try:
        store = ArtifactStore(str(tmp_path / "store"))
        with pytest.raises(shoal.ArtifactError, match="packager broke"):
            store.put("p/runs/r/w", Weird(), key="w")
        assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []
    finally:
        PACKAGERS.pop("weird")


def test_invalid_keys_and_kinds(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(shoal.ArtifactError, match="invalid artifact key"):
        store.put("p/x", 1, key="a/b")
    with pytest.raises(shoal.ArtifactError, match="unknown artifact kind"):
        store.put("p/x", 1, key="x", kind="nosuch")
    with pytest.raises(shoal.ArtifactError, match="missing"):
        Artifact("k", (tmp_path / "nope.npy").as_uri(), "numpy").load()


def test_run_with_a_memory_artifact_store(tmp_path, monkeypatch, fn, source_folder):
    monkeypatch.chdir(tmp_path)
    url = f"memory://shoal-run-{uuid.uuid4().hex[:8]}"
    with shoal.Project(tmp_path, name="mem", artifacts=url) as project:
        data = np.arange(5.0)
        run = fn("total").run({"scale": 2}, inputs={"data": data}, project=project, watch=False)
        assert run.results == {"total": 20.0, "type": "ndarray"}
        assert run.inputs["data"].startswith("memory://")
        produced = fn("produce").run({"folder": str(source_folder)}, project=project, watch=False)
        assert produced.state == "completed", produced.error
        for artifact in produced.artifacts.values():
            assert artifact.url.startswith(url.replace("memory://", "memory:///"))
            check_stored(artifact)
        assert Path(produced.artifacts["table"].load()).read_text() == "a,b\n1,2\n"
        assert (produced.artifacts["model_dir"].load() / "sub" / "meta.txt").read_text() == "meta"
        fs, root = fsspec.core.url_to_fs(url)
        assert temp_files(fs, root) == []


def test_inputs_are_stored_once_by_content(project, fn):
    data = np.arange(1000, dtype=np.float64)
    first = fn("total").run(inputs={"data": data}, project=project, watch=False)
    second = fn("total").run({"scale": 3}, inputs={"data": data.copy()}, project=project, watch=False)
    assert first.results == {"total": float(data.sum()), "type": "ndarray"}
    assert second.results["total"] == 3 * float(data.sum())
    assert first.inputs == second.inputs
    stored = [p for p in (project.root / ".shoal" / "artifacts" / "test" / "inputs").iterdir()]
    assert len(stored) == 1
    assert stored[0].name == hashlib.sha256(stored[0].read_bytes()).hexdigest() + ".npy"
    np.testing.assert_array_equal(np.load(stored[0]), data)
    assert project.runs.get(first.uid).inputs == {"data": stored[0].as_uri()}


def test_map_stores_a_shared_input_once(project, fn, tmp_path):
    data = np.arange(10.0)
    runs = fn("total").map([{"scale": s} for s in (1, 2, 3)], inputs={"data": data}, project=project)
    assert [r.results["total"] for r in runs] == [45.0, 90.0, 135.0]
    assert len({r.inputs["data"] for r in runs}) == 1
    folder = project.root / ".shoal" / "artifacts" / "test" / "inputs"
    assert len(list(folder.iterdir())) == 1


def test_inputs_given_as_paths_and_artifacts(project, fn, tmp_path, source_folder):
    np.save(tmp_path / "numbers.npy", np.array([1.0, 2.0]))
    run = fn("total").run(inputs={"data": tmp_path / "numbers.npy"}, project=project, watch=False)
    assert run.results == {"total": 3.0, "type": "ndarray"}
    stored = project.root / ".shoal" / "artifacts" / "test" / "inputs"
    digest = hashlib.sha256((tmp_path / "numbers.npy").read_bytes()).hexdigest()
    assert run.inputs == {"data": (stored / f"{digest}.npy").as_uri()}  # copied in, by content

    (tmp_path / "doc.md").write_text("# title")
    run = fn("read_text_input").run(inputs={"doc": str(tmp_path / "doc.md")}, project=project, watch=False)
    assert run.results == {"text": "# title", "is_path": True}

    frame = pd.DataFrame({"a": [1, 2, 3]})
    made = fn("frame_input").run(inputs={"df": frame}, project=project, watch=False)
    assert made.results == {"rows": 3, "cols": ["a"]}

    produced = fn("produce").run({"folder": str(source_folder)}, project=project, watch=False)
    assert produced.state == "completed", produced.error
    again = fn("total").run(inputs={"data": produced.artifacts["array"]}, project=project, watch=False)
    assert again.results == {"total": 15.0, "type": "ndarray"}  # an earlier run's artifact as input
    assert again.inputs == {"data": produced.artifacts["array"].url}


def _tarball(path: Path, text: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        data = text.encode()
        info = tarfile.TarInfo("content.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_two_different_folder_inputs_are_not_confused(project, fn, tmp_path):
    first = _tarball(tmp_path / "one.tar.gz", "first bundle")
    second = _tarball(tmp_path / "two.tar.gz", "second bundle")
    a = fn("read_folder_input").run(inputs={"bundle": first}, project=project, watch=False)
    b = fn("read_folder_input").run(inputs={"bundle": second}, project=project, watch=False)
    assert a.results == {"content": "first bundle"}
    assert b.results == {"content": "second bundle"}


def test_context_outside_a_run_cannot_store_artifacts():
    ctx = shoal.Context()
    with pytest.raises(shoal.ArtifactError, match="not inside a run"):
        ctx.log_artifact("x", 1)
    ctx.report(0.5, step=3)  # outside tuning: only a metric
    assert ctx.metrics == {"objective": [[3, 0.5]]}
    ctx.log_result("value", np.float32(2.5))
    assert ctx.results == {"value": 2.5} and type(ctx.results["value"]) is float


def test_file_with_an_odd_suffix_is_recorded(any_project, fn, tmp_path):
    run = fn("odd_file_name").run({"folder": str(tmp_path)}, project=any_project, watch=False)
    stored = any_project.runs.get(run.uid)
    assert stored.state == "completed", stored.error  # the format column holds 64 characters
    assert stored.artifacts["odd"].format == "file"
    assert Path(stored.artifacts["odd"].load()).read_text() == "odd"
    assert {k: a.format for k, a in fn("produce").run(
        {"folder": str(_folder(tmp_path))}, project=any_project, watch=False).artifacts.items()} == {
        "array": "npy", "frame": "parquet", "raw": "bin", "note": "txt", "config": "json", "table": "csv",
        "model_dir": "tar.gz", "objects": "pkl", "model": "npy",
    }


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "w.bin").write_bytes(b"w")
    (tmp_path / "table.csv").write_text("a\n")
    return tmp_path


def test_a_missing_input_path_fails_before_the_run(project, fn, tmp_path):
    with pytest.raises(shoal.ArtifactError, match="no such file"):
        fn("total").run(inputs={"data": tmp_path / "missing.npy"}, project=project, watch=False)
    assert project.store.count_runs() == 0


def test_cancel_while_an_artifact_is_written(project, fn, tmp_path):
    try:
        handle = fn("slow_artifact").submit(project=project)
        marker = tmp_path / "dump-started"
        wait_for(marker.exists, what="the artifact's write begun")
        assert handle.cancel() is True
        run = handle.result(30)
        assert run.state == "cancelled" and run.error["type"] == "CancelledError"  # not an artifact failure
        assert run.artifacts == {}
        assert [p for p in Path(project.artifacts_url).rglob("*") if p.is_file()] == []
    finally:
        PACKAGERS.pop("slow", None)


# -- inputs are stored once, by content, whatever form they are given in -----------------------------
def _stored_inputs(project) -> Path:
    return project.root / ".shoal" / "artifacts" / "test" / "inputs"


def _check_input(run, project, expected_bytes: bytes | None = None) -> Path:
    """The run saw its input in the store, with the size and SHA-256 of the stored bytes."""
    assert run.state == "completed", run.error
    facts = run.results
    path = Path(fsspec.core.url_to_fs(facts["url"])[1])
    assert path.parent == _stored_inputs(project)
    data = path.read_bytes()
    assert facts["size"] == len(data) > 0
    assert facts["sha256"] == hashlib.sha256(data).hexdigest() == path.name.split(".")[0]
    if expected_bytes is not None:
        assert data == expected_bytes
    assert project.runs.get(run.uid).inputs == {"data": facts["url"]}  # the record points at the copy
    assert [p.name for p in _stored_inputs(project).iterdir() if p.name.startswith(".")] == []  # no temp files
    return path


def test_an_input_given_as_a_local_path_is_stored_by_content(project, fn, tmp_path):
    source = tmp_path / "notes.txt"
    source.write_text("first version")
    run = fn("input_facts").run(inputs={"data": source}, project=project, watch=False)
    stored = _check_input(run, project, b"first version")
    assert run.results["kind"] == "text" and run.results["content"] == "first version"
    source.write_text("changed afterwards")  # the run's input is the copy, not the file
    assert stored.read_text() == "first version"
    again = fn("input_facts").run(inputs={"data": str(tmp_path / "notes.txt")}, project=project, watch=False)
    assert _check_input(again, project) != stored

    other = tmp_path / "data.csv"
    other.write_text("a,b\n1,2\n")
    as_file = fn("input_facts").run(inputs={"data": other}, project=project, watch=False)
    path = _check_input(as_file, project, b"a,b\n1,2\n")
    assert path.suffix == ".csv" and as_file.results["kind"] == "file"
    assert as_file.results["loaded"] == "path" and as_file.results["content"] == "a,b\n1,2\n"


def test_a_folder_input_is_stored_once(project, fn, source_folder):
    first = fn("input_facts").run(inputs={"data": source_folder}, project=project, watch=False)
    path = _check_input(first, project)
    assert path.name.endswith(".tar.gz") and first.results["kind"] == "folder"
    assert first.results["content"] == ["model/sub/meta.txt", "model/weights.bin", "table.csv"]
    second = fn("input_facts").run(inputs={"data": str(source_folder)}, project=project, watch=False)
    assert second.results["url"] == first.results["url"]  # the same folder: the same bytes, stored once
    assert len(list(_stored_inputs(project).iterdir())) == 1


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_an_input_given_as_an_fsspec_url_is_stored_by_content(project, fn, tmp_path, scheme):
    data = np.arange(4.0)
    buffer = io.BytesIO()
    np.save(buffer, data)
    if scheme == "memory":
        url = f"memory://inputs-{uuid.uuid4().hex[:8]}/numbers.npy"
    else:
        url = (tmp_path / "numbers.npy").as_uri()
    with fsspec.open(url, "wb") as handle:
        handle.write(buffer.getvalue())
    run = fn("input_facts").run(inputs={"data": url}, project=project, watch=False)
    stored = _check_input(run, project, buffer.getvalue())
    assert stored.suffix == ".npy" and run.results["kind"] == "numpy"
    assert run.results["loaded"] == "ndarray" and run.results["content"] == [0.0, 1.0, 2.0, 3.0]


def test_a_remote_folder_url_is_stored_as_an_archive(project, fn):
    root = f"memory://folder-{uuid.uuid4().hex[:8]}"
    for name, text in (("a.txt", "A"), ("sub/b.txt", "B")):
        with fsspec.open(f"{root}/bundle/{name}", "wb") as handle:
            handle.write(text.encode())
    run = fn("input_facts").run(inputs={"data": f"{root}/bundle"}, project=project, watch=False)
    _check_input(run, project)
    assert run.results["kind"] == "folder" and run.results["content"] == ["a.txt", "sub/b.txt"]


@pytest.mark.parametrize("value, loaded", [(np.arange(3.0), "ndarray"), (b"raw bytes", "bytes")])
def test_an_input_given_as_a_value_is_stored_by_content(project, fn, value, loaded):
    run = fn("input_facts").run(inputs={"data": value}, project=project, watch=False)
    _check_input(run, project)
    assert run.results["loaded"] == loaded
    assert run.results["content"] == (value.decode() if isinstance(value, bytes) else value.tolist())


def test_a_missing_url_input_fails_before_the_run(project, fn):
    with pytest.raises(shoal.ArtifactError, match="input 'data': nothing at memory://"):
        fn("input_facts").run(inputs={"data": f"memory://nowhere-{uuid.uuid4().hex}/x.npy"}, project=project)
    assert project.store.count_runs() == 0
