"""A pipeline's hash covers the shoal functions its body calls: changing a step's code (in another
file, loaded with ``Function.from_file``) makes a new pipeline version though its own file is unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import shoal

STEPS = textwrap.dedent(
    """
    def train(lr: float = 0.1):
        return {"score": lr * 10}
    """
)

FLOWS = textwrap.dedent(
    """
    import shoal

    train = shoal.Function.from_file("steps.py", handler="train")


    @shoal.pipeline
    def training(lrs: list = [0.1, 0.2]):
        return [train.submit({"lr": lr}) for lr in lrs]
    """
)

RUN = textwrap.dedent(
    """
    import json
    import shoal

    training = shoal.Function.from_file("flows.py", handler="training")
    run = training.run(backend="local")
    print(json.dumps({"hash": training.hash, "code": training.code.fingerprint, "state": run.state,
                      "run_hash": run.function_hash, "steps": training.step_hashes}))
    """
)


def _run(folder) -> dict:
    import json

    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    proc = subprocess.run(
        [sys.executable, "run.py"], cwd=folder, env=environ, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_changing_a_step_file_makes_a_new_pipeline_version(tmp_path, monkeypatch):
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "flows.py").write_text(FLOWS)
    (tmp_path / "run.py").write_text(RUN)
    first = _run(tmp_path)
    assert first["state"] == "completed" and first["run_hash"] == first["hash"]
    assert list(first["steps"]) == ["train"]
    same = _run(tmp_path)
    assert same["hash"] == first["hash"]  # nothing changed: the same version, in any process

    (tmp_path / "steps.py").write_text(STEPS.replace("lr * 10", "lr * 100"))
    second = _run(tmp_path)
    assert second["code"] == first["code"]  # the pipeline's own file did not change...
    assert second["hash"] != first["hash"]  # ...but its step did: a new version
    assert second["steps"]["train"] != first["steps"]["train"]
    monkeypatch.chdir(tmp_path)  # in the project folder, as the CLI works
    project = shoal.Project(tmp_path)
    try:
        versions = {record.hash for record in project.functions.history("training")}
        assert versions == {first["hash"], second["hash"]}
        stored = project.functions.get(f"training@{second['hash']}")
        assert isinstance(stored, shoal.Pipeline) and stored.hash == second["hash"]
        # a stored version keeps the step hashes it was recorded with, though steps.py changed since
        older = project.functions.get(f"training@{first['hash']}")
        assert older.hash == first["hash"] and older.step_hashes == first["steps"]
    finally:
        project.close()


def _pipeline_over(step):
    @shoal.pipeline
    def flow(x: int = 1):
        return step.submit({"x": x})

    return flow


def test_the_hash_follows_closure_steps_and_round_trips():
    @shoal.function
    def one(x: int = 1):
        return x

    @shoal.function
    def two(x: int = 1):
        return x + 1

    a, b, a_again = _pipeline_over(one), _pipeline_over(two), _pipeline_over(one)
    assert a.hash != b.hash  # one body calling different functions
    assert a.hash == a_again.hash
    assert a.step_hashes == {"step": one.hash}
    assert shoal.Function.from_dict(a.to_dict()).code.fingerprint == a.code.fingerprint


def test_steps_are_found_in_containers_nested_code_and_modules():
    import types

    from shoal.pipelines.step_functions import referenced_functions

    @shoal.function
    def one(x: int = 1):
        return x

    @shoal.function
    def two(x: int = 1):
        return x + 1

    module = types.ModuleType("stepsmod")
    module.train = one  # type: ignore[attr-defined]
    scope = {"models": [one, two], "stepsmod": module, "unused": two}
    exec("def body():\n    return [m.submit() for m in models] + [stepsmod.train.submit()]", scope)  # noqa: S102
    found = referenced_functions(scope["body"])
    assert found == {"models[0]": one, "models[1]": two, "stepsmod.train": one}  # "unused" is not read
