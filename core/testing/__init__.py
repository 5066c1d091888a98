"""Test support shipped with shoal: the backend conformance suite and the handlers it runs.

Any backend, shoal's own or a third party's registered under the ``shoal.backends`` entry point
group, proves it behaves like the others by running the same assertions. In the backend package's
tests, subclass the suite and give it a ``backend`` fixture::

    # pyproject.toml of the package:
    #   [project.entry-points."shoal.backends"]
    #   mine = "shoal_mine:MineBackend"

    # tests/test_conformance.py of the package:
    import pytest
    import shoal.backends
    from shoal.testing import BackendConformance


    class TestMine(BackendConformance):
        @pytest.fixture
        def backend(self):
            with shoal.backends.get("mine", n_workers=2) as backend:
                yield backend

``pytest tests/test_conformance.py`` then runs every case on ``mine``. Override the ``project``
fixture for a store the engine's workers can reach, and ``backend_address`` for how a script in
another process reaches the engine. ``shoal.testing.handlers`` holds the handler source text;
``wait_for`` waits on a condition. Only ``BackendConformance`` needs pytest (imported on first use),
and ``import shoal`` imports none of this.
"""

from __future__ import annotations

import importlib
from typing import Any

from .handlers import HANDLERS, handler_functions, write_handlers
from .waiting import wait_for

__all__ = ["HANDLERS", "BackendConformance", "handler_functions", "wait_for", "write_handlers"]


def __getattr__(name: str) -> Any:
    """``BackendConformance`` on first use, so that the handlers need no pytest."""
    if name == "BackendConformance":
        return importlib.import_module(f"{__name__}.conformance").BackendConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
