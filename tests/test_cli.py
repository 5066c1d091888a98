"""The ``shoal`` command line, run for real in subprocesses against real SQLite projects (and
PostgreSQL when the server is up). No mocks: every check reads what the CLI printed and what it
stored in the project's database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import shoal
from shoal.scaffold import create_project

from helpers import cli, colliding_versions

TRAIN = '''\
import os

import shoal


@shoal.function(replicas=(0, 2), cpu="500m", description="tiny trainer")
def train(lr: float = 0.1, epochs: int = 3):
    print(f"training lr={lr} epochs={epochs}")
    return {"score": lr * epochs, "foo": os.environ.get("FOO", "")}
'''

HANDLERS = '''\
def plain(x: int = 1, name: str = "a"):
    print("hello from plain", x, name)
    return x * 2


def boom(n: int = 0):
    print("about to fail")
    raise RuntimeError(f"kaboom {n} [/x]")


def needs(x: int):
    return x


def literal(text: str = "[red]hi[/red] [/oops] :smile:"):
    return {"text": text}
'''


# -- helpers ----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    """In-process checks must read the test's project, not a database named by the environment."""
    for name in ("SHOAL_DATABASE", "SHOAL_ARTIFACTS", "SHOAL_PROJECT_DIR"):
        monkeypatch.delenv(name, raising=False)




def strict_json(text: str):
    """Parse stdout as strict JSON: NaN/Infinity tokens are not JSON."""

    def reject(token: str):
        raise AssertionError(f"non-standard JSON token {token} on stdout")

    return json.loads(text, parse_constant=reject)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int | None, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_project(root: Path, functions: dict | None = None, **settings) -> Path:
    """A project folder with train.py, handlers.py and a shoal.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(TRAIN)
    (root / "handlers.py").write_text(HANDLERS)
    config = {"name": settings.pop("name", "demo"), **settings}
    config["functions"] = functions if functions is not None else {"train": "train.py:train"}
    (root / "shoal.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def snapshot(root: Path, database: str | None = None) -> tuple[int, int, set[str]]:
    """(runs, stored function versions, files outside .shoal) of the project in ``root``."""
    with shoal.Project(root, database=database) as project:
        runs = len(project.runs.list())
        versions = sum(len(project.functions.history(r.name)) for r in project.functions.list())
    files = {str(p.relative_to(root)) for p in root.rglob("*") if ".shoal" not in p.parts}
    return runs, versions, files


def only_run(root: Path, **filters) -> shoal.Run:
    with shoal.Project(root) as project:
        runs = project.runs.list(**filters)
    assert len(runs) == 1, runs
    return runs[0]


# -- help and imports -------------------------------------------------------------------------------
def test_help_is_light_and_imports_no_engine(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        from shoal.cli.main import main
        for args in (["--help"], ["run", "--help"], ["runs", "list", "--help"]):
            try:
                main(args)
            except SystemExit as exc:
                assert exc.code in (0, None), exc.code
        heavy = ("dask", "distributed", "ray", "optuna", "kubernetes", "sqlalchemy", "alembic")
        print(json.dumps([name for name in heavy if name in sys.modules]), file=sys.stderr)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    for word in ("run", "functions", "runs", "init", "--param", "--json", "--state"):
        assert word in proc.stdout


# -- shoal init and the example -----------------------------------------------------------------------
def test_init_then_run_train_by_name(tmp_path):
    proc = cli(tmp_path, "init", "proj")
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "proj"
    assert (root / "train.py").is_file() and (root / ".shoal" / "shoal.db").is_file()
    config = yaml.safe_load((root / "shoal.yaml").read_text())
    assert config["name"] == "proj"
    assert config["functions"] == {"train": {"file": "train.py", "handler": "train"}}
    assert "-m shoal.cli.main -C proj run train --param lr=0.05" in proc.stdout  # as this test invoked shoal

    proc = cli(root, "run", "train", "--param", "lr=0.2", "--param", "epochs=50", "--json")
    assert proc.returncode == 0, proc.stderr
    run = strict_json(proc.stdout)
    assert run["state"] == "completed" and run["function"] == "train"
    assert run["params"] == {"lr": 0.2, "epochs": 50}
    assert 0.5 < run["results"]["accuracy"] <= 1.0
    assert "weights" in run["artifacts"]

    proc = cli(root, "runs", "list")
    assert proc.returncode == 0 and run["uid"][:12] in proc.stdout and "completed" in proc.stdout
    proc = cli(root, "functions", "list", "--json")
    [listed] = strict_json(proc.stdout)
    assert listed["name"] == "train" and listed["hash"] == run["function_hash"] and "latest" in listed["tags"]

    # Running init again creates nothing and keeps the user's files.
    (root / "train.py").write_text((root / "train.py").read_text() + "# mine\n")
    proc = cli(root, "init")
    assert proc.returncode == 0 and "created" not in proc.stdout
    assert (root / "train.py").read_text().endswith("# mine\n")


def test_init_with_unusable_database_or_config_writes_nothing(tmp_path):
    proc = cli(tmp_path, "init", "proj", env={"SHOAL_DATABASE": "postgresql+psycopg://postgres@127.0.0.1:1/x"})
    assert_one_line_error(proc, 1, "cannot connect")
    assert not (tmp_path / "proj").exists()

    root = tmp_path / "broken"
    root.mkdir()
    (root / "shoal.yaml").write_text("name: broken\nbogus: 1\n")
    proc = cli(root, "init")
    assert_one_line_error(proc, 2, "unknown key 'bogus'")
    assert sorted(p.name for p in root.iterdir()) == ["shoal.yaml"]


# -- running files, failures, logs ----------------------------------------------------------------------
def test_run_file_handler_logs_and_failed_run(tmp_path):
    root = write_project(tmp_path / "p")

    proc = cli(root, "run", "handlers.py:plain", "--param", "x=5")
    assert proc.returncode == 0, proc.stderr
    assert "hello from plain 5 a" in proc.stdout and "completed" in proc.stdout
    run = only_run(root, function="plain")
    assert run.results == {"return": 10} and run.params == {"x": 5}

    proc = cli(root, "runs", "logs", run.uid[:8])
    assert proc.returncode == 0 and proc.stdout == "hello from plain 5 a\n"

    proc = cli(root, "run", "handlers.py:boom", "--param", "n=3", "--json")
    assert proc.returncode == 1, proc.stderr
    failed = strict_json(proc.stdout)
    assert failed["state"] == "failed" and "kaboom 3" in failed["error"]["message"]

    proc = cli(root, "runs", "show", failed["uid"])
    assert proc.returncode == 0, proc.stderr
    assert "failed" in proc.stdout and "RuntimeError: kaboom 3 [/x]" in proc.stdout
    assert "Traceback" in proc.stdout and 'raise RuntimeError(f"kaboom {n} [/x]")' in proc.stdout

    proc = cli(root, "runs", "list", "--state", "failed", "--json")
    assert [r["uid"] for r in strict_json(proc.stdout)] == [failed["uid"]]
    proc = cli(root, "runs", "list", "--function", "plain", "--limit", "0", "--json")
    assert [r["uid"] for r in strict_json(proc.stdout)] == [run.uid]


def test_json_stdout_holds_only_json_and_tables_print_values_literally(tmp_path):
    root = write_project(tmp_path / "p")
    (root / "noisy.py").write_text(
        'print("printed at import")\n'
        "def f(ctx):\n"
        '    print("printed in handler")\n'
        '    return {"loss": float("nan"), "big": float("inf")}\n'
    )
    proc = cli(root, "run", "noisy.py:f", "--json")
    assert proc.returncode == 0, proc.stderr
    run = strict_json(proc.stdout)  # the module-level print went to stderr
    assert "printed at import" in proc.stderr and "printed" not in proc.stdout
    assert run["results"]["big"] in ("Infinity", "inf") and str(run["results"]["loss"]).lower() == "nan"

    # Rich markup and emoji codes in results and errors print as they are, without crashing.
    proc = cli(root, "run", "handlers.py:literal")
    assert proc.returncode == 0, proc.stderr
    assert "[red]hi[/red] [/oops] :smile:" in proc.stdout
    proc = cli(root, "runs", "show", "[/x]")
    assert_one_line_error(proc, None, "'[/x]'")


# -- yaml functions, relative paths, environment overrides --------------------------------------------------
def test_yaml_spec_fields_override_the_decorator(tmp_path):
    functions = {
        "big": {
            "handler": "train.py:train",
            "replicas": {"min": 2, "max": 4},
            "env": {"FOO": "from-yaml"},
            "labels": {"team": "ml"},
        }
    }
    root = write_project(tmp_path / "p", functions=functions)
    proc = cli(root, "run", "big", "--param", "epochs=2", "--json")
    assert proc.returncode == 0, proc.stderr
    run = strict_json(proc.stdout)
    assert run["function"] == "big" and run["results"] == {"score": 0.2, "foo": "from-yaml"}

    proc = cli(root, "functions", "show", "big", "--json")
    document = strict_json(proc.stdout)["document"]
    assert document["spec"]["replicas"] == {"min": 2, "max": 4}  # yaml over the decorator's (0, 2)
    assert document["spec"]["env"] == {"FOO": "from-yaml"}
    assert document["spec"]["resources"]["requests"]["cpu"] == "500m"  # the decorator's, untouched
    assert document["metadata"] == {"description": "tiny trainer", "labels": {"team": "ml"}}


def test_relative_yaml_paths_resolve_against_the_project_folder(tmp_path):
    root = tmp_path / "p"
    write_project(root, functions={"train": "src/train.py:train"}, home="state", database="sqlite:///db/p.db",
                  artifacts="arts")
    (root / "src").mkdir()
    (root / "train.py").rename(root / "src" / "train.py")
    (root / "src" / "art.py").write_text("def f(ctx):\n    ctx.log_artifact('note', 'hello')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    proc = cli(elsewhere, "-C", str(root), "run", "train", "--json")
    assert proc.returncode == 0, proc.stderr
    assert (root / "db" / "p.db").is_file() and not (root / "state" / "shoal.db").exists()
    assert not (elsewhere / "db").exists() and not (elsewhere / ".shoal").exists()
    # -C works like git -C: files given on the command line are found in the project folder too.
    proc = cli(elsewhere, "-C", str(root), "run", "src/art.py:f", "--json")
    assert proc.returncode == 0, proc.stderr
    url = strict_json(proc.stdout)["artifacts"]["note"]["url"]
    assert url.startswith((root / "arts").as_uri()), url
    # A mistyped project folder is an error, not a new empty project.
    proc = cli(elsewhere, "-C", str(tmp_path / "typo"), "runs", "list")
    assert_one_line_error(proc, 2, "does not exist")
    assert not (tmp_path / "typo").exists()


def test_environment_overrides_database_and_artifacts(tmp_path):
    root = write_project(tmp_path / "p", database="sqlite:///from-yaml.db")
    database = f"sqlite:///{tmp_path / 'env.db'}"
    env = {"SHOAL_DATABASE": database, "SHOAL_ARTIFACTS": str(tmp_path / "env-arts")}
    (root / "art.py").write_text("def f(ctx):\n    ctx.log_artifact('note', 'hello')\n")
    proc = cli(root, "run", "art.py:f", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    run = strict_json(proc.stdout)
    assert run["artifacts"]["note"]["url"].startswith((tmp_path / "env-arts").as_uri())
    assert not (root / "from-yaml.db").exists()
    assert snapshot(root, database=database)[0] == 1
    proc = cli(root, "runs", "show", run["uid"], "--json", env=env)
    assert proc.returncode == 0 and strict_json(proc.stdout)["uid"] == run["uid"]


# -- versions ---------------------------------------------------------------------------------------------
def test_functions_history_show_and_diff_a_code_change(tmp_path):
    root = write_project(tmp_path / "p")
    with shoal.Project(root) as project:
        first = project.functions.save(shoal.Function.from_file(root / "train.py", "train"))
    (root / "train.py").write_text(TRAIN.replace("lr * epochs", "lr * epochs * 2"))
    second = strict_json(cli(root, "run", "train", "--json").stdout)
    assert first.hash != second["function_hash"] and second["results"]["score"] == pytest.approx(0.6)

    proc = cli(root, "functions", "history", "train", "--json")
    assert [v["hash"] for v in strict_json(proc.stdout)] == [second["function_hash"], first.hash]
    old, new = f"train@{first.hash[:8]}", f"train@{second['function_hash'][:8]}"
    proc = cli(root, "functions", "diff", old, new)
    assert proc.returncode == 0, proc.stderr
    assert '-    return {"score": lr * epochs,' in proc.stdout
    assert '+    return {"score": lr * epochs * 2,' in proc.stdout
    proc = cli(root, "functions", "show", old)
    assert proc.returncode == 0 and first.hash in proc.stdout and "lr * epochs," in proc.stdout


def test_ambiguous_hash_prefix_is_a_clear_error(tmp_path):
    root = write_project(tmp_path / "p")
    first, fn = colliding_versions(shoal.Function.from_file(root / "train.py", "train"))
    with shoal.Project(root) as project:
        project.functions.save(first)
        project.functions.save(fn)
    before = snapshot(root)
    proc = cli(root, "run", f"train@{fn.hash[:4]}")
    assert_one_line_error(proc, None, "matches several versions")
    assert snapshot(root) == before
    proc = cli(root, "functions", "show", f"train@{fn.hash[:16]}", "--json")
    assert strict_json(proc.stdout)["hash"] == fn.hash


# -- bad input: one line, exit code, nothing changed ---------------------------------------------------------
def _entry(**fields) -> dict:
    return {"train": {"handler": "train.py:train", **fields}}


BAD_INPUT = [
    # id, shoal.yaml functions (None: keep), extra yaml settings, args, exit code, message fragment
    ("unknown-spec-field", _entry(replicaz=3), {}, ["run", "train"], 2, "unknown field 'replicaz'"),
    ("malformed-quantity", _entry(memory="2Gx"), {}, ["run", "train"], 2, "'2Gx'"),
    ("negative-quantity", _entry(cpu="-1"), {}, ["run", "train"], 2, "negative"),
    ("min-over-max", _entry(replicas={"min": 3, "max": 1}), {}, ["run", "train"], 2, "min (3) is greater than max"),
    ("limit-below-request", _entry(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}), {},
     ["run", "train"], 2, "below requests.memory"),
    # Only what could be a handler is listed: train.py also imports os and shoal.
    ("handler-not-found", None, {}, ["run", "train.py:nope"], 2, "handler 'nope' not found in"),
    ("handler-not-found-lists-defs", None, {}, ["run", "train.py:nope"], 2, "train.py; it defines: train"),
    ("file-not-found", None, {}, ["run", "missing.py:train"], 2, "file not found"),
    ("syntax-error", None, {}, ["run", "broken.py:f"], 2, "syntax error"),
    ("yaml-file-not-found", {"train": "gone.py:train"}, {}, ["run", "train"], 2, "functions.train: file not found"),
    ("missing-required-param", None, {}, ["run", "handlers.py:needs"], 2, "missing required parameter 'x'"),
    ("unknown-param", None, {}, ["run", "train", "--param", "nope=1"], 2, "unknown parameter 'nope' for train; it accepts"),
    ("unknown-param-renamed", {"big": "train.py:train"}, {}, ["run", "big", "--param", "nope=1"], 2,
     "unknown parameter 'nope' for big (handler train); it accepts"),
    ("unconvertible-param", None, {}, ["run", "train", "--param", "epochs=ten"], 2, "'epochs' expects int"),
    ("param-not-key-value", None, {}, ["run", "train", "--param", "epochs"], 2, "not key=value"),
    ("missing-input-file", None, {}, ["run", "train", "--input", "data=nofile.csv"], 2, "no such file"),
    ("unknown-function", None, {}, ["run", "nope"], 1, "no function named 'nope'"),
    ("unknown-tag", None, {}, ["run", "train:v9"], 1, "no tag 'v9'"),
    ("unknown-hash", None, {}, ["run", "train@abcdef12"], 1, "no version"),
    ("unknown-backend", None, {}, ["run", "train", "--backend", "spark"], 2, "unknown backend 'spark'"),
    ("unknown-backend-scheme", None, {}, ["run", "train", "--backend", "spark://host:7077"], 2, "unknown backend 'spark'"),
    ("unknown-config-key", None, {"bogus": 1}, ["run", "train"], 2, "unknown key 'bogus'"),
    ("yaml-database-unreachable", None, {"database": "postgresql+psycopg://postgres@127.0.0.1:1/x"},
     ["run", "train"], 1, "cannot connect to PostgreSQL"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, case):
    name, functions, settings, args, code, fragment = case
    root = write_project(tmp_path / "p")
    (root / "broken.py").write_text("def f(:\n    pass\n")
    with shoal.Project(root) as project:  # one stored version, tagged, so tags and hashes resolve
        project.functions.save(shoal.Function.from_file(root / "train.py", "train"), tag="v1")
    # A later edit: anything that saved the function now would add a version.
    (root / "train.py").write_text(TRAIN + "# edited\n")
    before = snapshot(root)
    original = (root / "shoal.yaml").read_text()
    if functions is not None or settings:
        config = {**yaml.safe_load(original), **settings}
        config["functions"] = functions if functions is not None else config["functions"]
        (root / "shoal.yaml").write_text(yaml.safe_dump(config))

    proc = cli(root, *args, "--json") if args[0] == "run" else cli(root, *args)

    assert_one_line_error(proc, code, fragment)
    assert proc.stdout == ""
    (root / "shoal.yaml").write_text(original)
    assert snapshot(root) == before


def test_bad_database_in_environment_exits_promptly(tmp_path):
    root = write_project(tmp_path / "p")
    before = snapshot(root)
    # The parent of the database "file" is a regular file: nothing can be created there.
    env = {"SHOAL_DATABASE": f"sqlite:///{root / 'train.py' / 'x.db'}"}
    proc = cli(root, "run", "train", env=env)
    assert_one_line_error(proc, 1, "train.py/x.db")
    assert (root / "train.py").read_text() == TRAIN
    proc = cli(root, "runs", "list", env={"SHOAL_DATABASE": "not a url"})
    assert_one_line_error(proc, 1, "invalid database URL")
    assert snapshot(root) == before


def test_usage_errors_and_debug(tmp_path):
    root = write_project(tmp_path / "p")
    proc = cli(root, "runs", "list", "--state", "bogus")
    assert_one_line_error(proc, 2, "unknown run state 'bogus'")
    proc = cli(root, "runs", "list", "--limit", "-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (root / "afile").write_text("x")
    proc = cli(root, "init", "afile/sub")
    assert_one_line_error(proc, None, "afile")
    proc = cli(root, "--debug", "run", "nope")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "NotFoundError" in proc.stderr


# -- PostgreSQL -------------------------------------------------------------------------------------------
def test_cli_on_postgresql(tmp_path, pg_project):
    root = write_project(tmp_path / "p", name=pg_project.name, database=pg_project.database)
    proc = cli(root, "run", "train", "--param", "epochs=4", "--json")
    assert proc.returncode == 0, proc.stderr
    run = strict_json(proc.stdout)
    assert run["results"]["score"] == pytest.approx(0.4)
    assert not (root / ".shoal" / "shoal.db").exists()
    proc = cli(root, "runs", "list", "--json")
    assert [r["uid"] for r in strict_json(proc.stdout)] == [run["uid"]]
    assert [r.uid for r in pg_project.runs.list()] == [run["uid"]]


# -- one voice: flags, tracebacks, widths, the next command -------------------------------------------------
def test_help_shows_flags_as_flags(tmp_path):
    for args in (["--help"], ["run", "--help"], ["runs", "list", "--help"], ["tune", "--help"]):
        proc = cli(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr
        assert "--json" in proc.stdout or "--debug" in proc.stdout
        assert "<bool>" not in proc.stdout, proc.stdout
    assert "<str>" in cli(tmp_path, "run", "--help").stdout  # options that take a value still say so


def test_tracebacks_start_at_the_users_code_and_debug_keeps_all(tmp_path):
    root = write_project(tmp_path / "p")
    failed = strict_json(cli(root, "run", "handlers.py:boom", "--backend", "local", "--json").stdout)
    assert failed["state"] == "failed"
    shown = failed["error"]["traceback"]
    first_frame = shown.splitlines()[1]
    assert first_frame.strip().startswith('File "') and "handlers.py" in first_frame, shown
    assert "execution.py" not in shown and "RuntimeError: kaboom 0 [/x]" in shown
    assert "execution.py" in failed["error"]["traceback_full"]

    proc = cli(root, "runs", "show", failed["uid"])
    assert 'raise RuntimeError(f"kaboom {n} [/x]")' in proc.stdout and "execution.py" not in proc.stdout
    proc = cli(root, "--debug", "runs", "show", failed["uid"])
    assert 'raise RuntimeError(f"kaboom {n} [/x]")' in proc.stdout and "execution.py" in proc.stdout


def test_without_a_terminal_tables_print_whole_values(tmp_path):
    root = write_project(tmp_path / "p")
    long_value = "v" * 150 + "-end"
    (root / "wide.py").write_text(f"def f():\n    return {{'note': {long_value!r}}}\n")
    no_width = {"COLUMNS": ""}  # stdout is a pipe here, as in CI logs or `| grep`
    proc = cli(root, "run", "wide.py:f", "--backend", "local", env=no_width)
    assert proc.returncode == 0, proc.stderr
    assert long_value in proc.stdout and "…" not in proc.stdout
    proc = cli(root, "runs", "list", env=no_width)
    assert long_value in proc.stdout and "…" not in proc.stdout
    uid = only_run(root, function="f").uid
    proc = cli(root, "runs", "show", uid, env=no_width)
    assert uid in proc.stdout and long_value in proc.stdout

    # The tune progress line (stderr) is whole too: the best value and the elapsed time at its end.
    proc = cli(root, "tune", "train", "--space", "lr=[0.1,0.2]", "--objective", "max.score", "--strategy", "grid",
               "--backend", "local", env=no_width)
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("study train")]
    assert "…" not in line and len(line) > 80, line
    assert re.search(r" 2/2 running 0 .* best 0\.6 \(trial \d\) \d+:\d\d:\d\d$", line.rstrip()), line


def _shell(command: str, cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``command`` through the shell, as a user types it; whatever it leaves in its process group is
    killed afterwards (the embedded cluster's processes, were any left behind)."""
    proc = subprocess.Popen(command, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            out, err = proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _next_command(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.startswith("next: ")]
    return line[len("next: "):]


def test_init_prints_a_command_that_works_as_invoked(tmp_path):
    """`next:` names the program as the user ran it: here the venv's shoal, which is not on PATH."""
    program = Path(sys.executable).with_name("shoal")
    if not program.is_file():
        pytest.skip(f"no console script beside {sys.executable} (shoal installed without scripts)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_") and k != "VIRTUAL_ENV"}
    environ["PATH"] = os.pathsep.join(p for p in environ.get("PATH", "").split(os.pathsep)
                                      if Path(p).resolve() != program.parent.resolve())
    relative = os.path.relpath(program, tmp_path)
    proc = subprocess.run([relative, "init", "demo"], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    command = _next_command(proc.stdout)
    assert command == f"{relative} -C demo run train --param lr=0.05"
    # As printed (the project's default backend, the embedded Dask cluster), from the same folder.
    done = _shell(command, tmp_path, environ)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout

    # Run as a module, it names the interpreter; run from the project folder, no -C.
    proc = cli(tmp_path, "init", "other")
    command = _next_command(proc.stdout)
    assert command.endswith("-m shoal.cli.main -C other run train --param lr=0.05"), command
    done = _shell(command + " --backend local", tmp_path, environ)
    assert done.returncode == 0, done.stdout + done.stderr
    proc = cli(tmp_path / "other", "init")
    assert _next_command(proc.stdout).endswith("-m shoal.cli.main run train --param lr=0.05")
