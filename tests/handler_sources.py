"""Handler source text for shoal's tests: the shipped one (``shoal.testing.handlers``, re-exported
here for the tests that import it by this name) and a script that a fault test interrupts.
"""

from __future__ import annotations

from shoal.testing.handlers import HANDLERS, handler_functions, write_handlers

__all__ = ["HANDLERS", "INTERRUPTED_MAP", "SERVICE_HANDLERS", "handler_functions", "write_handlers"]

# A script that maps ``looper`` over four items (or COUNT in batches of BATCH_SIZE), one at a time, on
# the backend named in its arguments, so that a test can press Ctrl-C while the first run is going
# (see helpers.interrupt_map).
INTERRUPTED_MAP = '''
import signal
import sys

import shoal

if __name__ == "__main__":
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even if the test runner was started with
    # SIGINT ignored (a background job of a shell), which this process would inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    folder, handlers, backend = sys.argv[1], sys.argv[2], sys.argv[3]
    count, batch_size = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (4, 1)
    project = shoal.Project(folder, name="interrupted")
    looper = shoal.Function.from_file(handlers, "looper", replicas=(1, 1))
    looper.map(
        [{"marker": f"{folder}/started-{i}"} for i in range(count)], backend=backend, project=project, batch_size=batch_size
    )
'''

# Handlers both services test modules (local and Ray Serve) deploy; each adds its own.
SERVICE_HANDLERS = """
import os
import threading


def predict(x: list[float], scale: float = 1.0) -> dict:
    return {"sum": sum(x) * scale, "pid": os.getpid()}


def fails(x: int):
    return 1 / x


def secret_reversed() -> str:
    return os.environ["API_TOKEN"][::-1]  # reversed: an answer quoting the value itself is masked


class Broken:
    def __init__(self, ctx):
        raise RuntimeError("model file missing")

    def __call__(self, x: float):
        return x


def held(started: str, release: str) -> str:
    with open(started, "a") as out:
        out.write("started\\n")  # the test waits for this before it sends more
    for _ in range(12000):  # until the test releases it (bounded: 2 minutes)
        if os.path.exists(release):
            return "done"
        threading.Event().wait(0.01)
    return "never released"
"""
