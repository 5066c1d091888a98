"""Handler source text for the conformance suite and shoal's own tests, and the helpers that write it out.

Tests write this text into their own temporary folder, outside sys.path, and load handlers with
``Function.from_file``: a worker can then only run them from the code shoal captured and shipped,
never by importing a module. One text serves every engine, so a handler means the same everywhere.
Importing this module needs no pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import shoal

__all__ = ["HANDLERS", "MAIN_SCRIPT", "VERSIONED", "handler_functions", "write_handlers"]

HANDLERS = '''
import asyncio
import fcntl
import json
import os
import pathlib
import sys
import time

import numpy as np

import shoal


# -- results, logs and artifacts --------------------------------------------------------------------
def add(x: int, y: float = 1.0):
    print("adding", x, y)
    return {"sum": x + y, "pid": os.getpid()}


def square(x: int):
    print("square of", x)
    return {"square": x * x, "pid": os.getpid()}


def scalar(x: int = 2):
    return x * 10


def nothing():
    return None


def numpy_values():
    return {"f": np.float64(0.5), "i": np.int64(3), "b": np.bool_(True), "nan": float("nan"), "t": (1, 2)}


def unjsonable():
    return {"arr": np.arange(4), "ok": 1}


def logs_everything(ctx: shoal.Context, n: int = 3):
    ctx.log_result("accuracy", 0.75)
    for step in range(n):
        ctx.log_metric("loss", 1.0 / (step + 1), step=step)
    ctx.log_artifact("weights", np.arange(n, dtype=np.float64))
    ctx.log_artifact("notes", "written on the worker")
    ctx.logger.info("through the logger")
    print("through print")
    return {"pid": os.getpid()}


def uses_logger(ctx):
    ctx.logger.info("through the logger")
    print("through print")
    print("to stderr", file=sys.stderr)


def chatty(lines: int):
    for i in range(lines):
        print(f"line {i:07d} " + "x" * 100)
    print("THE LAST LINE")


def nul_logger():
    print("a\\x00b")
    return {"text": "c\\x00d"}


def writes_bytes():
    print("text first")
    sys.stdout.write(b"raw bytes")


def echo_env():
    return {"value": os.environ.get("SHOAL_TEST_VALUE")}


async def coroutine(x: int = 1):
    await asyncio.sleep(0)
    return {"double": 2 * x}


def pick(i: int, fail_on: int = -1, delay: float = 0.0):
    time.sleep(delay)
    if i == fail_on:
        raise ValueError(f"item {i} fails")
    return {"square": i * i}


def summed(data, x: int = 1):
    return {"total": float(data.sum()) * x}


def big(ctx, data, scale: float = 2.0):
    ctx.log_artifact("scaled", data * scale)
    return {"sum": float(data.sum()), "shape": list(data.shape)}


# -- failures and retries ---------------------------------------------------------------------------
def fails(ctx):
    ctx.log_result("before", 1)
    print("about to fail")
    raise ValueError("broken on purpose")


def logs_then_fails(ctx: shoal.Context):
    ctx.log_result("accuracy", 0.9)
    ctx.log_metric("loss", 1.0, step=0)
    ctx.log_metric("loss", 0.5, step=1)
    ctx.log_metric("loss", float("nan"), step=2)
    ctx.log_artifact("weights", np.ones(3))
    print("about to fail")
    raise ValueError("broken on purpose")


def always_fails():
    print("failing")
    raise KeyError("nope")


def exits():
    sys.exit(3)


def flaky(ctx, marker: str):
    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("failed once")
        print("first attempt fails")
        raise RuntimeError("transient")
    print("second attempt works")
    return {"attempt": ctx.attempt}


# -- long runs: timeouts, cancellation, killed workers -----------------------------------------------
def sleeper(ctx, seconds: float = 30.0):
    ctx.log_result("before", 1)
    print("going to sleep")
    time.sleep(seconds)
    return {"after": 1}


def nap(seconds: float = 0.5):
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


def looper(ctx, marker: str = "", steps: int = 3000, pause: float = 0.01):
    """Logs a metric a step; after the first one, writes its process's pid to ``marker``."""
    for step in range(steps):
        ctx.log_metric("step", step)
        if marker and step == 0:
            pathlib.Path(marker).write_text(str(os.getpid()))
        time.sleep(pause)
    return {"done": True}


def stubborn(marker: str):
    """Ignores interrupts: only killing its worker stops it."""
    pathlib.Path(marker).write_text(str(os.getpid()))
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:
            pass
    return {}


def victim(ctx, pidfile: str, seconds: float = 120.0):
    """First attempt: publish the worker's pid and wait to be killed; later attempts are quick."""
    if ctx.attempt == 1:
        pathlib.Path(pidfile).write_text(str(os.getpid()))
        time.sleep(seconds)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def gated(release: str, limit: float = 120.0):
    """Holds its worker until the file ``release`` exists (at most ``limit`` s): a backlog that
    lasts exactly as long as the test needs it."""
    end = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.02)
    return {"pid": os.getpid(), "released": os.path.exists(release)}


def bystander(i: int, log: str, hold: float = 0.3):
    with open(log, "a") as handle:
        handle.write(f"{i}\\n")
    time.sleep(hold)
    return {"i": i}


# -- batches of short runs --------------------------------------------------------------------------
def tagged(ctx, i: int, fail_on: int = -1, flaky_on: int = -1):
    print(f"item {i} says hello")
    if i == fail_on:
        raise ValueError(f"item {i} fails")
    if i == flaky_on and ctx.attempt == 1:
        raise RuntimeError("transient")
    ctx.log_metric("i", i)
    return {"square": i * i}


def dies_once(i: int, die_on: int, marker: str):
    """Run ``die_on`` crashes its worker process the first time (os._exit: no exception to catch)."""
    if i == die_on and not os.path.exists(marker):
        pathlib.Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return {"i": i}


# -- concurrency ------------------------------------------------------------------------------------
def _update(path, change):
    with open(path, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = json.loads(handle.read() or "{}")
        state["now"] = state.get("now", 0) + change
        state["peak"] = max(state.get("peak", 0), state["now"])
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(state))


def concurrent(counter: str, pair: int = 2, hold: float = 0.05):
    """Count how many run at once in the JSON file ``counter`` ({"now": .., "peak": ..}); wait
    (bounded) until ``pair`` are in flight together, then ``hold`` seconds."""
    _update(counter, +1)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with open(counter) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            if json.loads(handle.read())["now"] >= pair:
                break
        time.sleep(0.005)
    time.sleep(hold)
    _update(counter, -1)
    return {}
'''

# A handler file whose text changes after the Function is made: workers must run the captured text.
VERSIONED = """
import os
import sys

VERSION = {version}


def where():
    folder = os.path.dirname(os.path.abspath(__file__))
    return {{
        "version": VERSION,
        "module": __name__,
        "on_sys_path": any(os.path.abspath(p or os.curdir) == folder for p in sys.path),
    }}
"""

# A script whose handlers live in __main__: one at the top (shipped as the script's text), one under
# the main guard (shipped by value).
MAIN_SCRIPT = """
import json
import sys

import shoal


def double(x: int):
    return {"double": 2 * x, "module": __name__}


if __name__ == "__main__":
    def triple(x: int):
        return {"triple": 3 * x}

    backend, folder = sys.argv[1], sys.argv[2]
    project = shoal.Project(folder, name="main")
    first = shoal.function(double).run({"x": 21}, backend=backend, project=project, watch=False)
    second = shoal.function(triple).run({"x": 5}, backend=backend, project=project, watch=False)
    runs = shoal.function(double).map([{"x": 1}, {"x": 2}], backend=backend, project=project)
    print(json.dumps({
        "states": [first.state, second.state] + [r.state for r in runs],
        "errors": [first.error, second.error],
        "double": first.results.get("double"),
        "module": first.results.get("module"),
        "triple": second.results.get("triple"),
        "mapped": [r.results.get("double") for r in runs],
        "backend": first.backend,
    }))
    project.close()
"""


def write_handlers(folder: Path) -> Path:
    """Write HANDLERS to ``folder``/handlers.py (tests and scripts load it from there)."""
    path = Path(folder) / "handlers.py"
    path.write_text(HANDLERS)
    return path


def handler_functions(folder: Path) -> Callable[..., shoal.Function]:
    """``fn(handler, **options)``: a Function made from the handlers file written to ``folder``."""
    path = write_handlers(folder)
    return lambda handler, **options: shoal.Function.from_file(path, handler, **options)
