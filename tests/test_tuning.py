"""Tuning on the local backend with real Optuna: spaces and their errors, objectives, strategies,
pruning, define-by-run, failures and stop conditions, records, resume and study consistency, results.

Handlers live in a file written per test (as users' code does) and take milliseconds.
"""

from __future__ import annotations

import optuna
import pytest

import shoal
from shoal.errors import ParamError, SearchFailedError, ShoalWarning, SpaceError, TuningError
from shoal.tuning import Categorical, Float, Int, TuneResult, delete_study, load_study
from shoal.tuning.objective import Objective, StopWhen
from shoal.tuning.space import parse_assignment, parse_entry

from helpers import functions_from, wait_for

HANDLERS = '''
import time

import optuna

import shoal


def quad(x: float, y: int = 0, kind: str = "a", scale: float = 1.0):
    """Best at x = 0.3, y = 2, kind = 'b'."""
    bonus = 0.5 if kind == "b" else 0.0
    return {"score": scale * (bonus - (x - 0.3) ** 2 - (y - 2) ** 2), "loss": (x - 0.3) ** 2 + y}


def two(x: float, y: float):
    return {"a": x, "b": y}


def curve(ctx, x: float):
    """Reports a learning curve; bad x values report poorly and get pruned by the median pruner."""
    for step in range(5):
        ctx.report(x * (step + 1), step)
    ctx.log_result("score", x * 5)


def by_run(ctx, base: float = 0.0):
    """Define-by-run: parameters suggested on the worker through ctx.trial."""
    lr = ctx.trial.suggest_float("lr", 1e-4, 1.0, log=True)
    layers = ctx.trial.suggest_int("layers", 1, 4)
    return {"score": base - abs(lr - 0.01) - layers}


def forgets(x: float):
    return {"acc": x}


def flaky(x: float):
    if x > 0.5:
        raise RuntimeError(f"diverged at x={x}")
    return {"score": x}


def slow(x: float):
    if x > 0.5:
        time.sleep(30)
    return {"score": x}


def always_fails(x: float):
    raise ValueError("broken handler")


def outside(ctx):
    return {"trial": ctx.trial is None}


def pruned_at_once(ctx, x: float):
    ctx.report(x, 0)
    raise optuna.TrialPruned()
'''


@pytest.fixture
def fn(project, tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


def children(project, result: TuneResult):
    return project.runs.list(parent=result.parent, limit=None)


# -- spaces -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: Float(2, 1), "above high"),
        (lambda: Float(0, 1, log=True), "low > 0"),
        (lambda: Int(0, 10, log=True), "low > 0"),
        (lambda: Int(1.5, 3), "whole number"),
        (lambda: Int(1, 5, step=0), "step must be >= 1"),
        (lambda: Float(0, 1, step=-1), "step must be > 0"),
        (lambda: Float(1e-3, 1, log=True, step=0.1), "both log=True and a step"),
        (lambda: Categorical([]), "at least one choice"),
        (lambda: Categorical([{"a": 1}]), "choices must be"),
        (lambda: Float("a", 1), "must be a number"),
    ],
)
def test_bad_space_entries_are_refused(make, fragment):
    with pytest.raises(SpaceError, match=fragment):
        make()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("loguniform(1e-4,1)", Float(1e-4, 1, log=True)),
        ("uniform(0, 2)", Float(0, 2)),
        ("float(1e-3,1,log=true)", Float(1e-3, 1, log=True)),
        ("float(0,1,step=0.25)", Float(0, 1, step=0.25)),
        ("int(2,10)", Int(2, 10)),
        ("int(1,1024,log=true)", Int(1, 1024, log=True)),
        ("int(0,10,step=2)", Int(0, 10, step=2)),
        ("[a,b,c]", Categorical(["a", "b", "c"])),
        ("[1, 2.5, true, 'x y']", Categorical([1, 2.5, True, "x y"])),
        ("choice(relu, tanh)", Categorical(["relu", "tanh"])),
        ("5", 5),
        ("0.5", 0.5),
        ("data/train.csv", "data/train.csv"),
        ("true", True),
    ],
)
def test_dsl(text, expected):
    assert parse_entry(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr=normal(0,1)", "unknown space function"),
        ("lr=uniform(1)", "takes a low and a high"),
        ("lr=loguniform(0,1)", "low > 0"),
        ("lr=int(5,2)", "above high"),
        ("lr=[]", "at least one choice"),
        ("lr=uniform(0,1,base=2)", "unknown option"),
        ("lr", "NAME=SPEC"),
        ("1x=uniform(0,1)", "NAME=SPEC"),
        ("kind=[a,[b]]", "nested"),
    ],
)
def test_dsl_errors_name_the_parameter_and_the_fix(text, fragment):
    with pytest.raises(SpaceError, match=fragment):
        parse_assignment(text)


def test_objective_and_stop_when_parsing():
    both = Objective.parse(["max.accuracy", "min.latency"])
    assert both.keys == ("accuracy", "latency") and both.directions == ("maximize", "minimize")
    for bad in ("maximum.acc", "accuracy", "max.", "", ["max.a", "max.a"]):
        with pytest.raises(TuningError):
            Objective.parse(bad)
    target = StopWhen.parse("accuracy >= 0.95")
    assert target.reached({"accuracy": 0.95}) and not target.reached({"accuracy": 0.9}) and not target.reached({})
    for bad in ("accuracy=>0.9", "accuracy>=high", ">=0.9", "accuracy>=nan"):
        with pytest.raises(TuningError):
            StopWhen.parse(bad)


@pytest.mark.parametrize(
    "options, error, fragment",
    [
        ({"objective": "maximum.score"}, TuningError, "max.KEY or min.KEY"),
        ({"strategy": "bayes"}, TuningError, "unknown strategy"),
        ({"pruner": "early"}, TuningError, "unknown pruner"),
        ({"stop_when": "score>>1"}, TuningError, "stop_when"),
        ({"space": {"x": Float(0, 1), "bogus": [1, 2]}}, ParamError, "bogus"),
        ({"space": {"x": [0.1, 0.2], "y": [1, 2, 3]}, "strategy": "list"}, TuningError, "same length"),
        ({"space": {"x": Float(0, 1)}, "strategy": "grid"}, SpaceError, "continuous Float"),
        ({"n_trials": 0}, TuningError, "n_trials"),
        ({"n_trials": None}, TuningError, "give n_trials"),
        ({"timeout": -1}, TuningError, "timeout"),
        ({"storage": "ftp://x/y"}, TuningError, "unsupported storage"),
        ({"space": {"x": []}}, SpaceError, "space\\['x'\\]: Categorical"),
    ],
)
def test_bad_settings_fail_before_anything_is_recorded(project, fn, options, error, fragment):
    settings = {"space": {"x": Float(0, 1)}, "objective": "max.score", "n_trials": 2, **options}
    space = settings.pop("space")
    with pytest.raises(error, match=fragment):
        shoal.tune(fn("quad"), space, project=project, study="bad", **settings)
    assert project.runs.list(limit=None) == []
    assert not (project.home / "studies.journal").exists() or "bad" not in _study_names(project)


def _study_names(project) -> list[str]:
    from shoal.tuning.storage import default_ref

    return [s.study_name for s in optuna.get_all_study_summaries(default_ref(project).open())]


# -- the main path ----------------------------------------------------------------------------------
def test_search_records_parent_and_children_and_finds_the_best(project, fn):
    quad = fn("quad", replicas=(0, 2))
    space = {"x": Float(0, 1), "y": Int(0, 4), "kind": ["a", "b"], "scale": 2.0}
    result = quad.tune(space, objective="max.score", n_trials=16, seed=3, project=project)
    assert isinstance(result.study, optuna.Study) and result.study.study_name == "quad"
    assert len(result.trials) == 16 and {t["state"] for t in result.trials} == {"complete"}
    assert result.best_value == max(t["values"][0] for t in result.trials)
    assert set(result.best_params) == {"x", "y", "kind"}
    best = result.best_run
    assert isinstance(best, shoal.Run) and best.results["score"] == result.best_value
    assert best.params["scale"] == 2.0  # constants pass through to every trial
    runs = children(project, result)
    assert len(runs) == 16 and {r.state for r in runs} == {"completed"}
    assert sorted(r.iteration for r in runs) == list(range(16))
    by_uid = {t["run"]: t for t in result.trials}
    for run in runs:
        assert by_uid[run.uid]["number"] == run.iteration
        assert by_uid[run.uid]["params"]["x"] == run.params["x"]
    parent = project.runs.get(result.parent)
    assert parent.state == "completed" and parent.parent is None
    assert parent.results["best_value"] == result.best_value
    assert parent.results["best_params"] == result.best_params
    assert parent.results["best_run"] == best.uid
    frame = result.trials_frame()
    assert len(frame) == 16 and {"number", "value", "params_x", "state", "run"} <= set(frame.columns)
    assert result.stopped == "n_trials"


def test_trials_run_in_parallel_up_to_the_replicas(project, fn, tmp_path):
    # each trial notes how many trials are running with it through files in a shared folder
    (tmp_path / "live").mkdir()
    (tmp_path / "par.py").write_text(
        "import os, time, uuid\n"
        f"LIVE = {str(tmp_path / 'live')!r}\n"
        "def par(x: float):\n"
        "    me = os.path.join(LIVE, uuid.uuid4().hex)\n"
        "    open(me, 'w').close()\n"
        "    seen = 0\n"
        "    for _ in range(40):\n"
        "        seen = max(seen, len(os.listdir(LIVE)))\n"
        "        time.sleep(0.01)\n"
        "    os.remove(me)\n"
        "    return {'score': x, 'seen': seen}\n"
    )
    par = shoal.Function.from_file(tmp_path / "par.py", "par", replicas=(0, 3))
    result = par.tune({"x": Float(0, 1)}, objective="max.score", n_trials=6, project=project, strategy="random")
    seen = [r.results["seen"] for r in children(project, result)]
    assert max(seen) >= 2 and max(seen) <= 3  # trials overlapped, never more than replicas.max


def test_parallelism_one_runs_trials_one_after_another(project, fn):
    quad = fn("quad", replicas=(0, 4))
    result = quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=4, parallelism=1, project=project)
    runs = sorted(children(project, result), key=lambda r: r.iteration)
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.ended_at <= later.started_at


def test_minimise_and_multi_objective_pareto_front(project, fn):
    quad = fn("quad")
    low = quad.tune({"x": Float(0, 1), "y": Int(0, 4)}, objective="min.loss", n_trials=8, seed=1, project=project)
    assert low.best_value == min(t["values"][0] for t in low.trials)
    two = fn("two")
    result = two.tune(
        {"x": Float(0, 1), "y": Float(0, 1)},
        objective=["max.a", "min.b"],
        n_trials=10,
        strategy="nsga2",
        seed=0,
        project=project,
    )
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = result.best_trials
    assert front and all(len(t.values) == 2 for t in front)
    with pytest.raises(TuningError, match="best_trials"):
        result.best_value
    parent = project.runs.get(result.parent)
    assert {p["trial"] for p in parent.results["pareto"]} == {t.number for t in front}
    assert "best_trials" in result.to_dict()


@pytest.mark.parametrize("strategy", ["tpe", "random", "cmaes"])
def test_samplers_with_a_seed_are_reproducible(project, fn, strategy):
    pytest.importorskip("cmaes") if strategy == "cmaes" else None
    quad = fn("quad")
    space = {"x": Float(0, 1), "y": Int(0, 4)}
    # One trial at a time: parallel trials see whichever results were told before they start, so
    # only a sequential search is reproducible run for run (as with Optuna's n_jobs).
    options = dict(objective="max.score", n_trials=5, seed=7, strategy=strategy, parallelism=1, project=project)
    first = quad.tune(space, study=f"{strategy}-1", **options)
    second = quad.tune(space, study=f"{strategy}-2", **options)
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]


def test_an_in_process_search_one_trial_at_a_time_draws_what_optunas_optimize_draws(project, fn):
    """In-process runs sample from the driver's study, each in a thread that neither asks nor tells:
    every sampling must still see the trials told before it (past TPE's 10 start-up trials), or the
    whole search is as good as random."""
    space = {"x": Float(0, 1), "y": Int(0, 4)}
    result = fn("quad").tune(
        space, objective="max.score", n_trials=16, seed=7, parallelism=1, backend="local", project=project
    )
    plain = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7))
    plain.optimize(lambda t: -((t.suggest_float("x", 0, 1) - 0.3) ** 2) - (t.suggest_int("y", 0, 4) - 2) ** 2, n_trials=16)
    assert [t["params"] for t in sorted(result.trials, key=lambda t: t["number"])] == [t.params for t in plain.trials]


@pytest.mark.parametrize("multi", [False, True], ids=["one-objective", "two-objectives"])
def test_the_tpe_strategy_is_optunas_default_tpe(multi):
    """Like for like with plain Optuna: whatever ``TPESampler()`` is in the installed Optuna (since
    Optuna 5, multivariate with the constant liar for one objective), not a configuration of ours."""
    from shoal.tuning.space import Space
    from shoal.tuning.strategies import NamedSampler

    built = NamedSampler("tpe", Space({"x": Float(0, 1)}), 5, multi).build(("storage", f"tpe-default-{multi}"))
    default = optuna.samplers.TPESampler()
    assert type(built) is optuna.samplers.TPESampler
    for setting in ("_multivariate", "_group", "_constant_liar", "_n_startup_trials", "_n_ei_candidates", "_gamma"):
        assert getattr(built, setting) == getattr(default, setting), setting


def test_a_thread_keeps_one_sampler_per_study():
    """A TPE sampler learns its study's search space: reused for that study's trials only."""
    import threading

    from shoal.tuning.space import Space
    from shoal.tuning.strategies import NamedSampler

    space = Space({"x": Float(0, 1)})
    first = NamedSampler("tpe", space, 1, False).build(("storage", "kept-a"))
    assert NamedSampler("tpe", space, 2, False).build(("storage", "kept-a")) is first
    assert NamedSampler("tpe", space, 2, False).build(("storage", "kept-b")) is not first
    elsewhere = []
    thread = threading.Thread(
        target=lambda: elsewhere.append(NamedSampler("tpe", space, 2, False).build(("storage", "kept-a")))
    )
    thread.start()
    thread.join()
    assert elsewhere and elsewhere[0] is not first  # a sampler is not safe to share between threads


def test_grid_runs_every_combination_once(project, fn):
    quad = fn("quad", replicas=(0, 2))
    space = {"x": [0.1, 0.3], "y": Int(1, 3), "kind": ["a", "b"]}
    result = quad.tune(space, objective="max.score", strategy="grid", project=project)
    combos = sorted((t["params"]["x"], t["params"]["y"], t["params"]["kind"]) for t in result.trials)
    assert combos == sorted((x, y, k) for x in (0.1, 0.3) for y in (1, 2, 3) for k in ("a", "b"))
    assert result.best_params == {"x": 0.3, "y": 2, "kind": "b"}


def test_list_strategy_runs_the_ith_values_together(project, fn):
    quad = fn("quad")
    space = {"x": [0.1, 0.2, 0.3], "y": [1, 2, 3], "kind": ["a", "a", "b"]}
    result = quad.tune(space, objective="max.score", strategy="list", project=project)
    assert sorted((t["params"]["x"], t["params"]["y"], t["params"]["kind"]) for t in result.trials) == [
        (0.1, 1, "a"),
        (0.2, 2, "a"),
        (0.3, 3, "b"),
    ]


def test_pruning_through_ctx_report(project, fn):
    curve = fn("curve")
    # trial values enqueued so that the later, worse ones fall below the median of the earlier ones
    study = optuna.create_study(study_name="curve", storage=_storage(project), direction="maximize")
    for x in (0.9, 0.8, 0.7, 0.1, 0.05):
        study.enqueue_trial({"x": x})
    # One trial at a time: the later trials must report after 0.9 and 0.8 completed (the pruner's
    # startup trials), which parallel trials do not guarantee.
    result = curve.tune(
        {"x": Float(0, 1)}, objective="max.score", pruner="median", n_trials=5, parallelism=1, project=project
    )
    states = {t["params"]["x"]: t["state"] for t in result.trials}
    assert states[0.9] == states[0.8] == "complete"
    assert states[0.7] == states[0.1] == states[0.05] == "pruned"  # below the median of the first two
    pruned = [r for r in children(project, result) if r.params["x"] in (0.7, 0.1, 0.05)]
    assert all(r.state == "pruned" and "pruned" not in r.results for r in pruned)
    assert all(len(r.metrics["objective"]) < 5 for r in pruned)  # stopped early
    assert project.runs.get(result.parent).results["pruned"] == 3


def _storage(project):
    from shoal.tuning.storage import default_ref

    return default_ref(project).open()


def test_define_by_run_through_ctx_trial(project, fn):
    by_run = fn("by_run", replicas=(0, 2))
    result = by_run.tune({"base": 1.0}, objective="max.score", n_trials=6, seed=0, project=project)
    assert all(set(t["params"]) == {"lr", "layers"} for t in result.trials)
    assert result.best_params["layers"] == min(t["params"]["layers"] for t in result.trials)
    # ctx.trial is None outside tuning
    assert fn("outside").run(project=project, watch=False).results == {"trial": True}


def test_objective_never_logged_fails_the_trial_naming_the_keys(project, fn):
    forgets = fn("forgets")
    with pytest.raises(SearchFailedError) as info:
        forgets.tune({"x": Float(0, 1)}, objective="max.accuracy", n_trials=2, project=project)
    result = info.value.result
    assert [t["state"] for t in result.trials] == ["fail", "fail"]
    for run in children(project, result):
        assert run.state == "failed"
        assert "'accuracy'" in run.error["message"] and "keys logged: acc" in run.error["message"]
    assert "'accuracy'" in result.trials[0]["error"]
    assert result.best_value is None and result.best_run is None


def test_a_search_where_every_trial_failed_is_an_error_and_uses_up_no_later_budget(project, fn):
    forgets = fn("forgets")
    with pytest.raises(SearchFailedError) as info:
        forgets.tune({"x": Float(0, 1)}, objective="max.accuracy", n_trials=3, project=project)
    message, error = str(info.value), info.value
    assert isinstance(error, TuningError) and error.exit_code == 1  # a failure, not bad input
    assert "all 3 trials of study 'forgets' failed, none completed" in message
    assert "the objective key 'accuracy' never logged; keys logged: acc" in message  # the first failure's message
    parent = project.runs.get(error.result.parent)
    assert (
        parent.state == "failed" and parent.error["type"] == "SearchFailedError" and parent.error["message"] == message
    )
    assert {r.state for r in children(project, error.result)} == {"failed"}
    # The same search again runs its 3 trials again: failed trials do not count toward n_trials.
    with pytest.raises(SearchFailedError, match="all 3 trials"):
        forgets.tune({"x": Float(0, 1)}, objective="max.accuracy", n_trials=3, project=project)
    assert [t.state.name for t in load_study("forgets", project=project).trials] == ["FAIL"] * 6


def test_pruned_trials_count_toward_n_trials_and_are_no_failure(project, fn):
    pruned = fn("pruned_at_once")
    first = pruned.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, pruner="median", project=project)
    assert [t["state"] for t in first.trials] == ["pruned", "pruned"]
    assert project.runs.get(first.parent).state == "completed"
    again = pruned.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, pruner="median", project=project)
    assert children(project, again) == [] and len(again.trials) == 2


def test_some_failed_trials_are_no_error_and_a_rerun_makes_up_only_completed_ones(project, fn):
    flaky = fn("flaky")
    study = optuna.create_study(study_name="flaky", storage=_storage(project), direction="maximize")
    for x in (0.9, 0.2):
        study.enqueue_trial({"x": x})
    result = flaky.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, project=project)
    assert sorted(t["state"] for t in result.trials) == ["complete", "fail"]
    study.enqueue_trial({"x": 0.1})
    again = flaky.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, project=project)
    assert [r.params["x"] for r in children(project, again)] == [0.1]  # one completed counted: one more


def test_failing_and_timed_out_trials_fail_and_the_search_goes_on(project, fn):
    flaky = fn("flaky", replicas=(0, 2))
    study = optuna.create_study(study_name="flaky", storage=_storage(project), direction="maximize")
    for x in (0.9, 0.2, 0.8, 0.4):
        study.enqueue_trial({"x": x})
    result = flaky.tune({"x": Float(0, 1)}, objective="max.score", n_trials=4, project=project)
    states = {t["params"]["x"]: t["state"] for t in result.trials}
    assert states == {0.9: "fail", 0.2: "complete", 0.8: "fail", 0.4: "complete"}
    assert "diverged at x=0.9" in next(t["error"] for t in result.trials if t["params"]["x"] == 0.9)
    assert result.best_params == {"x": 0.4}

    slow = fn("slow", timeout=0.5)
    study = optuna.create_study(study_name="slow", storage=_storage(project), direction="maximize")
    for x in (0.9, 0.1):
        study.enqueue_trial({"x": x})
    result = slow.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, project=project)
    states = {t["params"]["x"]: t["state"] for t in result.trials}
    assert states == {0.9: "fail", 0.1: "complete"}
    assert "TimeoutError" in next(t["error"] for t in result.trials if t["params"]["x"] == 0.9)


def test_max_failures_stops_the_search_and_fails_the_parent(project, fn):
    broken = fn("always_fails", replicas=1)  # one at a time: none in flight when the third fails
    with pytest.raises(SearchFailedError, match="max_failures=3") as info:
        broken.tune({"x": Float(0, 1)}, objective="max.score", n_trials=20, max_failures=3, project=project)
    result = info.value.result
    assert len(result.trials) == 3 and result.stopped == "max_failures"
    parent = project.runs.get(result.parent)
    assert parent.state == "failed" and "max_failures=3" in parent.error["message"]
    assert "broken handler" in parent.error["message"]
    # With a completed trial the search returns, its parent failed for max_failures.
    flaky = fn("flaky", replicas=1)
    study = optuna.create_study(study_name="flaky", storage=_storage(project), direction="maximize")
    for x in (0.1, 0.9):
        study.enqueue_trial({"x": x})
    result = flaky.tune({"x": Float(0, 1)}, objective="max.score", n_trials=4, max_failures=1, project=project)
    assert result.stopped == "max_failures" and result.best_params == {"x": 0.1}
    assert "max_failures=1" in project.runs.get(result.parent).error["message"]


def test_parallelism_the_replicas_cannot_meet_is_a_warning_naming_both_numbers(project, tmp_path):
    (tmp_path / "marks.py").write_text(
        "import os, time\n"
        "def mark(x: float, folder: str):\n"
        "    path = os.path.join(folder, f'{os.getpid()}-{time.monotonic_ns()}')\n"
        "    open(path + '.start', 'w').close()\n"
        "    others = [n for n in os.listdir(folder) if n.endswith('.start') and not os.path.exists(os.path.join(folder, n[:-6] + '.end'))]\n"
        "    open(path + '.end', 'w').write(str(len(others)))\n"
        "    return {'score': x}\n"
    )
    folder = tmp_path / "marks"
    folder.mkdir()
    one = shoal.Function.from_file(tmp_path / "marks.py", "mark", replicas=(1, 1))
    with pytest.warns(ShoalWarning) as caught:
        one.tune(
            {"x": Float(0, 1), "folder": str(folder)}, objective="max.score", n_trials=3, parallelism=2, project=project
        )
    [warning] = [w for w in caught if issubclass(w.category, ShoalWarning)]
    text = str(warning.message)
    assert "parallelism=2 cannot be met" in text and "replicas (1, 1)" in text and "at most 1 trial(s)" in text
    assert warning.filename == __file__  # points at the caller's line
    # the bound held: no run saw another one running
    assert [p.read_text() for p in sorted(folder.glob("*.end"))] == ["1", "1", "1"]


def test_stop_when_stops_asking_new_trials(project, fn):
    quad = fn("quad", replicas=1)  # one at a time: no trial is in flight when the target is reached
    study = optuna.create_study(study_name="quad", storage=_storage(project), direction="maximize")
    for x in (0.0, 0.3, 0.6, 0.9):
        study.enqueue_trial({"x": x, "y": 2})
    result = quad.tune(
        {"x": Float(0, 1), "y": Int(0, 4)},
        objective="max.score",
        n_trials=10,
        stop_when="score>=-0.001",
        project=project,
    )
    assert result.stopped == "stop_when"
    finished = [t for t in result.trials if t["state"] != "waiting"]  # the rest stay queued
    assert [t["params"]["x"] for t in finished] == [0.0, 0.3]


def test_timeout_budget(project, fn):
    quad = fn("quad")
    result = quad.tune({"x": Float(0, 1)}, objective="max.score", timeout=0.3, project=project)
    assert result.stopped == "timeout" and len(result.trials) >= 1
    assert all(t["state"] == "complete" for t in result.trials)  # running ones were let finish


# -- resume and study consistency -------------------------------------------------------------------
def test_n_trials_counts_the_study_total_so_a_rerun_adds_only_the_missing(project, fn):
    quad = fn("quad")
    space = {"x": Float(0, 1)}
    first = quad.tune(space, objective="max.score", n_trials=3, project=project)
    numbers = [(t["number"], t["params"]) for t in first.trials]
    second = quad.tune(space, objective="max.score", n_trials=5, project=project)
    assert len(second.trials) == 5 and [(t["number"], t["params"]) for t in second.trials[:3]] == numbers
    assert len(children(project, second)) == 2
    third = quad.tune(space, objective="max.score", n_trials=5, project=project)
    assert len(third.trials) == 5 and children(project, third) == []


def test_same_study_with_another_space_or_objective_is_an_error(project, fn):
    quad = fn("quad")
    quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=1, project=project)
    with pytest.raises(TuningError, match="different search space"):
        quad.tune({"x": Float(0, 2)}, objective="max.score", n_trials=2, project=project)
    with pytest.raises(TuningError, match="different objective directions"):
        quad.tune({"x": Float(0, 1)}, objective="min.score", n_trials=2, project=project)
    with pytest.raises(TuningError, match="different objective"):
        quad.tune({"x": Float(0, 1)}, objective="max.loss", n_trials=2, project=project)
    assert len(load_study("quad", project=project).trials) == 1
    result = quad.tune({"x": Float(0, 2)}, objective="max.score", n_trials=1, study="quad-wide", project=project)
    assert result.study.study_name == "quad-wide"


def test_the_mismatch_error_says_how_to_start_afresh_and_delete_study_does(project, fn):
    quad = fn("quad")
    quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, project=project)
    with pytest.raises(TuningError) as info:
        quad.tune({"x": Float(0, 2)}, objective="max.score", n_trials=1, project=project)
    assert "give study= a new name" in str(info.value) and "shoal.tuning.delete_study('quad')" in str(info.value)
    runs = len(project.runs.list(limit=None))
    assert delete_study("quad", project=project) == 2
    assert len(project.runs.list(limit=None)) == runs  # the runs stay recorded
    with pytest.raises(shoal.NotFoundError, match="no study 'quad'"):
        delete_study("quad", project=project)
    result = quad.tune({"x": Float(0, 2)}, objective="max.score", n_trials=1, project=project)
    assert len(result.trials) == 1


def test_load_study(project, fn):
    fn("quad").tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, project=project)
    study = load_study("quad", project=project)
    assert isinstance(study, optuna.Study) and len(study.trials) == 2
    with pytest.raises(shoal.NotFoundError, match="studies there: quad"):
        load_study("nope", project=project)


SLEEPY = """
import os
import time


def sleepy(x: float, folder: str):
    open(os.path.join(folder, f"started-{x}"), "w").close()
    end = time.monotonic() + 120  # bounded: a search that is never interrupted still ends
    while time.monotonic() < end:
        time.sleep(0.02)
    return {"score": x}
"""


def test_ctrl_c_cancels_runs_fails_their_trials_and_cancels_the_parent(project, tmp_path):
    import threading
    import _thread

    sleepy = functions_from(tmp_path / "sleepy.py", SLEEPY)("sleepy", replicas=(0, 2))
    folder = tmp_path / "markers"
    folder.mkdir()

    def press_ctrl_c_once_both_trials_run():
        """Ctrl-C only once both trials' handlers are running (a trial interrupted before it began
        would go back to the study, not fail); pressed in any case, so a failed wait ends the test."""
        try:
            wait_for(lambda: len(list(folder.glob("started-*"))) == 2, timeout=120, what="both trials running")
        finally:
            _thread.interrupt_main()

    presser = threading.Thread(target=press_ctrl_c_once_both_trials_run)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        sleepy.tune({"x": Float(0, 1), "folder": str(folder)}, objective="max.score", n_trials=4, project=project)
    presser.join()
    assert len(list(folder.glob("started-*"))) == 2, "interrupted before both trials ran"
    study = load_study("sleepy", project=project)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    parent = [r for r in project.runs.list(limit=None) if r.parent is None][0]
    assert parent.state == "cancelled"
    assert {r.state for r in project.runs.list(parent=parent.uid, limit=None)} == {"cancelled"}


# -- plots ------------------------------------------------------------------------------------------
def test_plots_html_and_png(project, fn, tmp_path):
    result = fn("quad").tune({"x": Float(0, 1), "y": Int(0, 4)}, objective="max.score", n_trials=6, project=project)
    html = result.plot("history", tmp_path / "history.html")
    assert html.stat().st_size > 1000 and b"plotly" in html.read_bytes()[:200000].lower()
    png = result.plot("parallel", tmp_path / "parallel.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    imp = result.plot("importance", tmp_path / "importance.html")
    assert imp.exists()
    with pytest.raises(TuningError, match="unknown plot kind"):
        result.plot("contour", tmp_path / "x.html")
    with pytest.raises(TuningError, match="must end in"):
        result.plot("history", tmp_path / "x.txt")


def test_nan_objective_fails_the_trial(project, tmp_path):
    (tmp_path / "nan.py").write_text("def nan(x: float):\n    return {'score': float('nan')}\n")
    f = shoal.Function.from_file(tmp_path / "nan.py", "nan")
    with pytest.raises(SearchFailedError, match="1 trial of study 'nan' failed.*objective is not a number") as info:
        f.tune({"x": Float(0, 1)}, objective="max.score", n_trials=1, project=project)
    assert info.value.result.trials[0]["state"] == "fail"


# -- the worker side of a trial (TrialScope), as a batch runs it ----------------------------------------
def _scope(project, study, *, tell=True, space=None):
    from shoal.tuning.space import Space
    from shoal.tuning.storage import default_ref
    from shoal.tuning.strategies import NamedSampler
    from shoal.tuning.trial_scope import TrialScope

    space = Space(space or {"x": Float(0, 1)})
    trial = study.ask()
    scope = TrialScope(
        storage=default_ref(project),
        study_name=study.study_name,
        trial_id=trial._trial_id,
        objective=Objective.parse("max.score"),
        distributions=space.distributions(),
        sampler=NamedSampler("tpe", space, 5, False),
        tell=tell,
    )
    return trial, scope


def _study(project, name):
    from shoal.tuning.storage import default_ref

    return optuna.create_study(study_name=name, storage=default_ref(project).open(), direction="maximize")


def test_a_study_deleted_and_made_again_under_its_name_samples_with_a_sampler_of_its_own(project):
    """A worker keeps a TPE sampler per study, and the multivariate TPE refuses a second study: the
    same name made again (``shoal studies delete``, then the search again) is another study."""
    first = _study(project, "again")
    trial, scope = _scope(project, first, space={"x": Float(0, 1), "y": Float(0, 1)})
    _, params = scope._sample()
    first.tell(trial, params["x"])
    optuna.delete_study(study_name="again", storage=first._storage)
    again = _study(project, "again")
    trial, scope = _scope(project, again, space={"x": Float(0, 1), "y": Float(0, 1)})
    _, params = scope._sample()  # this thread's sampler of the deleted study would raise ValueError here
    assert set(params) == {"x", "y"} and 0 <= params["x"] <= 1
    assert again._storage.get_trial(scope.trial_id).params == params


def test_a_trial_sampled_ahead_runs_with_those_values_and_is_told_where_it_ran(project, fn):
    from shoal.execution import execute
    from helpers import task

    study = _study(project, "ahead")
    trial, scope = _scope(project, study)
    scope.prepare()  # what a batch does while the run before this one runs
    sampled, params = scope._ahead.result(timeout=30)
    assert study._storage.get_trial(trial._trial_id).params == params  # in the study before the run starts
    outcome = execute(task(fn("quad"), {}, scope=scope, artifacts=project.artifacts_url))
    assert outcome.state == "completed" and outcome.params == params
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.state.name == "COMPLETE" and frozen.value == outcome.results["score"]


def test_sampling_ahead_yields_the_gil_to_the_trial_running_beside_it(project):
    """``prepare`` samples while the run before this one runs: under ``gil_handoff``'s short switch
    interval, so the running trial's thread gets the GIL back promptly; the interval comes back after."""
    import sys

    from shoal.tuning.gil_handoff import BACKGROUND_SWITCH_INTERVAL

    seen = []

    class Recording(optuna.samplers.RandomSampler):
        def sample_independent(self, *args):
            seen.append(sys.getswitchinterval())
            return super().sample_independent(*args)

    before = sys.getswitchinterval()
    study = _study(project, "handoff")
    trial, scope = _scope(project, study)
    scope.sampler = Recording(seed=1)
    scope.prepare()
    scope._ahead.result(timeout=30)
    assert seen == [pytest.approx(BACKGROUND_SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == before


def test_a_trial_sampled_for_its_queued_task_is_written_only_where_its_run_starts(project, fn):
    """``prepare_queued`` (a Dask worker, for the task queued behind the one it runs) samples but
    writes nothing: the run that starts here uses and writes those values; a run that started
    elsewhere would have sampled its own, and the held ones are never written."""
    from shoal.execution import execute
    from shoal.tuning import trial_scope
    from helpers import task

    study = _study(project, "queued")
    trial, scope = _scope(project, study)
    scope.prepare_queued()
    held = trial_scope._sampled_for_queued[scope._key].result(timeout=30)
    assert study._storage.get_trial(trial._trial_id).params == {}  # nothing written while queued
    outcome = execute(task(fn("quad"), {}, scope=scope, artifacts=project.artifacts_url))
    assert outcome.state == "completed" and outcome.params == held[1]
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.params == held[1] and frozen.state.name == "COMPLETE" and scope._key not in trial_scope._sampled_for_queued

    other, moved = _scope(project, study)
    moved.prepare_queued()  # this process samples it, but the task runs elsewhere: never written
    trial_scope._sampled_for_queued[moved._key].result(timeout=30)
    trial_scope._sampled_for_queued.clear()
    assert study._storage.get_trial(other._trial_id).params == {}


def test_a_trial_is_told_pruned_where_it_ran_and_left_running_when_telling_is_off(project, fn):
    from shoal.execution import execute
    from helpers import task

    study = _study(project, "where")
    trial, scope = _scope(project, study)
    outcome = execute(task(fn("pruned_at_once"), {}, scope=scope, artifacts=project.artifacts_url))
    assert outcome.pruned and study._storage.get_trial(trial._trial_id).state.name == "PRUNED"
    trial, scope = _scope(project, study, tell=False)  # grid, user samplers: the driver tells
    outcome = execute(task(fn("quad"), {}, scope=scope, artifacts=project.artifacts_url))
    assert outcome.state == "completed" and study._storage.get_trial(trial._trial_id).state.name == "RUNNING"


def test_a_batch_queues_each_tell_behind_the_next_trial_and_returns_with_every_trial_told(project, fn):
    """A trial followed by another of its batch has its tell written from a telling thread (the
    next trial starts without waiting for the journal write); the batch's last trial waits for
    those, so every trial is told before the batch's outcomes leave the worker."""
    import json

    from shoal.execution import RunBatch, execute_batch
    from shoal.tuning.storage import default_ref
    from helpers import task

    study = _study(project, "queued")
    made = [_scope(project, study) for _ in range(3)]
    for _, scope in made[:-1]:
        scope.followed = True
    tasks = [task(fn("quad"), {}, scope=scope, artifacts=project.artifacts_url) for _, scope in made]
    outcomes = execute_batch(RunBatch(tasks))
    assert [o.state for o in outcomes] == ["completed"] * 3
    for (trial, _), outcome in zip(made, outcomes):
        frozen = study._storage.get_trial(trial._trial_id)
        assert frozen.state.name == "COMPLETE" and frozen.value == outcome.results["score"]
    with open(default_ref(project).target) as journal:  # who wrote each end (Optuna's op code 6)
        ended = {op["trial_id"]: op["worker_id"] for op in map(json.loads, journal) if op["op_code"] == 6}
    writers = [ended[trial._trial_id] for trial, _ in made]
    assert writers[0] == writers[1] != writers[2]  # the telling thread, then the batch's own
