"""``shoal tune`` and ``shoal studies`` run for real in subprocesses against a project in a temporary
folder; checks read the printed JSON/text and the project's records and study storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shoal
from shoal.tuning import load_study

TRAIN = '''
def train(ctx, lr: float, depth: int, kind: str = "a", epochs: int = 1):
    for step in range(2):
        ctx.report(lr * (step + 1), step)
    return {"accuracy": 1 - abs(lr - 0.1) - depth * 0.01 + (0.05 if kind == "b" else 0) + epochs * 0}
'''

SPACE = ["--space", "lr=loguniform(1e-4,1)", "--space", "depth=int(2,10)", "--space", "kind=[a,b,c]", "--space", "epochs=3"]


def shoal_cli(folder, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], cwd=folder, env=env, capture_output=True, text=True,
        timeout=120, input=stdin,
    )


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    return tmp_path


def test_tune_json_records_and_studies_commands(folder):
    done = shoal_cli(folder, "tune", "train.py:train", *SPACE, "--objective", "max.accuracy", "--trials", "6",
                     "--seed", "3", "--plot", "history.html", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["study"] == "train" and len(data["trials"]) == 6 and data["plot"].endswith("history.html")
    assert (folder / "history.html").stat().st_size > 1000
    assert all(t["params"].keys() == {"lr", "depth", "kind"} for t in data["trials"])
    project = shoal.Project(folder)
    parent = project.runs.get(data["parent"])
    assert parent.results["best_run"] == data["best_run"] and parent.results["best_value"] == data["best_value"]
    children = project.runs.list(parent=data["parent"], limit=None)
    assert len(children) == 6 and all(r.params["epochs"] == 3 for r in children)
    assert len(load_study("train", project=project).trials) == 6
    project.close()

    listed = shoal_cli(folder, "studies", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["name"] == "train" and row["trials"] == {"complete": 6} and row["best_value"] == data["best_value"]
    shown = shoal_cli(folder, "studies", "show", "train", "--top", "3", "--json")
    top = json.loads(shown.stdout)["top"]
    assert len(top) == 3 and top[0]["values"][0] == data["best_value"]
    text = shoal_cli(folder, "studies", "show", "train")
    assert text.returncode == 0 and "best value" in text.stdout and data["best_run"][:12] in text.stdout
    missing = shoal_cli(folder, "studies", "show", "nope")
    assert missing.returncode == 1 and "no study 'nope'" in missing.stderr


def test_tune_text_output_progress_and_resume(folder):
    done = shoal_cli(folder, "tune", "train.py:train", *SPACE, "--trials", "4", "--pruner", "median", "--strategy", "random")
    assert done.returncode == 0, done.stderr
    assert "study train: 4 trials" in done.stdout and "best value" in done.stdout
    assert "4/4" in done.stderr  # the progress bar, on stderr
    again = shoal_cli(folder, "tune", "train.py:train", *SPACE, "--trials", "6", "--strategy", "random", "--json")
    assert len(json.loads(again.stdout)["trials"]) == 6  # resumed: 2 more


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--space", "lr=loguniform(0,1)"], "--space lr: Float with log=True needs low > 0"),
        (["--space", "lr=uniform(0,1)", "--objective", "maximum.acc"], "max.KEY or min.KEY"),
        (["--space", "lr=uniform(0,1)", "--space", "nope=[1,2]"], "nope"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_records_nothing(folder, args, fragment):
    done = shoal_cli(folder, "tune", "train.py:train", "--trials", "2", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert not (folder / ".shoal" / "studies.journal").exists()


def test_a_search_where_every_trial_failed_exits_1_saying_so_and_a_rerun_runs_again(folder):
    (folder / "bad.py").write_text("def bad(x: float):\n    return {'other': x}\n")
    for _ in range(2):  # failed trials use up no budget: the rerun runs its 2 trials again
        done = shoal_cli(folder, "tune", "bad.py:bad", "--space", "x=uniform(0,1)", "--trials", "2")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "error: all 2 trials of study 'bad' failed, none completed" in done.stderr
        assert "the objective key 'accuracy' never logged; keys logged: other" in done.stderr
        assert "Traceback" not in done.stderr
    project = shoal.Project(folder)
    parents = [r for r in project.runs.list(limit=None) if r.parent is None]
    assert [r.state for r in parents] == ["failed", "failed"]
    assert all(len(project.runs.list(parent=r.uid, limit=None)) == 2 for r in parents)
    project.close()
    as_json = shoal_cli(folder, "tune", "bad.py:bad", "--space", "x=uniform(0,1)", "--trials", "1", "--json")
    assert as_json.returncode == 1 and as_json.stdout == "" and "error: 1 trial of study 'bad' failed" in as_json.stderr


def test_a_changed_space_names_cli_flags_and_studies_delete_starts_afresh(folder):
    first = shoal_cli(folder, "tune", "train.py:train", *SPACE, "--trials", "2", "--json")
    assert first.returncode == 0, first.stderr
    changed = ["--space", "lr=loguniform(1e-3,1)", "--space", "depth=int(2,10)", "--space", "epochs=3"]
    clash = shoal_cli(folder, "tune", "train.py:train", *changed, "--trials", "2")
    assert clash.returncode == 2 and "different search space" in clash.stderr
    assert "give --study NAME a new name" in clash.stderr and "shoal studies delete train" in clash.stderr
    assert "study=" not in clash.stderr and "optuna.delete_study" not in clash.stderr
    for answer in ("", "n\n"):  # no answer (end of input), or no: nothing deleted
        unasked = shoal_cli(folder, "studies", "delete", "train", stdin=answer)
        assert unasked.returncode == 1 and "delete study 'train' and its 2 trial(s)" in unasked.stdout
        assert "nothing deleted (pass --yes to delete without asking)" in unasked.stderr
    assert len(load_study("train", project=shoal.Project(folder)).trials) == 2
    deleted = shoal_cli(folder, "studies", "delete", "train", stdin="y\n")
    assert deleted.returncode == 0 and "deleted study train (2 trial(s))" in deleted.stdout
    first = shoal_cli(folder, "tune", "train.py:train", *SPACE, "--trials", "1", "--json")
    assert first.returncode == 0, first.stderr
    deleted = shoal_cli(folder, "studies", "delete", "train", "--yes")
    assert deleted.returncode == 0 and "deleted study train (1 trial(s))" in deleted.stdout
    again = shoal_cli(folder, "studies", "delete", "train", "--yes")
    assert again.returncode == 1 and "no study 'train'" in again.stderr
    rerun = shoal_cli(folder, "tune", "train.py:train", *changed, "--trials", "2", "--json")
    assert rerun.returncode == 0 and len(json.loads(rerun.stdout)["trials"]) == 2


def test_hints_name_flags_on_the_command_line(folder):
    unbounded = shoal_cli(folder, "tune", "train.py:train", *SPACE)  # tpe needs a bound
    assert unbounded.returncode == 2
    assert "give --trials N (or --timeout SECONDS) to bound the search, e.g. --trials 50" in unbounded.stderr
    assert "n_trials" not in unbounded.stderr


def test_a_parallelism_the_replicas_cannot_meet_is_a_warning_line(folder):
    (folder / "one.py").write_text(
        "import shoal\n\n@shoal.function(replicas=1)\ndef one(x: float):\n    return {'accuracy': x}\n"
    )
    done = shoal_cli(folder, "tune", "one.py:one", "--space", "x=uniform(0,1)", "--trials", "2", "--parallelism", "2")
    assert done.returncode == 0, done.stderr
    assert "warning: --parallelism 2 cannot be met: function 'one' has replicas (1, 1), so at most 1 trial(s)" in done.stderr
    assert "(--parallelism 1)" in done.stderr and "UserWarning" not in done.stderr
