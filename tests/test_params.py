"""Parameters are checked against the handler's signature and type hints before anything runs:
errors are ParamErrors and leave no run row, no stored input and no saved function version."""

from __future__ import annotations

import math

import numpy as np
import pytest

import shoal
from shoal.params import bind, signature_of
from shoal.runner import run_function

from helpers import functions_from

HANDLERS = '''
from typing import Optional

import shoal


def typed(n: int, lr: float = 0.1, flags: list[int] = [], name: str = "a", verbose: bool = False, data=None):
    return {"n": n, "lr": lr, "flags": flags, "name": name, "verbose": verbose,
            "types": [type(v).__name__ for v in (n, lr, flags, name, verbose)]}


def untyped(a, b=None):
    return {"a": a, "b": b, "ta": type(a).__name__}


def with_ctx(ctx, x: int):
    return {"uid_is_set": bool(ctx.uid), "x": x, "params": ctx.params, "inputs": sorted(ctx.inputs)}


def annotated_ctx(context: shoal.Context, x: int = 1):
    return {"x": x, "is_context": isinstance(context, shoal.Context)}


def flexible(x: int, **rest):
    return {"x": x, "rest": rest}


def takes_input(data, scale: float = 1.0):
    return {"total": float(data.sum()) * scale}


import datetime
import enum
import pathlib


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


def rich_types(path: pathlib.Path, mode: Mode = Mode.FAST, day: Optional[datetime.date] = None):
    return {"path": [type(path).__name__, path.name], "mode": [type(mode).__name__, mode.value],
            "day": [type(day).__name__, str(day)]}


def optional(limit: Optional[int] = None):
    return {"limit": limit}
'''


@pytest.fixture
def fn(tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


def nothing_recorded(project: shoal.Project) -> bool:
    artifacts = project.root / ".shoal" / "artifacts"
    stored = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []
    return project.store.count_runs() == 0 and project.store.list_functions() == [] and stored == []


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n": 1, "nosuch": 2}, "unknown parameter 'nosuch'"),
        ({"n": "ten"}, "parameter 'n' expects int"),
        ({"n": 1.5}, "parameter 'n' expects int"),
        ({"lr": 0.5}, "missing required parameter 'n'"),
        ({"n": 1, "flags": "1,2"}, "parameter 'flags'"),
        ({"n": 1, "name": object()}, "parameter 'name' expects str"),
    ],
)
def test_bad_params_are_param_errors_and_record_nothing(project, fn, params, message):
    typed = fn("typed")
    with pytest.raises(shoal.ParamError, match=message):
        typed.run(params, inputs={"data": np.ones(3)}, project=project, watch=False)
    assert nothing_recorded(project)


def test_param_error_is_a_value_error_with_exit_code_2():
    assert issubclass(shoal.ParamError, ValueError) and shoal.ParamError.exit_code == 2


def test_params_must_be_a_mapping(project, fn):
    with pytest.raises(shoal.ParamError, match="mapping"):
        fn("typed").run([("n", 1)], project=project, watch=False)
    with pytest.raises(shoal.ParamError, match="mapping"):
        fn("takes_input").run({}, inputs=[np.ones(2)], project=project, watch=False)
    assert nothing_recorded(project)


def test_bad_input_names_and_clashes(project, fn):
    with pytest.raises(shoal.ParamError, match="identifiers"):
        fn("takes_input").run(inputs={"data": np.ones(2), "not valid": np.ones(2)}, project=project, watch=False)
    with pytest.raises(shoal.ParamError, match="both as a parameter and as an input"):
        fn("takes_input").run({"data": 1}, inputs={"data": np.ones(2)}, project=project, watch=False)
    assert nothing_recorded(project)


def test_values_are_converted_by_the_hints(project, fn):
    run = fn("typed").run({"n": 3, "lr": 1, "flags": (1, "2")}, project=project, watch=False)
    assert run.state == "completed"
    assert run.results["types"] == ["int", "float", "list", "str", "bool"]
    assert run.results["flags"] == [1, 2]
    assert run.params == {"n": 3, "lr": 1.0, "flags": [1, 2]}


def test_cli_text_values_are_converted(project, fn):
    run = run_function(
        fn("typed"),
        {"n": "7", "lr": "0.25", "flags": "[1, 2, 3]", "name": "123", "verbose": "true"},
        None,
        project=project,
        watch=False,
        from_text=True,
    )
    assert run.state == "completed", run.error
    assert run.results == {
        "n": 7, "lr": 0.25, "flags": [1, 2, 3], "name": "123", "verbose": True,
        "types": ["int", "float", "list", "str", "bool"],
    }
    assert project.runs.get(run.uid).params == {"n": 7, "lr": 0.25, "flags": [1, 2, 3], "name": "123", "verbose": True}


def test_cli_text_without_hints_is_read_as_yaml(project, fn):
    run = run_function(fn("untyped"), {"a": "0.5", "b": "[1, x]"}, None, project=project, watch=False, from_text=True)
    assert run.results == {"a": 0.5, "b": [1, "x"], "ta": "float"}
    run = run_function(fn("optional"), {"limit": "5"}, None, project=project, watch=False, from_text=True)
    assert run.results == {"limit": 5}


def test_cli_text_that_cannot_be_converted(project, fn):
    with pytest.raises(shoal.ParamError, match="parameter 'n' expects int"):
        run_function(fn("typed"), {"n": "seven"}, None, project=project, watch=False, from_text=True)
    assert nothing_recorded(project)


def test_context_parameter_is_not_a_run_parameter(project, fn):
    run = fn("with_ctx").run({"x": "4"}, project=project, watch=False)
    assert run.results == {"uid_is_set": True, "x": 4, "params": {"x": 4}, "inputs": []}
    with pytest.raises(shoal.ParamError, match="unknown parameter 'ctx'"):
        fn("with_ctx").run({"x": 1, "ctx": 2}, project=project, watch=False)
    assert fn("annotated_ctx").run(project=project, watch=False).results == {"x": 1, "is_context": True}
    assert signature_of(fn("annotated_ctx").callable).context_param == "context"


def test_var_keyword_accepts_any_name(project, fn):
    run = fn("flexible").run({"x": 1, "extra": "y"}, project=project, watch=False)
    assert run.results == {"x": 1, "rest": {"extra": "y"}}


def test_spec_defaults_are_parameters_too(project, fn):
    typed = fn("typed", defaults={"n": 5, "lr": 0.5})
    run = typed.run({"lr": 0.75}, project=project, watch=False)
    assert run.params == {"n": 5, "lr": 0.75}
    assert run.results["n"] == 5 and run.results["lr"] == 0.75
    with pytest.raises(shoal.ParamError, match="unknown parameter 'bogus'"):
        fn("typed", defaults={"bogus": 1}).run({"n": 1}, project=project, watch=False)


def test_an_input_satisfies_a_required_parameter(project, fn):
    run = fn("takes_input").run({"scale": 2}, inputs={"data": np.ones(4)}, project=project, watch=False)
    assert run.results == {"total": 8.0}
    with pytest.raises(shoal.ParamError, match="missing required parameter 'data'"):
        fn("takes_input").run({"scale": 2}, project=project, watch=False)


def test_params_that_cannot_be_recorded(project, fn):
    with pytest.raises(shoal.ParamError, match="inputs="):  # small arrays are recorded: test_dask_ports.py
        fn("untyped").run({"a": np.ones(100_000)}, project=project, watch=False)
    with pytest.raises(shoal.ParamError, match="inputs="):
        fn("untyped").run({"a": object()}, project=project, watch=False)
    assert nothing_recorded(project)


def test_nan_and_numpy_params_are_recorded_as_the_store_gives_them_back(project, fn):
    run = fn("untyped").run({"a": float("nan"), "b": np.float32(0.5)}, project=project, watch=False)
    assert run.results["ta"] == "float"  # the handler got the real float
    assert math.isnan(run.results["a"] if isinstance(run.results["a"], float) else float(run.results["a"]))
    assert run.params == {"a": "NaN", "b": 0.5}
    assert project.runs.get(run.uid).params == run.params


def test_bind_directly():
    def handler(ctx, x: int, y: str = "a"):
        return x

    assert bind(handler, {"x": "3"}) == {"x": 3}
    assert bind(handler, {"x": "3"}, defaults={"y": "b"}) == {"x": 3, "y": "b"}
    with pytest.raises(shoal.ParamError, match="parameter names must be strings"):
        bind(handler, {1: 2})


def test_an_input_no_parameter_takes(project, fn):
    with pytest.raises(shoal.ParamError, match="input 'dataa' matches no parameter"):
        fn("takes_input").run(inputs={"data": np.ones(2), "dataa": np.ones(2)}, project=project, watch=False)
    assert nothing_recorded(project)
    # a handler taking ctx reads any input from ctx.inputs
    run = fn("with_ctx").run({"x": 1}, inputs={"extra": [1, 2]}, project=project, watch=False)
    assert run.results["inputs"] == ["extra"]
    # **kwargs takes every input as an argument
    run = fn("flexible").run({"x": 1}, inputs={"blob": "text value"}, project=project, watch=False)
    assert run.results == {"x": 1, "rest": {"blob": "text value"}}


def test_paths_enums_and_dates_are_recorded_as_text_and_given_as_objects(any_project, fn):
    run = fn("rich_types").run({"path": "data/train.csv", "mode": "slow", "day": "2024-02-29"}, project=any_project, watch=False)
    assert run.state == "completed", run.error
    assert run.results == {"path": ["PosixPath", "train.csv"], "mode": ["Mode", "slow"], "day": ["date", "2024-02-29"]}
    assert run.params == {"path": "data/train.csv", "mode": "slow", "day": "2024-02-29"}
    assert any_project.runs.get(run.uid).params == run.params
    with pytest.raises(shoal.ParamError, match="parameter 'mode' expects"):
        fn("rich_types").run({"path": "x", "mode": "medium"}, project=any_project, watch=False)
