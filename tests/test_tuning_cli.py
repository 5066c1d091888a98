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


def shoal_cli(folder, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120
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


def test_failed_search_exits_1(folder):
    (folder / "bad.py").write_text("def bad(x: float):\n    return {'other': x}\n")
    done = shoal_cli(folder, "tune", "bad.py:bad", "--space", "x=uniform(0,1)", "--trials", "2")
    assert done.returncode == 1 and "no trial completed" in done.stdout
