"""Pipelines on every engine: references, recording, caching on rerun, upstream failure, bad input."""

from __future__ import annotations

import textwrap

import pytest

import shoal
from shoal.errors import ParamError, PipelineError

STEPS = textwrap.dedent(
    '''
    import os


    def prep(ctx, rows: int = 10):
        ctx.log_artifact("dataset", list(range(rows)))
        ctx.log_result("n", rows)


    def train(dataset, lr: float = 0.1):
        return {"score": sum(dataset) * lr}


    def pick(scores: list):
        return {"best": max(scores)}


    def boom(x: int = 1):
        raise RuntimeError("boom on purpose")


    def flaky(ctx, marker: str):
        """Fails on its first attempt (no marker yet), completes on the next."""
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        ctx.log_result("value", 7)


    def add(a: int, b: int = 0):
        return {"sum": a + b}
    '''
)


@pytest.fixture
def steps(project):
    path = project.root / "steps.py"
    path.write_text(STEPS)
    names = ("prep", "train", "pick", "boom", "flaky", "add")
    return {name: shoal.Function.from_file(path, handler=name) for name in names}


def _children(project, run):
    return sorted(project.store.list_runs(parent=run.uid), key=lambda r: r.iteration)


def _training(steps):
    prep, train, pick = steps["prep"], steps["train"], steps["pick"]

    @shoal.pipeline
    def training(rows: int = 10, lrs: list = [0.01, 0.1]):  # noqa: B006 - a default the pipeline records
        data = prep.submit({"rows": rows})
        models = [train.submit({"lr": lr}, inputs={"dataset": data.output("dataset")}) for lr in lrs]
        return pick.submit({"scores": [m.output("score") for m in models]})

    return training


def test_references_run_and_record_the_graph_then_rerun_cached(project, steps, engine):
    training = _training(steps)
    run = training.run({"rows": 5}, backend=engine, project=project)
    assert run.state == "completed", run.error
    children = _children(project, run)
    assert [c.function for c in children] == ["prep", "train", "train", "pick"]
    assert all(c.state == "completed" for c in children)
    assert children[3].results == {"best": 1.0}
    assert children[1].inputs["dataset"] == "step:prep.dataset"
    graph = run.results["graph"]
    assert [s["name"] for s in graph["steps"]] == ["prep", "train", "train#2", "pick"]
    edges = {(e["from"], e["to"], e["key"]) for e in graph["edges"]}
    assert (children[0].uid, children[1].uid, "dataset") in edges
    assert (children[2].uid, children[3].uid, "score") in edges
    assert run.labels["shoal.kind"] == "pipeline"

    again = training.run({"rows": 5}, backend=engine, project=project)
    assert again.state == "completed"
    assert again.results["steps"] == {"cached": 4}
    reused = _children(project, again)
    assert [r.cached_from for r in reused] == [c.uid for c in children]

    other = training.run({"rows": 6}, backend=engine, project=project)  # a new key upstream reruns all
    assert other.results["steps"] == {"completed": 4}


def test_failed_step_fails_its_dependents_and_independent_branches_go_on(project, steps, engine):
    boom, add, pick = steps["boom"], steps["add"], steps["pick"]

    @shoal.pipeline
    def branches():
        bad = boom.submit({"x": 1})
        after_bad = add.submit({"a": bad.output("anything")})
        last = pick.submit({"scores": [after_bad.output("sum")]})
        good = add.submit({"a": 1, "b": 2})
        add.submit({"a": good.output("sum"), "b": 1})
        return last

    run = branches.run(backend=engine, project=project, cache=False)
    assert run.state == "failed"
    states = {c.labels["shoal.step"]: c.state for c in _children(project, run)}
    assert states == {
        "boom": "failed",
        "add": "upstream_failed",
        "pick": "upstream_failed",
        "add#2": "completed",
        "add#3": "completed",
    }
    assert "boom failed" in run.error["message"] and "add upstream_failed" in run.error["message"]
    assert run.results["failed_steps"] == ["boom", "add", "pick"]
    never = [c for c in _children(project, run) if c.state == "upstream_failed"]
    assert all(c.started_at is None for c in never)
    assert _children(project, run)[4].results == {"sum": 4}


def test_rerun_after_failure_runs_only_what_did_not_complete(project, steps, tmp_path):
    add, flaky = steps["add"], steps["flaky"]
    marker = str(tmp_path / "marker")

    @shoal.pipeline
    def partly():
        one = add.submit({"a": 1})
        shaky = flaky.submit({"marker": marker})
        return add.submit({"a": one.output("sum"), "b": shaky.output("value")})

    first = partly.run(project=project)
    assert first.state == "failed"
    assert [c.state for c in _children(project, first)] == ["completed", "failed", "upstream_failed"]
    second = partly.run(project=project)
    assert second.state == "completed"
    assert [c.state for c in _children(project, second)] == ["cached", "completed", "completed"]
    assert _children(project, second)[2].results == {"sum": 8}


def test_two_steps_with_one_key_run_once_and_the_second_feeds_its_consumer(project, steps):
    add = steps["add"]

    @shoal.pipeline
    def twice():
        first = add.submit({"a": 2, "b": 3})
        again = add.submit({"a": 2, "b": 3})  # the same cache key: it waits for the first, then reuses it
        return add.submit({"a": again.output("sum"), "b": first.output("sum")})

    run = twice.run(project=project)
    assert run.state == "completed", run.error
    children = _children(project, run)
    assert [c.state for c in children] == ["completed", "cached", "completed"]
    assert children[1].cached_from == children[0].uid
    assert children[2].results == {"sum": 10}


def test_a_retried_producer_still_feeds_its_consumer(project, steps, tmp_path, engine):
    flaky = steps["flaky"].with_spec(retries=1)
    add = steps["add"]
    marker = str(tmp_path / "marker")

    @shoal.pipeline
    def retried():
        value = flaky.submit({"marker": marker})
        return add.submit({"a": value.output("value"), "b": 1})

    run = retried.run(backend=engine, project=project, cache=False)
    assert run.state == "completed", run.error
    children = _children(project, run)
    assert children[0].attempts == 2
    assert children[1].results == {"sum": 8}


def test_missing_output_key_names_key_producer_and_logged_keys(project, steps, engine):
    prep, add = steps["prep"], steps["add"]

    @shoal.pipeline
    def wrong_key():
        data = prep.submit({"rows": 3})
        return add.submit({"a": data.output("rows_seen")})

    run = wrong_key.run(backend=engine, project=project, cache=False)
    assert run.state == "failed"
    consumer = _children(project, run)[1]
    assert consumer.state == "failed"
    assert consumer.error["type"] == "MissingOutputError"
    message = consumer.error["message"]
    assert "'rows_seen'" in message and "prep" in message and "dataset, n" in message


def test_bad_params_and_foreign_handles_fail_before_any_step_starts(project, steps):
    add = steps["add"]

    @shoal.pipeline
    def bad_params():
        add.submit({"a": 1})
        add.submit({"a": "not a number"})

    with pytest.raises(ParamError, match="'a'"):
        bad_params.run(project=project)
    failed = project.store.list_runs(function="bad_params")[0]
    assert failed.state == "failed"
    assert project.store.list_runs(parent=failed.uid) == []

    kept = []

    @shoal.pipeline
    def producer():
        kept.append(add.submit({"a": 1}))

    producer.run(project=project)

    @shoal.pipeline
    def foreign():
        add.submit({"a": 2})
        add.submit({"a": kept[0].output("sum")})

    with pytest.raises(PipelineError, match="another pipeline run"):
        foreign.run(project=project)
    assert project.store.list_runs(parent=project.store.list_runs(function="foreign")[0].uid) == []

    @shoal.pipeline
    def whole_handle():
        first = add.submit({"a": 1})
        add.submit({"a": first})

    with pytest.raises(PipelineError, match=r"output\('model'\)"):
        whole_handle.run(project=project)


def test_result_branches_in_the_body_and_map_makes_steps(project, steps, engine):
    add = steps["add"]

    @shoal.pipeline
    def branching(n: int = 3):
        first = add.submit({"a": n})
        if first.result().results["sum"] > 2:
            parts = add.map([{"a": i} for i in range(n)])
            return add.submit({"a": parts[-1].output("sum"), "b": 100})
        return first

    run = branching.run({"n": 3}, backend=engine, project=project, cache=False)
    assert run.state == "completed", run.error
    children = _children(project, run)
    assert len(children) == 5
    assert children[-1].results == {"sum": 102}
    assert run.results["return"] == "step:add#5"


def test_a_pipeline_is_a_function_of_its_own_kind(project, steps):
    training = _training(steps)
    assert isinstance(training, shoal.Pipeline) and isinstance(training, shoal.Function)
    document = training.to_dict()
    assert document["kind"] == "pipeline"
    again = shoal.Function.from_dict(document)
    assert isinstance(again, shoal.Pipeline) and again.hash == training.hash
    run = training.run({"rows": 2}, project=project)
    stored = project.functions.get(f"training@{run.function_hash}")
    assert isinstance(stored, shoal.Pipeline)
    with pytest.raises(PipelineError, match="run"):
        training.submit()


def test_a_driver_subclass_decides_through_the_public_hooks(project, steps):
    """What StepDriver is built on: a run's task is shaped once, every attempt (retries and the
    runs of ``launch_many`` included) goes through ``submit_attempt``, and ``attempt_ended``
    decides what an ended attempt means."""
    from shoal.runner import Driver

    class Watching(Driver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shaped, self.sent, self.ended = [], [], []

        def shape_task(self, flight):
            self.shaped.append(flight.task.uid)

        def submit_attempt(self, flight, on_start):
            self.sent.append((flight.task.uid, flight.task.attempt))
            return super().submit_attempt(flight, on_start)

        def attempt_ended(self, flight, outcome):
            self.ended.append(outcome.state)
            self.retry_or_record(flight, outcome)

    with shoal.backends.get("local", n_workers=2) as backend:
        driver = Watching(steps["add"], project, backend)
        driver.save_function()
        params = [{"a": 1}, {"a": 2, "b": 3}]
        records = [driver.new_record(p, {}, iteration=i) for i, p in enumerate(params)]
        project.store.create_runs(records)
        runs = [handle.result(60) for handle in driver.launch_many(records, {}, params, batch_size=2)]
    assert [run.results["sum"] for run in runs] == [1, 5]
    uids = [record["uid"] for record in records]
    assert driver.shaped == uids
    assert sorted(driver.sent) == sorted((uid, 1) for uid in uids)  # one by one, not batched
    assert driver.ended == ["completed", "completed"]
