"""The shipped conformance suite (``shoal.testing.BackendConformance``) on every engine here: local,
dask and ray (the ``backend`` fixture of conftest.py: one cluster per engine for the session, a
fresh two-thread pool for local), and on a third party's backend found through the entry point.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

import shoal.backends
from shoal.backends.local import LocalBackend
from shoal.testing import BackendConformance


class TestEngines(BackendConformance):
    """Every case on local, dask and ray."""

    def backend_address(self, backend):
        if backend.name == "dask" and backend.address is None:  # the session's embedded cluster
            return "dask://" + backend.client.scheduler.address.split("://", 1)[1]
        return super().backend_address(backend)


# A third party's package: a backend of its own (the local thread pool under another name), declared
# under the ``shoal.backends`` entry point group in its installed metadata.
PLUGIN_MODULE = '''
from shoal.backends.local import LocalBackend


class PoolBackend(LocalBackend):
    """Threads of the calling process, under a name of its own."""

    name = "pool"
'''
PLUGIN_METADATA = "Metadata-Version: 2.1\nName: shoal-pool-backend\nVersion: 1.0\n"
PLUGIN_ENTRY_POINTS = "[shoal.backends]\npool = shoal_pool_backend:PoolBackend\n"


@pytest.fixture(scope="class")
def installed_plugin(tmp_path_factory):
    """The package installed in a folder on sys.path (and on PYTHONPATH, for scripts the suite
    starts), as pip would lay it out: the module and its ``.dist-info`` with the entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "shoal_pool_backend.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = site / "shoal_pool_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(PLUGIN_METADATA)
    (info / "entry_points.txt").write_text(PLUGIN_ENTRY_POINTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        patch.setenv("PYTHONPATH", str(site), prepend=":")
        importlib.invalidate_caches()
        yield site
    sys.modules.pop("shoal_pool_backend", None)


class TestThirdPartyBackend(BackendConformance):
    """Every case on a backend shoal knows only through the entry point."""

    @pytest.fixture
    def backend(self, installed_plugin):
        with shoal.backends.get("pool", n_workers=2) as backend:
            yield backend

    def test_found_through_the_entry_point(self, backend, installed_plugin):
        assert "pool" in shoal.backends.available()
        assert type(backend).__name__ == "PoolBackend" and type(backend).__module__ == "shoal_pool_backend"
        assert isinstance(backend, LocalBackend) and type(backend) is not LocalBackend
        assert backend.name == "pool"
