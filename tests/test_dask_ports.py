"""Dask and Ray code ported with one call changed: ``client.map(f, xs)`` and
``[f.remote(x) for x in xs]`` become ``fn.map(xs)``; plain values map onto the handler's parameter,
and NumPy rows travel as recorded JSON lists that reach the handler as NumPy again.

The main test follows the shape of the Dask examples' "embarrassingly parallel" notebook (a
``costly_simulation(list_param)`` mapped over the rows of a DataFrame of random parameters, gathered
into a results column) at a small size, on local, dask and ray. Handlers live in a file in the
test's folder, so remote workers run them from the shipped code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import shoal
import shoal.backends
from shoal.numpy_params import MAX_ARRAY_ELEMENTS

from helpers import functions_from


HANDLERS = '''
import random
import time

import numpy as np


def costly_simulation(list_param):
    time.sleep(random.random() / 1000)
    return sum(list_param)


def row_kind(row):
    return {"type": type(row).__name__, "dtype": str(row.dtype), "shape": list(row.shape), "total": row.sum().item()}


def scribble(row):
    row[0] = -1
    return int(row.sum())


def square(x):
    return x * x


def add(a, b=10):
    return a + b


def typed(n: int, lr: float = 0.1):
    return n * lr


def pair(a, b):
    return [type(a).__name__, type(b).__name__]


def needs_two(a, b):
    return a * b


def scaled(data, factor):
    return float(data.sum()) * factor


def count_keys(record):
    return len(record)


def nothing():
    return 1


def kind_of(value):
    return type(value).__name__


def typed_rows(row: np.ndarray):
    return {"type": type(row).__name__, "dtype": str(row.dtype), "shape": list(row.shape)}


def untyped_rows(row):
    return type(row).__name__
'''


@pytest.fixture
def handlers(tmp_path):
    return functions_from(tmp_path / "handlers.py", HANDLERS)


def children(project: shoal.Project, runs: list[shoal.Run]) -> list[shoal.Run]:
    """The map's recorded child runs, in input order."""
    recorded = project.runs.list(parent=runs[0].parent, limit=None)
    return sorted(recorded, key=lambda run: run.iteration)


# -- the Dask example, ported ---------------------------------------------------------------------
def test_embarrassingly_parallel_example_runs_with_fn_map(project, handlers, backend):
    costly_simulation = handlers("costly_simulation")
    input_params = pd.DataFrame(
        np.random.default_rng(7).random(size=(20, 4)), columns=["param_a", "param_b", "param_c", "param_d"]
    )

    futures = costly_simulation.map(input_params.values, backend=backend, project=project)  # client.map(...)
    results = shoal.gather(futures)  # client.gather(futures)

    output = input_params.copy()
    output["result"] = pd.Series(results, index=output.index)
    assert output["result"].tolist() == pytest.approx(input_params.sum(axis=1).tolist())
    recorded = children(project, futures)
    assert len(recorded) == len(input_params) and all(run.state == "completed" for run in recorded)
    assert {run.backend for run in recorded} == {backend.name}
    # Each run's record holds its row as a plain JSON list, exactly.
    assert [run.params for run in recorded] == [{"list_param": row} for row in input_params.values.tolist()]
    assert [run.results["return"] for run in recorded] == results
    parent = project.runs.get(futures[0].parent)
    assert parent.state == "completed" and parent.params == {"map": 20}


def test_numpy_rows_reach_the_handler_as_numpy(project, handlers, backend):
    rows = np.arange(24, dtype=np.int32).reshape(8, 3)
    runs = handlers("row_kind").map(rows, backend=backend, project=project)
    assert [run.state for run in runs] == ["completed"] * 8
    kinds = {(r.results["type"], r.results["dtype"], tuple(r.results["shape"])) for r in runs}
    assert kinds == {("ndarray", "int32", (3,))}
    assert [run.results["total"] for run in runs] == rows.sum(axis=1).tolist()  # in input order
    assert [run.params["row"] for run in children(project, runs)] == rows.tolist()


def test_a_handler_changing_its_row_leaves_the_callers_array_alone(project, handlers, backend):
    rows = np.ones((4, 3), dtype=np.int64)
    runs = handlers("scribble").map(rows, backend=backend, project=project)
    assert [run.results["return"] for run in runs] == [1] * 4  # -1 + 1 + 1: it changed its copy
    assert (rows == 1).all()
    assert [run.params["row"] for run in runs] == [[1, 1, 1]] * 4  # the record holds what was given


# -- the Ray shape --------------------------------------------------------------------------------
def test_ray_remote_calls_become_fn_map_and_fn_submit(project, handlers, backend):
    # @ray.remote def square(x): ...; ray.get([square.remote(x) for x in range(n)])
    square = handlers("square")
    runs = square.map(range(10), backend=backend, project=project)
    assert shoal.gather(runs) == [x * x for x in range(10)]
    assert [run.params for run in children(project, runs)] == [{"x": x} for x in range(10)]
    # square.remote(7) / client.submit(square, 7): one value, no mapping
    handle = square.submit(7, backend=backend, project=project)
    assert shoal.gather([handle]) == [49]  # ray.get(ref); a handle is waited for
    assert square.run(np.int64(3), backend=backend, project=project, watch=False).params == {"x": 3}


# -- the rules for plain values -------------------------------------------------------------------
def nothing_recorded(project: shoal.Project) -> bool:
    return project.store.count_runs() == 0


def test_plain_values_fill_the_first_positional_parameter(project, handlers):
    add = handlers("add")
    assert [r.output("return") for r in add.map([1, 2, 3], project=project)] == [11, 12, 13]
    # client.map(add, xs, ys): zipped, in order onto the positional parameters
    assert [r.output("return") for r in add.map([1, 2], (x for x in [5, 6]), project=project)] == [6, 8]
    # a parameter given by inputs= is skipped: the value goes to the next one
    runs = handlers("scaled").map([2.0, 3.0], inputs={"data": np.ones(4)}, project=project)
    assert [r.output("return") for r in runs] == [8.0, 12.0]
    assert [r.params for r in runs] == [{"factor": 2.0}, {"factor": 3.0}]
    # mappings stay parameter sets, and the two kinds mix
    assert [r.output("return") for r in add.map([{"a": 1, "b": 1}, 4], project=project)] == [2, 14]
    # with several iterables every element is a value, a mapping too; None is a value as well
    pairs = handlers("pair").map([{"a": 1}, 2], [None, {"b": 3}], project=project)
    assert [r.output("return") for r in pairs] == [["dict", "NoneType"], ["int", "dict"]]
    kinds = handlers("kind_of").map([None, (1, 2), [1], "text"], project=project)
    assert [r.output("return") for r in kinds] == ["NoneType", "tuple", "list", "str"]


def test_a_mapping_is_always_a_parameter_set(project, handlers):
    count_keys = handlers("count_keys")
    # keys that name the parameter: a parameter set
    assert count_keys.run({"record": {"a": 1, "b": 2}}, project=project, watch=False).output("return") == 2
    assert count_keys.map([{"record": {"a": 1}}, {"record": {}}], project=project)[1].output("return") == 0
    # keys that do not: an error that says how to pass the dict itself
    with pytest.raises(shoal.ParamError, match=r"params\[0\]: unknown parameter 'a'.*wrap it: \{'record': value\}"):
        count_keys.map([{"a": 1, "b": 2}], project=project)


def test_plain_value_errors_name_the_fix(project, handlers):
    count_runs = project.store.count_runs
    with pytest.raises(shoal.ParamError, match=r"requires 'b'.*fn\.map\(xs, ys\)"):
        handlers("needs_two").map([1, 2], project=project)
    with pytest.raises(shoal.ParamError, match=r"gives 2 values per run but count_keys takes 1 positional parameter"):
        handlers("count_keys").map([1], [2], project=project)
    with pytest.raises(shoal.ParamError, match=r"no positional parameter.*mapping"):
        handlers("nothing").map([1], project=project)
    with pytest.raises(shoal.ParamError, match=r"different lengths \(2, 3\)"):
        handlers("add").map([1, 2], [1, 2, 3], project=project)
    with pytest.raises(shoal.ParamError, match=r"inputs are keyword-only: fn\.map\(xs, inputs="):
        handlers("scaled").map([1.0], {"data": np.ones(2)}, project=project)
    with pytest.raises(shoal.ParamError, match=r"map df\.values.*df\.to_dict\('records'\)"):
        handlers("row_kind").map(pd.DataFrame({"a": [1, 2]}), project=project)
    with pytest.raises(shoal.ParamError, match=r"requires 'b'.*a mapping of name -> value"):
        handlers("needs_two").run(3, project=project)
    with pytest.raises(shoal.ParamError, match=r"expects int.*not a mapping, to the parameter 'n'"):
        handlers("typed").run([("n", 1)], project=project)
    assert count_runs() == 0


# -- NumPy and pandas values ----------------------------------------------------------------------
def test_too_large_arrays_and_tables_go_through_inputs(project, handlers):
    side = int(MAX_ARRAY_ELEMENTS**0.5) + 1
    with pytest.raises(shoal.ParamError) as caught:
        handlers("row_kind").map(np.zeros((2, side * side)), project=project)
    message = str(caught.value)
    assert "params[0]: parameter 'row'" in message and f"{side * side:,} elements" in message
    assert "inputs={'row': value}" in message
    with pytest.raises(shoal.ParamError, match=r"'row' is a pandas Series.*inputs=\{'row': value\}"):
        handlers("row_kind").run({"row": pd.Series([1.0, 2.0])}, project=project)
    with pytest.raises(shoal.ParamError, match=r"'row' \(ndarray of dtype complex128\) has no JSON form.*inputs="):
        handlers("row_kind").run({"row": np.ones(2, dtype=complex)}, project=project)
    assert nothing_recorded(project)
    # the same array as an input: stored once, loaded as an array on the worker
    run = handlers("scaled").run({"factor": 2}, inputs={"data": np.ones(side * side)}, project=project, watch=False)
    assert run.output("return") == 2.0 * side * side


def test_numpy_and_pandas_scalars_are_recorded_as_json_and_arrive_as_given(project, handlers):
    values = [np.int64(5), np.float32(1.5), np.bool_(True), pd.Timestamp("2024-03-01 12:30"), pd.NA, pd.NaT,
              np.datetime64("2024-03-01"), pd.Timedelta(seconds=90)]
    runs = handlers("kind_of").map(values, project=project)
    assert [r.output("return") for r in runs] == [
        "int64", "float32", "bool", "Timestamp", "NAType", "NaTType", "datetime64", "Timedelta"
    ]
    assert [r.params["value"] for r in children(project, runs)] == [
        5, 1.5, True, "2024-03-01T12:30:00", None, None, "2024-03-01", "P0DT0H1M30S"
    ]


def test_a_rerun_from_the_record_gets_numpy_back_when_annotated(project, handlers):
    first = handlers("typed_rows").run(np.arange(6, dtype=np.float32).reshape(2, 3), project=project, watch=False)
    assert first.results == {"type": "ndarray", "dtype": "float32", "shape": [2, 3]}
    stored = project.runs.get(first.uid)
    assert stored.params == {"row": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}
    again = handlers("typed_rows").run(stored.params, project=project, watch=False)
    # JSON keeps values and shape, not the dtype: an annotation np.ndarray gives NumPy's default
    assert again.results == {"type": "ndarray", "dtype": "float64", "shape": [2, 3]}
    # unannotated, a re-run gets what the record holds
    row = handlers("untyped_rows").run(np.ones(3), project=project, watch=False)
    assert row.output("return") == "ndarray"
    again = handlers("untyped_rows").run(project.runs.get(row.uid).params, project=project, watch=False)
    assert again.output("return") == "list"


# -- gather ---------------------------------------------------------------------------------------
def test_gather_gives_values_and_raises_or_skips_failed_runs(project, tmp_path):
    (tmp_path / "mixed.py").write_text(
        "def mixed(x: int):\n"
        "    if x == 2:\n"
        "        raise ValueError('two')\n"
        "    return {'double': 2 * x} if x == 3 else x\n"
    )
    runs = shoal.Function.from_file(tmp_path / "mixed.py", "mixed").map(range(4), project=project)
    with pytest.raises(shoal.RunFailedError, match="ValueError: two"):
        shoal.gather(runs)  # Dask's default: the first failed task raises
    assert shoal.gather(runs, errors="skip") == [0, 1, {"double": 6}]
    with pytest.raises(ValueError, match="errors must be"):
        shoal.gather(runs, errors="ignore")


def test_string_annotations_convert_parameters_on_every_engine(project, backend, tmp_path):
    # A file with ``from __future__ import annotations``: its hints are strings naming its imports.
    (tmp_path / "future_hints.py").write_text(
        "from __future__ import annotations\n"
        "import pathlib\n"
        "def kind(p: pathlib.Path, n: int = 0):\n"
        "    return [type(p).__name__, type(n).__name__]\n"
    )
    fn = shoal.Function.from_file(tmp_path / "future_hints.py", "kind")
    run = fn.run({"p": "/tmp/x", "n": "3"}, backend=backend, project=project)
    assert run.results["return"] == ["PosixPath", "int"]
