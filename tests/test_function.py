"""shoal.Function: the decorator, from_file, immutability, documents and the content hash.

Functions come from real files in tmp_path; second processes are real subprocesses.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

import shoal
from shoal.errors import CodeError, SpecError

TRAIN = textwrap.dedent(
    '''\
    """A training module, as a user would write it."""
    import json


    def helper(x):
        return x * 2


    def train(x: int = 1, scale: int = 1):
        return {"value": helper(x) * scale}


    def other(x):
        return -x
    '''
)

DECORATED = textwrap.dedent(
    """\
    import shoal


    @shoal.function("trainer", memory="1Gi", replicas=(0, 3), description="from the file", labels={"team": "ml"})
    def train(x: int = 1):
        return x + 100
    """
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def train_file(tmp_path) -> Path:
    return write(tmp_path / "train.py", TRAIN)


@pytest.fixture
def fn(train_file) -> shoal.Function:
    return shoal.Function.from_file(train_file, "train")


def run_python(code: str, cwd: Path, *args: str, env: dict | None = None) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout (fail with its stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- the decorator ----------------------------------------------------------------------------------


def test_bare_decorator_keeps_the_plain_function_callable():
    @shoal.function
    def double(x):
        return 2 * x

    assert isinstance(double, shoal.Function)
    assert double(21) == 42 and double(x=4) == 8
    assert double.name == "double" and double.handler.endswith("double")
    assert double.spec == shoal.Function.from_callable(lambda: 0, name="z").spec  # all defaults


def test_decorator_with_name_and_options():
    @shoal.function(
        "trainer",
        requirements=["numpy>=1.26"],
        image="python:3.11",
        env={"MODE": "fast"},
        cpu="500m",
        memory=("1Gi", "2Gi"),
        gpu=1,
        replicas=(0, 4),
        backend="local",
        timeout=60,
        retries=2,
        description="trains",
        labels={"team": "ml", "tier": 1},
        spot="prefer",
    )
    def train(x):
        return x + 1

    assert train(1) == 2
    assert train.name == "trainer" and train.description == "trains"
    assert train.labels == {"team": "ml", "tier": "1"}
    assert train.spec.requirements == ("numpy>=1.26",) and train.spec.image == "python:3.11"
    assert train.resources.requests.cpu == "500m" and train.resources.limits.memory == "2Gi"
    assert (train.replicas.min, train.replicas.max) == (0, 4)
    assert train.spec.placement.spot == "prefer" and train.spec.retries == 2


def test_decorator_called_on_a_function_with_options_applies_them():
    def square(x):
        return x * x

    fn = shoal.function(square, replicas=(0, 2))
    assert fn.replicas.max == 2 and fn(3) == 9


def test_decorator_rejects_bad_options_at_decoration_time():
    with pytest.raises(SpecError, match="'replicas'"):
        shoal.function(replicas=(3, 1))
    with pytest.raises(SpecError, match="first argument .* name"):
        shoal.function(42)


def test_decorating_something_that_is_not_a_function_is_a_clear_error():
    import functools

    with pytest.raises(SpecError, match="needs a Python function"):
        shoal.function("p")(functools.partial(print, 1))


def test_decorating_a_function_again_applies_the_new_options():
    @shoal.function(memory="1Gi")
    def work(x):
        return x

    again = shoal.function("work2", cpu="1")(work)
    assert again.name == "work2" and again(5) == 5
    assert again.resources.requests.memory == "1Gi" and again.resources.requests.cpu == "1"


@pytest.mark.parametrize("name", ["", "-lead", "a b", "train\n", "x" * 129, "name:tag", "a@b", "ü", 7])
def test_invalid_function_name(name):
    with pytest.raises(SpecError, match="invalid function name"):
        shoal.function(name)(lambda: 0) if isinstance(name, str) else shoal.Function.from_callable(len, name=name)


def test_a_lambda_needs_a_name():
    with pytest.raises(SpecError, match="invalid function name '<lambda>'.*pass name"):
        shoal.function(lambda: 0)
    assert shoal.function("sq")(lambda x: x * x)(4) == 16


@pytest.mark.parametrize("labels", [["a"], {"": "x"}, {1: "x"}, {"a": None}, {"a": {"b": 1}}])
def test_invalid_labels(labels):
    with pytest.raises(SpecError, match="'labels'"):
        shoal.function("f", labels=labels)(lambda: 0)


def test_invalid_description():
    with pytest.raises(SpecError, match="'description'"):
        shoal.function("f", description=["no"])(lambda: 0)


# -- immutability ------------------------------------------------------------------------------------


def test_functions_are_immutable(fn):
    with pytest.raises(AttributeError, match="immutable"):
        fn.name = "other"
    with pytest.raises(AttributeError, match="immutable"):
        del fn._spec
    before = fn.hash
    fn.spec.env["SNEAKY"] = "1"  # the spec handed out is a copy
    fn.spec.defaults["x"] = 5
    fn.labels["team"] = "x"
    assert fn.spec.env == {} and fn.spec.defaults == {} and fn.labels == {}
    assert fn.hash == before == shoal.Function.from_dict(fn.to_dict()).hash


def test_copies_are_the_same_immutable_object(fn):
    assert copy.copy(fn) is fn and copy.deepcopy({"f": fn})["f"] is fn


def test_cloudpickle_round_trip_keeps_identity_and_behaviour(fn):
    clone = cloudpickle.loads(cloudpickle.dumps(fn))
    assert clone == fn and clone.hash == fn.hash and clone(3) == {"value": 6}


def test_with_spec_returns_a_new_function_and_leaves_the_old_one(fn):
    before = fn.to_dict()
    changed = fn.with_spec(replicas=(0, 8), description="bigger", name="train-big")
    assert changed is not fn and changed.name == "train-big" and changed.replicas.max == 8
    assert changed.description == "bigger"
    assert fn.to_dict() == before and fn.replicas is None  # unset: every slot of the backend
    assert changed(2) == fn(2)


def test_with_spec_shorthands_change_one_entry_and_keep_the_rest(fn):
    sized = fn.with_spec(memory="1Gi", cpu=("1", "2"), node_selector={"pool": "a"}, spot="prefer")
    more = sized.with_spec(cpu="2", spot="require")
    assert more.resources.requests.memory == "1Gi" and more.resources.requests.cpu == "2"
    assert more.resources.limits.cpu == "2"
    assert more.spec.placement.node_selector == {"pool": "a"} and more.spec.placement.spot == "require"
    replaced = sized.with_spec(resources={"requests": {"cpu": "4"}})  # a whole section replaces
    assert replaced.resources.requests.memory is None and replaced.resources.limits.cpu is None


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"replicas": (4, 1)}, "'replicas'"),
        ({"cpu": "2Gx"}, "resources.requests.cpu"),
        ({"cpu": ("2", "1")}, "limits.cpu"),
        ({"colour": "blue"}, "unknown spec field 'colour'"),
        ({"name": "bad name"}, "invalid function name"),
        ({"volumes": [{"type": "pvc", "name": "d", "mount_path": "rel", "claim_name": "c"}]}, "absolute"),
        ({"requirements": ["numpy>>1"]}, "not a pip requirement"),
    ],
)
def test_bad_with_spec_changes_nothing(fn, changes, match):
    before_doc, before_hash = fn.to_dict(), fn.hash
    with pytest.raises(SpecError, match=match):
        fn.with_spec(**changes)
    assert fn.to_dict() == before_doc and fn.hash == before_hash


# -- from_file -----------------------------------------------------------------------------------------


def test_from_file_ships_the_whole_file(train_file, fn):
    assert fn.name == "train" and fn.handler == "train"
    assert fn.code.kind == "source" and fn.code.text == TRAIN
    assert fn.code.origin == str(train_file)
    assert fn(3, scale=2) == {"value": 12}
    other = shoal.Function.from_file(str(train_file), "other", name="neg", retries=1)
    assert other.name == "neg" and other(3) == -3 and other.spec.retries == 1


def test_from_file_relative_path_starts_at_the_working_folder(train_file, monkeypatch):
    monkeypatch.chdir(train_file.parent)
    assert shoal.Function.from_file("train.py", "train")(1) == {"value": 2}


def test_from_file_of_a_decorated_handler_uses_its_options_as_the_base(tmp_path):
    path = write(tmp_path / "decorated.py", DECORATED)
    fn = shoal.Function.from_file(path, "train")
    assert fn.name == "trainer" and fn.description == "from the file" and fn.labels == {"team": "ml"}
    assert fn.resources.requests.memory == "1Gi" and fn.replicas.max == 3
    assert fn(1) == 101
    override = shoal.Function.from_file(path, "train", cpu="2", replicas=(1, 5), name="t2")
    assert override.name == "t2" and override.replicas.max == 5
    assert override.resources.requests.cpu == "2" and override.resources.requests.memory == "1Gi"


def test_from_file_errors(tmp_path, train_file):
    with pytest.raises(CodeError, match="file not found: .*missing.py; check the path"):
        shoal.Function.from_file(tmp_path / "missing.py", "train")
    with pytest.raises(CodeError, match="file not found"):
        shoal.Function.from_file(tmp_path, "train")
    with pytest.raises(CodeError) as info:
        shoal.Function.from_file(train_file, "trian")
    assert "handler 'trian' not found" in str(info.value) and str(info.value).endswith("it defines: helper, other, train")
    broken = write(tmp_path / "broken.py", "import os\n\n\ndef train(x:\n    return x\n")
    with pytest.raises(CodeError, match=r"syntax error in .*broken.py line 4"):
        shoal.Function.from_file(broken, "train")
    with pytest.raises(SpecError, match="invalid function name"):
        shoal.Function.from_file(train_file, "train", name="no spaces")
    with pytest.raises(SpecError, match="unknown spec field 'gpus'"):
        shoal.Function.from_file(train_file, "train", gpus=1)


def test_from_file_whose_import_fails_is_a_code_error_naming_the_file(tmp_path):
    path = write(tmp_path / "boom.py", "raise RuntimeError('no config')\n\ndef train():\n    return 1\n")
    with pytest.raises(CodeError, match=r"loading .*boom.py failed: RuntimeError: no config"):
        shoal.Function.from_file(path, "train")


def test_from_file_ships_code_that_needs_packages_only_workers_have(tmp_path):
    path = write(tmp_path / "remote.py", "import not_installed_here\n\ndef train():\n    return 1\n")
    fn = shoal.Function.from_file(path, "train", requirements=["not-installed-here"])
    assert fn.code.kind == "source" and "not_installed_here" in fn.code.text
    with pytest.raises(CodeError, match="No module named 'not_installed_here'"):
        fn()


# -- documents -------------------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip(fn):
    rich = fn.with_spec(
        requirements=["numpy"],
        env={"S": {"secret": "s", "key": "k"}},
        volumes=[{"type": "nfs", "name": "n", "mount_path": "/n", "server": "srv", "path": "/p"}],
        tolerations=[{"key": "k", "operator": "Exists"}],
        defaults={"x": 2},
        description="d",
        labels={"a": "b"},
    )
    document = json.loads(json.dumps(rich.to_dict()))  # plain JSON
    assert document["kind"] == "function" and document["hash"] == rich.hash
    back = shoal.Function.from_dict(document)
    assert back == rich and back.hash == rich.hash and back.to_dict() == document
    assert back(x=4) == {"value": 8}


def test_yaml_round_trip_through_text_and_file(fn, tmp_path):
    text = fn.with_spec(env={"A": "1.0"}, defaults={"lr": 1e-5}).to_yaml()
    again = shoal.Function.from_yaml(text)
    assert again.spec.env == {"A": "1.0"} and again.spec.defaults == {"lr": 1e-5}
    path = tmp_path / "function.yaml"
    fn.to_yaml(path)
    assert shoal.Function.from_yaml(path).hash == fn.hash
    assert shoal.Function.from_yaml(str(path)).hash == fn.hash


def test_from_yaml_errors(tmp_path):
    with pytest.raises(SpecError, match="function file not found: .*nope.yaml"):
        shoal.Function.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="function file not found"):
        shoal.Function.from_yaml("nope.yaml")
    with pytest.raises(SpecError, match="invalid YAML"):
        shoal.Function.from_yaml("name: [unclosed\nhandler: x\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        shoal.Function.from_yaml("- just\n- a list\n")


def tampered(document: dict, *path_and_value) -> dict:
    doc = json.loads(json.dumps(document))
    *path, value = path_and_value
    target = doc
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "path_and_value",
    [
        ("code", "text", TRAIN.replace("* 2", "* 3")),
        ("handler", "other"),
        ("spec", "replicas", {"min": 0, "max": 9}),
        ("spec", "image", "evil:latest"),
        ("spec", "env", {"A": "1"}),
    ],
)
def test_tampered_document_is_refused(fn, path_and_value):
    doc = tampered(fn.to_dict(), *path_and_value)
    with pytest.raises(SpecError) as info:
        shoal.Function.from_dict(doc)
    assert f"says hash {fn.hash[:12]}" in str(info.value) and "edited or corrupted" in str(info.value)
    assert shoal.Function.from_dict(doc, verify=False).hash != fn.hash
    del doc["hash"]
    assert shoal.Function.from_dict(doc).hash != fn.hash  # dropping the hash accepts the change


def test_descriptive_metadata_edits_keep_the_hash(fn):
    doc = tampered(fn.to_dict(), "metadata", "description", "now documented")
    assert shoal.Function.from_dict(doc).description == "now documented"


@pytest.mark.parametrize(
    "doc, error, match",
    [
        ([1, 2], SpecError, "must be a mapping"),
        ({"name": "a", "handler": "f"}, SpecError, "missing 'code'"),
        ({"name": "a", "code": {"kind": "source", "text": ""}}, SpecError, "missing 'handler'"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": "def f(): pass\n"}, "extra": 1}, SpecError, "unknown function document field 'extra'"),
        ({"kind": "study", "name": "a", "handler": "f", "code": {"kind": "source", "text": "x"}}, SpecError, "kind: function"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": "x"}, "spec": [1]}, SpecError, "'spec' must be a mapping"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": "x"}, "spec": {"replica": 2}}, SpecError, "did you mean 'replicas'"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": "x"}, "metadata": {"owner": "me"}}, SpecError, "unknown metadata field 'owner'"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": "x"}, "hash": 12}, SpecError, "'hash' must be a string"),
        ({"name": "a", "handler": "", "code": {"kind": "source", "text": "x"}}, SpecError, "invalid handler"),
        ({"name": "a b", "handler": "f", "code": {"kind": "source", "text": "x"}}, SpecError, "invalid function name"),
        ({"name": "a", "handler": "f", "code": {"kind": "binary", "text": "x"}}, CodeError, "invalid 'code' section"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": 5}}, CodeError, "'text' must be a string"),
        ({"name": "a", "handler": "f", "code": {"kind": "source", "text": "x", "first_line": "two"}}, CodeError, "first_line"),
    ],
)
def test_malformed_documents(doc, error, match):
    with pytest.raises(error, match=match):
        shoal.Function.from_dict(doc)


# -- the hash --------------------------------------------------------------------------------------------


def test_hash_is_64_hex_chars_and_stable(fn, train_file):
    assert len(fn.hash) == 64 and all(c in "0123456789abcdef" for c in fn.hash)
    assert fn.hash == shoal.Function.from_file(train_file, "train").hash
    assert fn.hash == shoal.Function.from_dict(fn.to_dict()).hash


def test_hash_is_equal_in_a_second_process(fn, train_file, tmp_path):
    rich = fn.with_spec(cpu="500m", env={"B": "2", "A": "1"}, replicas=(0, 3), defaults={"lr": 0.1})
    code = (
        "import shoal, sys\n"
        "fn = shoal.Function.from_file(sys.argv[1], 'train')\n"
        "rich = fn.with_spec(cpu='500m', env={'A': '1', 'B': '2'}, replicas=(0, 3), defaults={'lr': 0.1})\n"
        "print(fn.hash, rich.hash)\n"
    )
    other = tmp_path / "elsewhere"
    other.mkdir()
    out = run_python(code, other, str(train_file), env={"PYTHONHASHSEED": "123"})
    assert out.split() == [fn.hash, rich.hash]


BEHAVIOURAL_CHANGES = {
    "requirements": {"requirements": ["numpy"]},
    "image": {"image": "python:3.12"},
    "env": {"env": {"A": "1"}},
    "env secret": {"env": {"A": {"secret": "s", "key": "k"}}},
    "cpu request": {"cpu": "2"},
    "memory limit": {"resources": {"limits": {"memory": "1Gi"}}},
    "gpu": {"gpu": 1},
    "replicas min": {"replicas": (0, 1)},
    "replicas max": {"replicas": (1, 2)},
    "replicas one at a time": {"replicas": (1, 1)},  # unlike unset, which uses every slot
    "node selector": {"node_selector": {"pool": "a"}},
    "affinity": {"affinity": {"nodeAffinity": {}}},
    "tolerations": {"tolerations": [{"key": "k", "operator": "Exists"}]},
    "spot": {"spot": "prefer"},
    "priority class": {"priority_class": "high"},
    "volumes": {"volumes": [{"type": "pvc", "name": "d", "mount_path": "/d", "claim_name": "c"}]},
    "volume type": {"volumes": [{"type": "host_path", "name": "d", "mount_path": "/d", "path": "c"}]},
    "backend": {"backend": "dask"},
    "timeout": {"timeout": 5},
    "retries": {"retries": 1},
    "defaults": {"defaults": {"x": 2}},
}


def test_every_behavioural_change_changes_the_hash_one_by_one(fn, tmp_path):
    hashes = {"base": fn.hash}
    for label, change in BEHAVIOURAL_CHANGES.items():
        hashes[label] = fn.with_spec(**change).hash
    hashes["handler"] = shoal.Function.from_file(fn.code.origin, "other", name="train").hash
    edited = write(tmp_path / "edited.py", TRAIN.replace("x * 2", "x * 3"))
    hashes["code"] = shoal.Function.from_file(edited, "train").hash
    assert len(set(hashes.values())) == len(hashes), hashes


def test_descriptive_changes_keep_the_hash(fn, train_file, tmp_path):
    same = [
        fn.with_spec(description="documented"),
        fn.with_spec(labels={"team": "ml"}),
        fn.with_spec(name="renamed"),
        fn.with_spec(replicas=None, retries=0, env={}, timeout=None),  # explicit defaults
    ]
    moved = tmp_path / "moved"
    moved.mkdir()
    same.append(shoal.Function.from_file(write(moved / "train.py", TRAIN), "train"))  # origin is not hashed
    assert {f.hash for f in same} == {fn.hash}
    assert same[0] != fn  # but they are not equal Functions


@pytest.mark.parametrize(
    "a, b",
    [
        ({"cpu": "1000m"}, {"cpu": 1}),
        ({"memory": "1Gi"}, {"memory": "1073741824"}),
        ({"requirements": ["numpy >= 1.26"]}, {"requirements": ["numpy>=1.26"]}),
        ({"env": {"A": "1", "B": "2"}}, {"env": {"B": "2", "A": 1}}),
        ({"replicas": 2}, {"replicas": {"min": 2, "max": 2}}),
        ({"defaults": {"shape": (2, 3)}}, {"defaults": {"shape": [2, 3]}}),
    ],
)
def test_equivalent_spellings_hash_the_same(fn, a, b):
    assert fn.with_spec(**a).hash == fn.with_spec(**b).hash


def test_hash_survives_the_store(any_project, fn):
    rich = fn.with_spec(
        cpu=("500m", "1"), volumes=[{"type": "pvc", "name": "d", "mount_path": "/d", "claim_name": "c"}]
    )
    any_project.functions.save(rich)
    back = any_project.functions.get("train")
    assert back.hash == rich.hash and back.spec == rich.spec and back(2) == {"value": 4}


# -- import weight ----------------------------------------------------------------------------------------


def test_import_shoal_loads_no_engine_or_database(tmp_path):
    code = (
        "import sys, shoal\n"
        "heavy = ('dask', 'distributed', 'ray', 'optuna', 'kubernetes', 'sqlalchemy')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    assert run_python(code, tmp_path).strip() == ""


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle"])
def test_a_pickled_function_runs_in_another_process_without_the_file(fn, train_file, tmp_path, pickler):
    """The receiver rebuilds from the shipped code, not from a module only this process has."""
    import pickle

    module = pickle if pickler == "pickle" else cloudpickle
    fn.hash  # capture the code
    payload = tmp_path / "fn.pkl"
    payload.write_bytes(module.dumps(fn))
    train_file.unlink()
    code = f"import {pickler}, sys\nfn = {pickler}.loads(open(sys.argv[1], 'rb').read())\nprint(fn.hash, fn(5)['value'])\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_python(code, elsewhere, str(payload)).split() == [fn.hash, "10"]
