"""``shoal.Project`` and ``shoal init``'s scaffold, in process, on real SQLite projects in tmp_path."""

from __future__ import annotations

import pathlib

import pytest
import yaml

import shoal
from shoal.errors import AmbiguousError, NotFoundError, ParamError, ProjectError, SpecError, StoreError
from shoal.project import load_config, masked
from shoal.scaffold import create_project

from helpers import colliding_versions

DECORATED = '''\
import shoal


@shoal.function(replicas=(0, 2), cpu="500m", env={"A": "1"}, description="decorated")
def step(x: int = 1):
    return x + 1
'''

PLAIN = "def double(x: int = 1):\n    return 2 * x\n"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ("SHOAL_DATABASE", "SHOAL_ARTIFACTS", "SHOAL_PROJECT_DIR"):
        monkeypatch.delenv(name, raising=False)


def write(root: pathlib.Path, config: dict | None = None, **files: str) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    if config is not None:
        (root / "shoal.yaml").write_text(yaml.safe_dump(config))
    return root


# -- settings -------------------------------------------------------------------------------------------
def test_defaults_live_in_the_home_folder(tmp_path):
    root = tmp_path / "My Proj"
    with shoal.Project(root) as project:
        assert project.name == "My-Proj"
        assert project.home == root / ".shoal"
        assert project.database == f"sqlite:///{root / '.shoal' / 'shoal.db'}"
        assert project.artifacts_url == str(root / ".shoal" / "artifacts")
        assert project.function_specs == {}
        project.store  # opening creates the database file
    assert (root / ".shoal" / "shoal.db").is_file()


def test_yaml_settings_resolve_against_the_project_folder(tmp_path, monkeypatch):
    root = write(
        tmp_path / "p",
        {"name": "named", "home": "state", "database": "sqlite:///db/x.db", "artifacts": "arts", "backend": "local"},
    )
    monkeypatch.chdir(tmp_path)  # not the project folder
    project = shoal.Project("p")
    assert project.name == "named" and project.home == root / "state"
    assert project.database == f"sqlite:///{root / 'db' / 'x.db'}"
    assert project.artifacts_url == str(root / "arts") and project.default_backend == "local"
    # fsspec URLs and absolute SQLite paths are kept as they are.
    write(root, {"artifacts": "memory://bucket/arts", "database": f"sqlite:///{tmp_path / 'abs.db'}"})
    project = shoal.Project(root)
    assert project.artifacts_url == "memory://bucket/arts" and project.database == f"sqlite:///{tmp_path / 'abs.db'}"


def test_environment_and_arguments_override_the_yaml(tmp_path, monkeypatch):
    root = write(tmp_path / "p", {"database": "sqlite:///yaml.db", "artifacts": "yaml-arts"})
    monkeypatch.setenv("SHOAL_DATABASE", "sqlite:///" + str(tmp_path / "env.db"))
    monkeypatch.setenv("SHOAL_ARTIFACTS", "memory://env")
    project = shoal.Project(root)
    assert project.database.endswith("env.db") and project.artifacts_url == "memory://env"
    project = shoal.Project(root, database="sqlite://", artifacts=str(tmp_path / "arg"))
    assert project.database == "sqlite://" and project.artifacts_url == str(tmp_path / "arg")


def test_project_function_caches_per_settings_and_environment(tmp_path, monkeypatch):
    first = shoal.project(tmp_path)
    assert shoal.project(str(tmp_path)) is first
    monkeypatch.setenv("SHOAL_DATABASE", "sqlite://")
    other = shoal.project(tmp_path)
    assert other is not first and other.database == "sqlite://"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("- a\n", "expected a mapping"),
        ("name: [a\n", "invalid YAML"),
        ("database: 5\n", "'database' must be a string"),
        ("home: [a]\n", "'home' must be a string"),
        ("artifacts: 3\n", "'artifacts' must be a string"),
        ("name: 2024\n", "'name' must be a string"),
        ("functions: [a]\n", "'functions' must map names"),
        ("functions: {1: f.py:f}\n", "function name 1 must be a string"),
        ("name: 'bad name!'\n", "invalid project name"),
    ],
)
def test_invalid_config_is_a_project_error(tmp_path, text, fragment):
    (tmp_path / "shoal.yaml").write_text(text)
    with pytest.raises(ProjectError, match=None) as caught:
        shoal.Project(tmp_path)
    assert fragment in str(caught.value)
    assert not (tmp_path / ".shoal").exists()


def test_masked_hides_passwords():
    assert masked("postgresql+psycopg://me:s3cret@db:5432/x") == "postgresql+psycopg://me:***@db:5432/x"
    assert "s3cret" not in repr(shoal.Project(".", database="postgresql+psycopg://me:s3cret@db/x"))


# -- functions from shoal.yaml -----------------------------------------------------------------------------
def test_yaml_function_overrides_the_decorator(tmp_path):
    config = {
        "functions": {
            "big": {
                "file": "src/step.py",
                "handler": "step",
                "replicas": [1, 4],
                "env": {"B": "2"},
                "memory": "1Gi",
                "labels": {"t": "x"},
            },
            "short": "src/step.py:step",
            "plain": {"handler": "plain.py:double", "memory": "1Gi", "defaults": {"x": 3}},
        }
    }
    root = write(tmp_path / "p", config, **{"plain.py": PLAIN})
    (root / "src").mkdir()
    (root / "src" / "step.py").write_text(DECORATED)
    project = shoal.Project(root)

    big = project.get_function("big")
    assert big.name == "big" and big.handler == "step"
    assert (big.replicas.min, big.replicas.max) == (1, 4)
    assert big.spec.env == {"B": "2"}  # the yaml's env replaces the decorator's
    assert big.spec.resources.requests.cpu == "500m"  # the decorator's, kept beside the yaml's memory
    assert big.spec.resources.requests.memory == "1Gi"
    assert big.description == "decorated" and big.labels == {"t": "x"}

    short = project.get_function("short")
    assert (short.replicas.min, short.replicas.max) == (0, 2) and short.spec.env == {"A": "1"}
    assert short.hash != big.hash

    plain = project.get_function("plain")
    assert plain.spec.resources.requests.memory == "1Gi" and plain.spec.defaults == {"x": 3}
    assert plain(4) == 8


@pytest.mark.parametrize(
    "entry, error, fragment",
    [
        ({"handler": "step.py:step", "replicaz": 3}, SpecError, "functions.f: unknown field 'replicaz'"),
        ({"handler": "step.py:step", "memory": "2Gx"}, SpecError, "functions.f: invalid spec field"),
        ({"handler": "step.py:step", "replicas": {"min": 3, "max": 1}}, SpecError, "min (3) is greater than max"),
        ({"handler": "step.py:step", "name": "other"}, ProjectError, "remove 'name'"),
        ({"file": "step.py"}, ProjectError, "needs file and handler"),
        (5, ProjectError, "must be 'file.py:handler'"),
        ({"handler": "gone.py:step"}, shoal.CodeError, "functions.f: file not found"),
        ({"handler": "step.py:nope"}, shoal.CodeError, "handler 'nope' not found"),
    ],
)
def test_bad_yaml_function_entries(tmp_path, entry, error, fragment):
    root = write(tmp_path / "p", {"functions": {"f": entry}}, **{"step.py": DECORATED})
    project = shoal.Project(root)  # entries are checked when used, so one bad entry blocks only itself
    with pytest.raises(error) as caught:
        project.get_function("f")
    assert fragment in str(caught.value)


def test_unknown_name_lists_the_yaml_functions(tmp_path):
    root = write(tmp_path / "p", {"functions": {"f": "step.py:step"}}, **{"step.py": DECORATED})
    with shoal.Project(root) as project, pytest.raises(NotFoundError) as caught:
        project.get_function("g")
    assert "'g'" in str(caught.value) and "shoal.yaml lists: f" in str(caught.value)


# -- function versions -------------------------------------------------------------------------------------
def test_save_get_list_history_diff(tmp_path):
    root = write(tmp_path / "p", **{"step.py": DECORATED})
    with shoal.Project(root) as project:
        first = shoal.Function.from_file(root / "step.py", "step")
        second = first.with_spec(replicas=(0, 3))
        assert project.functions.save(first, tag="v1") is first
        project.functions.save(second, tag="v2")
        project.functions.save(second)  # idempotent

        assert project.functions.get("step").hash == second.hash
        assert project.functions.get("step:v1").hash == first.hash
        assert project.functions.get(f"step@{first.hash[:6]}").hash == first.hash
        assert project.functions.get(f"step@{first.hash[:8].upper()}").hash == first.hash
        assert project.functions.get("step:v1") == first
        assert [r.name for r in project.functions.list()] == ["step"]
        history = project.functions.history("step")
        assert [r.hash for r in history] == [second.hash, first.hash]
        assert set(history[0].tags) == {"latest", "v2"} and history[1].tags == ("v1",)

        diff = project.functions.diff("step:v1", "step:v2")
        assert "-    max: 2" in diff and "+    max: 3" in diff
        assert project.functions.diff("step:v1", f"step@{first.hash[:10]}") == ""

        for ref, error in [("nope", NotFoundError), ("step:v9", NotFoundError), ("step@abc", SpecError),
                           ("step@zzzz", SpecError), ("", SpecError)]:
            with pytest.raises(error):
                project.functions.get(ref)
        with pytest.raises(SpecError):
            project.functions.save(first, tag="bad tag")
        with pytest.raises(shoal.ShoalError):
            project.functions.save("step")


def test_ambiguous_hash_prefix(tmp_path):
    root = write(tmp_path / "p", **{"step.py": DECORATED})
    first, fn = colliding_versions(shoal.Function.from_file(root / "step.py", "step"))
    with shoal.Project(root) as project:
        project.functions.save(first)
        project.functions.save(fn)
        with pytest.raises(AmbiguousError, match="matches several versions"):
            project.functions.get(f"step@{fn.hash[:4]}")
        assert project.functions.get(f"step@{fn.hash[:20]}").hash == fn.hash


def test_stored_version_when_yaml_lacks_the_name(tmp_path):
    root = write(tmp_path / "p", {"functions": {"f": "step.py:step"}}, **{"step.py": DECORATED, "plain.py": PLAIN})
    with shoal.Project(root) as project:
        project.functions.save(shoal.Function.from_file(root / "plain.py", "double"))
        assert project.get_function("double").handler == "double"
        # A yaml name not stored yet still resolves through the registry.
        assert project.functions.get("f").name == "f"


# -- runs ---------------------------------------------------------------------------------------------------
def test_runs_get_and_list_filters(tmp_path):
    root = write(tmp_path / "p", **{"plain.py": PLAIN + "\ndef fail():\n    raise ValueError('no')\n"})
    with shoal.Project(root) as project:
        double = shoal.Function.from_file(root / "plain.py", "double")
        fail = shoal.Function.from_file(root / "plain.py", "fail")
        done = [double.run({"x": i}, project=project, watch=False) for i in range(3)]
        failed = fail.run(project=project, watch=False)
        children = double.map([{"x": 10}, {"x": 11}], project=project)

        assert project.runs.get(done[0].uid).results == {"return": 0}
        assert project.runs.get(done[1].uid[:8]).uid == done[1].uid
        assert [r.uid for r in project.runs.list(state="failed")] == [failed.uid]
        assert project.runs.get(failed.uid).error["type"] == "ValueError"
        assert {r.uid for r in project.runs.list(function="fail")} == {failed.uid}
        parent = children[0].parent
        assert sorted(r.iteration for r in project.runs.list(parent=parent)) == [0, 1]
        assert len(project.runs.list(function="double", state="completed")) == 6  # 3 runs, 1 parent, 2 children
        assert len(project.runs.list(limit=2)) == 2 and len(project.runs.list(limit=0)) == 0
        assert len(project.runs.list(state=["completed", "failed"])) == 7
        for bad in ({"state": "bogus"}, {"state": ["completed", "nope"]}, {"limit": -1}, {"limit": "5"}):
            with pytest.raises(ParamError):
                project.runs.list(**bad)
        with pytest.raises(NotFoundError):
            project.runs.get("ffff0000")


# -- shoal init's scaffold -----------------------------------------------------------------------------------
def test_create_project_writes_a_runnable_example(tmp_path):
    project, created = create_project(tmp_path / "2024")
    root = tmp_path / "2024"
    assert sorted(created) == [str(root / "shoal.yaml"), str(root / "train.py")]
    config = load_config(root)
    assert config["name"] == "2024"  # quoted, so YAML does not read it as a number
    assert config["functions"] == {"train": {"file": "train.py", "handler": "train"}}
    assert project.name == "2024" and (root / ".shoal" / "shoal.db").is_file()

    train = project.get_function("train")
    run = train.run({"lr": 0.5, "epochs": 40}, project=project, watch=False)
    assert run.state == "completed" and 0.5 < run.results["accuracy"] <= 1.0
    assert run.artifacts["weights"].load().shape == (5,)
    project.close()

    # Again: nothing created, nothing overwritten.
    (root / "train.py").write_text("# mine\n" + (root / "train.py").read_text())
    _, created = create_project(root)
    assert created == [] and (root / "train.py").read_text().startswith("# mine\n")


def test_create_project_respects_the_users_files(tmp_path):
    root = write(tmp_path / "own", **{"train.py": "x = 1\n"})
    project, created = create_project(root)
    assert created == [str(root / "shoal.yaml")] and (root / "train.py").read_text() == "x = 1\n"
    assert project.function_specs == {}  # their train.py has no train(): nothing listed
    _, created = create_project(tmp_path / "bare", example=False)
    assert created == [str(tmp_path / "bare" / "shoal.yaml")] and not (tmp_path / "bare" / "train.py").exists()
    with pytest.raises(ProjectError, match="already names the project 'own'"):
        create_project(root, name="other")


def test_create_project_failures_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_DATABASE", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    with pytest.raises(StoreError):
        create_project(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    monkeypatch.delenv("SHOAL_DATABASE")

    broken = write(tmp_path / "broken")
    (broken / "shoal.yaml").write_text("name: broken\nbogus: 1\n")
    with pytest.raises(ProjectError):
        create_project(broken)
    assert [p.name for p in broken.iterdir()] == ["shoal.yaml"]

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ProjectError, match="not a folder"):
        create_project(tmp_path / "afile")
    with pytest.raises(ProjectError, match="cannot create"):
        create_project(tmp_path / "afile" / "sub")
    with pytest.raises(ProjectError, match="invalid project name"):
        create_project(tmp_path / "named", name="bad name!")
    assert not (tmp_path / "named").exists()
