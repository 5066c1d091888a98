"""``shoal.tune`` as a pipeline step on every engine: its outputs feed later steps, its run is the
step's (trials its children), it is cached like any step, and a failed search fails its consumers."""

from __future__ import annotations

import textwrap

import pytest

import shoal
from shoal.errors import ParamError, PipelineError, TuningError
from shoal.tuning import Float

STEPS = textwrap.dedent(
    """
    def prep(ctx, rows: int = 5):
        ctx.log_artifact("dataset", list(range(rows)))
        ctx.log_result("scale", 2.0)


    def train(ctx, dataset, lr: float = 0.1, scale: float = 1.0):
        ctx.log_result("loss", (lr - 0.3) ** 2 * scale + 0 * len(dataset))
        ctx.log_artifact("model", {"lr": lr, "rows": len(dataset)})


    def broken(lr: float = 0.1):
        raise RuntimeError("this objective always fails")


    def report(best_params: dict, best_value: float, model: dict, loss: float):
        return {"lr": best_params["lr"], "value": best_value, "model": model, "loss": loss}


    def boom():
        raise RuntimeError("producer fails on purpose")


    def note(text: str = ""):
        return {"text": text}
    """
)


@pytest.fixture
def steps(project):
    path = project.root / "steps.py"
    path.write_text(STEPS)
    return {
        name: shoal.Function.from_file(path, handler=name)
        for name in ("prep", "train", "broken", "report", "note", "boom")
    }


def _children(project, uid):
    return sorted(project.store.list_runs(parent=uid), key=lambda r: r.iteration)


def _flow(steps, n_trials=3, **options):
    prep, train, report = steps["prep"], steps["train"], steps["report"]

    @shoal.pipeline
    def flow(rows: int = 5):
        data = prep.submit({"rows": rows})
        search = shoal.tune(
            train,
            {"lr": Float(0.0, 1.0), "scale": data.output("scale")},  # a constant another step produces
            objective="min.loss",
            n_trials=n_trials,
            inputs={"dataset": data.output("dataset")},
            seed=3,
            **options,
        )
        return report.submit(
            {
                "best_params": search.output("best_params"),
                "best_value": search.output("best_value"),
                "model": search.output("model"),  # the best trial's artifact
                "loss": search.output("loss"),  # the best trial's result
            }
        )

    return flow


def test_search_step_feeds_later_steps_records_its_trials_and_reruns_cached(project, steps, engine):
    flow = _flow(steps)
    run = flow.run({"rows": 4}, backend=engine, project=project)
    assert run.state == "completed", run.error
    prep, search, report = _children(project, run.uid)
    assert [prep.function, search.function, report.function] == ["prep", "train", "report"]
    assert search.labels["shoal.step"] == "tune:train" and search.state == "completed"
    trials = _children(project, search.uid)  # the search's trials are the step's children
    assert len(trials) == 3 and {t.function for t in trials} == {"train"}
    assert all(t.state == "completed" and t.params["scale"] == 2.0 for t in trials)
    best = min(trials, key=lambda t: t.results["loss"])
    assert search.results["best_run"] == best.uid and search.results["best_value"] == best.results["loss"]
    assert report.results == {
        "lr": best.params["lr"],
        "value": best.results["loss"],
        "model": {"lr": best.params["lr"], "rows": 4},
        "loss": best.results["loss"],
    }
    assert run.results["graph"]["edges"][-1]["key"] == "loss"

    again = flow.run({"rows": 4}, backend=engine, project=project)
    assert again.results["steps"] == {"cached": 3}
    cached = _children(project, again.uid)[1]
    assert cached.state == "cached" and cached.cached_from == search.uid
    assert len(project.store.list_runs(function="train")) == 1 + 3 + 1  # no trial ran again


def test_result_in_the_body_branches_on_the_search(project, steps):
    train, note = steps["train"], steps["note"]

    @shoal.pipeline
    def flow():
        search = shoal.tune(train, {"lr": [0.2, 0.3]}, objective="min.loss", strategy="grid", inputs={"dataset": [1]})
        best = search.result()  # awaited in the body
        assert isinstance(best, shoal.Run)
        return note.submit({"text": f"best lr {best.results['best_params']['lr']}"})

    run = flow.run(backend="local", project=project)
    assert run.state == "completed", run.error
    assert _children(project, run.uid)[-1].results == {"text": "best lr 0.3"}


def test_a_failed_search_fails_its_consumers_as_upstream_failed(project, steps, engine):
    broken, report = steps["broken"], steps["report"]

    @shoal.pipeline
    def failing():
        search = shoal.tune(broken, {"lr": Float(0.0, 1.0)}, objective="min.loss", n_trials=2)
        return report.submit({"best_params": search.output("best_params"), "best_value": 0.0, "model": {}, "loss": 0.0})

    run = failing.run(backend=engine, project=project)
    assert run.state == "failed"
    search, consumer = _children(project, run.uid)
    assert search.state == "failed" and "failed" in search.error["message"]
    assert [t.state for t in _children(project, search.uid)] == ["failed", "failed"]
    assert consumer.state == "upstream_failed"
    assert run.results["failed_steps"] == ["tune:broken", "report"]


def test_upstream_failure_reaches_a_search_and_what_uses_it(project, steps):
    train, report = steps["train"], steps["report"]
    boom = steps["boom"]

    @shoal.pipeline
    def flow():
        data = boom.submit()
        search = shoal.tune(train, {"lr": Float(0.0, 1.0)}, objective="min.loss", n_trials=2,
                            inputs={"dataset": data.output("dataset")})  # fmt: skip
        return report.submit({"best_params": search.output("best_params"), "best_value": 0.0, "model": {}, "loss": 0.0})

    run = flow.run(backend="local", project=project)
    assert run.state == "failed"
    assert [c.state for c in _children(project, run.uid)] == ["failed", "upstream_failed", "upstream_failed"]
    assert [r.state for r in project.store.list_runs(function="train")] == ["upstream_failed"]  # no trial


def test_the_key_covers_the_search_and_refresh_searches_again(project, steps):
    first = _flow(steps).run(backend="local", project=project)
    more = _flow(steps, n_trials=4).run(backend="local", project=project)  # another search: runs
    assert [c.state for c in _children(project, more.uid)] == ["cached", "completed", "completed"]
    assert len(_children(project, _children(project, more.uid)[1].uid)) == 4  # a study of its own
    versioned = _flow(steps, cache_version="2").run(backend="local", project=project)
    assert [c.state for c in _children(project, versioned.uid)][1] == "completed"
    again = _flow(steps, cache_version="2").run(backend="local", project=project)
    assert [c.state for c in _children(project, again.uid)][1] == "cached"
    refreshed = _flow(steps).run(backend="local", project=project, refresh=True)
    search = _children(project, refreshed.uid)[1]
    assert search.state == "completed" and len(_children(project, search.uid)) == 3  # trials ran again
    assert search.labels["study"] != _children(project, first.uid)[1].labels["study"]


def test_bad_searches_fail_before_any_step_starts(project, steps):
    train, prep = steps["train"], steps["prep"]

    @shoal.pipeline
    def unknown_parameter():
        prep.submit()
        shoal.tune(train, {"nope": Float(0.0, 1.0)}, objective="min.loss", n_trials=2, inputs={"dataset": [1]})

    with pytest.raises(ParamError, match="nope"):
        unknown_parameter.run(backend="local", project=project)

    other = {}

    @shoal.pipeline
    def first():
        other["handle"] = prep.submit()

    first.run(backend="local", project=project)

    @shoal.pipeline
    def foreign():
        shoal.tune(train, {"lr": Float(0.0, 1.0)}, objective="min.loss", n_trials=2,
                   inputs={"dataset": other["handle"].output("dataset")})  # fmt: skip

    with pytest.raises(PipelineError, match="another pipeline run"):
        foreign.run(backend="local", project=project)
    assert not project.store.list_runs(function="train")

    with pytest.raises(TuningError, match="inside a pipeline"):
        shoal.tune(train, {"lr": Float(0.0, 1.0)}, objective="min.loss", n_trials=2, cache_version="1")


HELD = textwrap.dedent(
    """
    import os
    import time
    import uuid


    def held(ctx, lr: float, started: str, release: str):
        \"\"\"The first two trials complete; later ones say so and hold until the release file exists.\"\"\"
        os.makedirs("trials", exist_ok=True)
        earlier = len(os.listdir("trials"))
        open(os.path.join("trials", uuid.uuid4().hex), "w").close()
        if earlier >= 2:
            open(started, "w").close()
            while not os.path.exists(release):
                time.sleep(0.05)
        ctx.log_result("loss", (lr - 0.3) ** 2)
    """
)

TUNED = textwrap.dedent(
    """
    import shoal
    from shoal.tuning import Float

    held = shoal.Function.from_file("held.py", handler="held")


    @shoal.pipeline
    def tuned(started: str = "started", release: str = "release"):
        search = shoal.tune(held, {"lr": Float(0.0, 1.0), "started": started, "release": release},
                            objective="min.loss", n_trials=4, seed=5)
        return search
    """
)


def test_a_search_step_resumes_its_study_after_the_driver_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from helpers import kill_by_pid

    from shoal.testing import wait_for

    (tmp_path / "held.py").write_text(HELD)
    (tmp_path / "flows.py").write_text(TUNED)
    command = [sys.executable, "-m", "shoal.cli.main", "-C", str(tmp_path), "run", "flows.py:tuned"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    child = subprocess.Popen(command, cwd=tmp_path, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    project = shoal.Project(tmp_path)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), timeout=300, what="a held trial to start")
        completed = lambda: project.store.count_runs(function="held", state="completed")  # noqa: E731
        wait_for(lambda: completed() == 2, timeout=300, what="the first two trials to be recorded")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(60)
    finally:
        kill_by_pid([child.pid])
    (tmp_path / "release").touch()

    again = subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr + again.stdout
    first, second = sorted(project.store.list_runs(function="tuned"), key=lambda r: r.created_at)
    (killed,) = project.store.list_runs(parent=first.uid)
    (resumed,) = project.store.list_runs(parent=second.uid)
    assert killed.state == "failed" and killed.error["type"] == "DriverLost"
    assert resumed.state == "completed" and resumed.labels["study"] == killed.labels["study"]  # the same study
    study = shoal.tuning.load_study(resumed.labels["study"], project=project)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    new_trials = project.store.list_runs(parent=resumed.uid, state="completed")
    assert len(new_trials) == 2  # the two completed before the kill were kept, not run again
    project.close()


def test_cancelling_the_search_run_stops_the_search_and_fails_its_consumers(project):
    import threading

    from shoal.testing import wait_for

    (project.root / "held.py").write_text(HELD)
    held = shoal.Function.from_file(project.root / "held.py", handler="held")
    note = shoal.Function.from_callable(lambda text="": {"text": text}, name="note")
    started, release = project.root / "started", project.root / "release"

    @shoal.pipeline
    def flow():
        search = shoal.tune(
            held, {"lr": [0.1, 0.2, 0.3, 0.4], "started": str(started), "release": str(release)},
            objective="min.loss", n_trials=4, strategy="grid",
        )  # fmt: skip
        return note.submit({"text": search.output("best_value")})

    def cancel_the_search() -> None:
        wait_for(started.exists, timeout=300, what="a held trial to start")
        (search_run,) = [r for r in project.store.list_runs(function="held") if "shoal.step" in r.labels]
        project.runs.cancel(search_run.uid)  # the search stops: no trial is asked after this
        release.touch()

    canceller = threading.Thread(target=cancel_the_search)
    canceller.start()
    try:
        run = flow.run(backend="local", project=project)
    finally:
        release.touch()
        canceller.join(300)
    assert run.state == "failed"
    search, consumer = _children(project, run.uid)
    assert search.state == "cancelled" and consumer.state == "upstream_failed"
    states = [t.state for t in _children(project, search.uid)]
    assert "cancelled" in states and set(states) <= {"completed", "cancelled"}  # held trials cancelled with it
