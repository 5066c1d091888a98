"""Shared fixtures: a project on SQLite in a temporary folder, and the PostgreSQL server when present."""

from __future__ import annotations

import importlib.util
import os
import uuid

import pytest

import shoal
from shoal.testing.conformance import scratch_project

PG_ADMIN_URL = os.environ.get("SHOAL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_available() -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}"


_PG_REASON = postgres_available()

REDIS_URL = os.environ.get("SHOAL_TEST_REDIS", "redis://127.0.0.1:6379")


def redis_available() -> str | None:
    """None when the Redis server answers, else the reason it does not."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure: skip with the reason
        return f"Redis not reachable at {REDIS_URL}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


requires_postgres = pytest.mark.skipif(_PG_REASON is not None, reason=_PG_REASON or "")


@pytest.fixture
def project(tmp_path, monkeypatch) -> shoal.Project:
    """A fresh project (SQLite + local artifact folder) in a temporary working folder."""
    yield from scratch_project(tmp_path, monkeypatch)


@pytest.fixture
def pg_project(tmp_path) -> shoal.Project:
    """A project on the PostgreSQL server (own project name, so tests do not see each other)."""
    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    proj = shoal.Project(tmp_path, name=f"t{uuid.uuid4().hex[:12]}", database=PG_ADMIN_URL)
    yield proj
    proj.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_project(request, tmp_path, monkeypatch) -> shoal.Project:
    """The same test on SQLite and on PostgreSQL."""
    monkeypatch.chdir(tmp_path)
    if request.param == "postgresql":
        if _PG_REASON is not None:
            pytest.skip(_PG_REASON)
        proj = shoal.Project(tmp_path, name=f"t{uuid.uuid4().hex[:12]}", database=PG_ADMIN_URL)
    else:
        proj = shoal.Project(tmp_path, name="test")
    yield proj
    proj.close()


@pytest.fixture(scope="session")
def dask_backend():
    """One embedded Dask LocalCluster (two single-thread worker processes) for the whole session (one
    per xdist worker): startup costs a second or two, so the conformance suite shares it; closed with
    its processes."""
    import shoal.backends

    backend = shoal.backends.get("dask", n_workers=2)
    backend.start()
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def ray_backend():
    """One local Ray instance of its own (2 CPUs, fixed size) for the whole session (one per xdist
    worker): startup costs a few seconds, and Ray allows one connection per process, so every
    in-process Ray test shares it; closed with its processes at the end."""
    pytest.importorskip("ray")
    import shoal.backends

    backend = shoal.backends.get("ray", num_cpus=2)
    backend.start()
    yield backend
    backend.close()


#: The three backends every feature runs on (Ray only where it is installed).
ENGINES = ["local", "dask"] + (["ray"] if importlib.util.find_spec("ray") else [])


@pytest.fixture(params=ENGINES)
def backend(request):
    """The backend under test: a fresh local pool of 2 threads, or the session's Dask or Ray backend."""
    if request.param == "local":
        with shoal.backends.get("local", n_workers=2) as local:
            yield local
        return
    yield request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(params=ENGINES)
def engine(request):
    """What a user passes as ``backend=``: the name "local" (the project's own pool), or the session's
    Dask or Ray backend."""
    if request.param == "local":
        return "local"
    return request.getfixturevalue(f"{request.param}_backend")
