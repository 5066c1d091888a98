"""The one task codec of the engines (``shoal.backends.task_codec``): single tasks and batches come
back equal, the fast path is the standard pickler, and what only the driver's ``__main__`` can name
travels by value so another process can decode it."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest

from shoal.backends.task_codec import decode, encode
from shoal.execution import RunBatch, RunTask, execute_registered

from handler_sources import handler_functions
from helpers import task


@pytest.fixture
def fn(tmp_path):
    return handler_functions(tmp_path)


def _fields(t: RunTask) -> dict:
    state = dict(vars(t))
    state.pop("code")
    return state


def test_single_task_round_trip(fn, tmp_path):
    original = task(fn("add"), {"x": 2, "y": 3}, artifacts=tmp_path, labels={"k": "v"}, env={"X": "1"}, attempt=2)
    original.callable = print  # in-process only: never shipped

    data = encode(original)
    back = decode(data)

    assert isinstance(data, bytes)
    assert isinstance(back, RunTask)
    assert _fields(back) == _fields(original) | {"callable": None}
    assert back.code.text == original.code.text and back.code.kind == original.code.kind
    outcome = execute_registered(back)
    assert outcome.state == "completed", outcome.error
    assert outcome.results["sum"] == 5


def test_batch_round_trip(fn, tmp_path):
    add = fn("add")
    batch = RunBatch([task(add, {"x": i, "y": 1}, artifacts=tmp_path) for i in range(5)])

    back = decode(encode(batch))

    assert isinstance(back, RunBatch)
    assert back.uid == batch.uid
    assert back.uids == batch.uids
    assert [t.params for t in back.tasks] == [{"x": i, "y": 1} for i in range(5)]
    assert [execute_registered(t).results["sum"] for t in back.tasks] == [1, 2, 3, 4, 5]


def test_importable_values_take_the_standard_pickler(fn, tmp_path):
    """Nothing from ``__main__``: the bytes are exactly the C pickler's (no cloudpickle cost)."""
    original = task(fn("add"), {"x": 1, "y": 1}, artifacts=tmp_path)
    assert encode(original) == pickle.dumps(original, protocol=5)


def test_unpicklable_by_reference_goes_by_value(fn, tmp_path):
    """A lambda has no importable name: the standard pickler refuses it, cloudpickle ships it."""
    original = task(fn("add"), {"x": 1, "y": 1}, artifacts=tmp_path, scope=lambda context: ("scoped", context))
    with pytest.raises(Exception):
        pickle.dumps(original, protocol=5)

    back = decode(encode(original))

    assert back.scope("ctx") == ("scoped", "ctx")


MAIN_SCRIPT = textwrap.dedent(
    """
    import sys

    from shoal.backends.task_codec import encode
    from shoal.execution import RunBatch

    sys.path.insert(0, sys.argv[2])
    from helpers import task
    from handler_sources import handler_functions


    class MainScope:
        def __init__(self, tag):
            self.tag = tag

        def describe(self):
            return f"main scope {self.tag}"


    fn = handler_functions(sys.argv[3])("add")
    batch = RunBatch([task(fn, {"x": 1, "y": 2}, scope=MainScope(7))])
    with open(sys.argv[1], "wb") as out:
        out.write(encode(batch))
    """
)


def test_values_of_the_drivers_main_decode_elsewhere(tmp_path):
    """A class of the user's script (``__main__``) pickles by reference without error, yet no worker
    could import it: the codec ships it by value, so a process with another ``__main__`` decodes it."""
    import os

    script = tmp_path / "driver.py"
    script.write_text(MAIN_SCRIPT)
    out = tmp_path / "task.bin"
    tests_dir = os.path.dirname(__file__)
    (tmp_path / "handlers").mkdir()
    subprocess.run([sys.executable, str(script), str(out), tests_dir, str(tmp_path / "handlers")], check=True)

    back = decode(out.read_bytes())

    assert isinstance(back, RunBatch)
    assert type(back.tasks[0].scope).__name__ == "MainScope"
    assert back.tasks[0].scope.describe() == "main scope 7"


def test_modules_registered_by_value_travel_by_value(fn, tmp_path, monkeypatch):
    """A module registered with cloudpickle to travel by value (as shoal registers the files the
    driver ran as function code) is not named by reference: a process without it decodes the task."""
    import cloudpickle

    folder = tmp_path / "driver_only"
    folder.mkdir()
    (folder / "driver_only_params.py").write_text("class Point:\n    def __init__(self, x):\n        self.x = x\n")
    monkeypatch.syspath_prepend(str(folder))
    import driver_only_params

    original = task(fn("add"), {"x": 1, "point": driver_only_params.Point(4)}, artifacts=tmp_path)
    assert encode(original) == pickle.dumps(original, protocol=5)  # not registered: by reference

    cloudpickle.register_pickle_by_value(driver_only_params)
    try:
        data = encode(original)
    finally:
        cloudpickle.unregister_pickle_by_value(driver_only_params)
        sys.modules.pop("driver_only_params", None)
    out = tmp_path / "task.bin"
    out.write_bytes(data)
    probe = (
        "import sys; from shoal.backends.task_codec import decode; "
        f"t = decode(open({str(out)!r}, 'rb').read()); "
        "print(type(t.params['point']).__name__, t.params['point'].x, 'driver_only_params' in sys.modules)"
    )
    printed = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert printed.stdout.split() == ["Point", "4", "False"]


def test_an_outcome_round_trips_as_its_fields():
    """RunOutcome pickles as a tuple of its fields (``__reduce__``): every field comes back."""
    from shoal.execution import RunOutcome

    outcome = RunOutcome(
        "u", "failed", 2, 1.0, 2.0, {"a": 1}, {"m": [[0, 1.0]]}, [{"k": "v"}], "log",
        {"type": "X", "message": "m", "traceback": ""}, "h:1", {"p": 1}, {"l": "v"},
    )  # fmt: skip
    assert decode(encode(outcome)) == outcome
