"""Per-run env and secrets on the local, Dask and Ray backends.

Two concurrent runs that set the same variable to different values each see their own (each waits
on a barrier folder until the other has started, so they really overlap). Secret references resolve
from the project's secrets file or SHOAL_SECRET_* variables, reach the handler's environment, and
never reach the database, the logs, ``shoal runs show``, the function document or the hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

import shoal
import shoal.backends
from shoal.errors import SecretError
from shoal.secrets import SecretsFile, SecretValues, env_var_name, secrets_file

from helpers import functions_from, task

SECRET = "s3cr3t-" + uuid.uuid4().hex  # unique, so finding it anywhere is a leak
VARIABLE = "SHOAL_TEST_SHARED"
REFERENCE = {"secret": "api", "key": "token"}

HANDLERS = '''
import hashlib
import os
import pathlib
import time

import shoal


def wait_then_read(barrier: str, name: str, parties: int = 2):
    """Arrive at the barrier folder, wait for the other run, then read the variable."""
    folder = pathlib.Path(barrier)
    (folder / name).touch()
    end = time.monotonic() + 120
    while len(list(folder.iterdir())) < parties:
        if time.monotonic() > end:
            raise TimeoutError("the other run never arrived at the barrier")
        time.sleep(0.01)
    return {"value": os.environ.get("SHOAL_TEST_SHARED"), "pid": os.getpid()}


def uses_secret(ctx: shoal.Context, fail: bool = False):
    value = os.environ["API_TOKEN"]
    print("the token is", value)
    ctx.log_result("digest", hashlib.sha256(value.encode()).hexdigest())
    if fail:
        raise RuntimeError(f"the service refused token {value}")
    return {"echo": value}
'''


@pytest.fixture
def fn(tmp_path):
    return functions_from(tmp_path / "env_handlers.py", HANDLERS)


def _barrier(tmp_path: Path) -> Path:
    folder = tmp_path / f"barrier-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def _two_concurrent_runs(fn, tmp_path, project, backend) -> None:
    """Two runs with different values of one variable overlap; each must see its own."""
    barrier = _barrier(tmp_path)
    first = fn("wait_then_read", env={VARIABLE: "first"})
    second = fn("wait_then_read", env={VARIABLE: "second"})
    handles = [
        first.submit({"barrier": str(barrier), "name": "a"}, backend=backend, project=project),
        second.submit({"barrier": str(barrier), "name": "b"}, backend=backend, project=project),
    ]
    runs = [h.result() for h in handles]
    assert [r.state for r in runs] == ["completed", "completed"], [r.error for r in runs]
    assert [r.results["value"] for r in runs] == ["first", "second"]
    assert VARIABLE not in os.environ  # the driver's environment was never touched
    return runs


def test_concurrent_local_runs_see_their_own_env(fn, tmp_path, project):
    with shoal.backends.get("local", n_workers=2) as backend:
        runs = _two_concurrent_runs(fn, tmp_path, project, backend)
    pids = {r.results["pid"] for r in runs}
    assert len(pids) == 2 and os.getpid() not in pids  # each in a process of its own


def test_concurrent_dask_runs_in_one_worker_process_see_their_own_env(fn, tmp_path, project):
    # One worker with two threads: both runs share its process, so env must not be set there.
    with shoal.backends.get("dask", n_workers=1, threads_per_worker=2) as backend:
        runs = _two_concurrent_runs(fn, tmp_path, project, backend)
    assert len({r.results["pid"] for r in runs}) == 2  # each in a process of its own, not the worker's


def test_concurrent_dask_runs_on_single_thread_workers_see_their_own_env(fn, tmp_path, project, dask_backend):
    _two_concurrent_runs(fn, tmp_path, project, dask_backend)


def test_concurrent_ray_runs_see_their_own_env(fn, tmp_path, project, ray_backend):
    _two_concurrent_runs(fn, tmp_path, project, ray_backend)


def test_a_run_without_env_on_the_local_backend_stays_in_process(fn, tmp_path, project):
    barrier = _barrier(tmp_path)
    run = fn("wait_then_read").run({"barrier": str(barrier), "name": "a", "parties": 1}, backend="local", project=project)
    assert run.results == {"value": None, "pid": os.getpid()}


# -- secrets --------------------------------------------------------------------------------------
def _database_text(project) -> str:
    """Every row of every table, as text."""
    project.flush()
    engine = sa.create_engine(project.database)
    try:
        with engine.connect() as connection:
            tables = sa.inspect(connection).get_table_names()
            rows = [str(tuple(row)) for name in tables for row in connection.execute(sa.text(f'select * from "{name}"'))]
    finally:
        engine.dispose()
    assert any("uses_secret" in row for row in rows)  # the dump does see the runs
    return "\n".join(rows)


def _check_secret_run(fn, project, backend) -> list[shoal.Run]:
    secret_fn = fn("uses_secret", env={"API_TOKEN": REFERENCE})
    ok = secret_fn.run(backend=backend, project=project, watch=False)
    failed = secret_fn.run({"fail": True}, backend=backend, project=project, watch=False)
    assert ok.state == "completed", ok.error
    assert ok.results == {"digest": hashlib.sha256(SECRET.encode()).hexdigest(), "echo": "****"}
    assert ok.logs == "the token is ****\n"
    assert failed.state == "failed" and failed.error["message"] == "the service refused token ****"
    assert SECRET not in json.dumps(failed.error) and "token ****" in failed.error["traceback"]
    for run in (ok, failed):
        assert SECRET not in json.dumps(project.runs.get(run.uid).to_dict(), default=str)
    assert SECRET not in _database_text(project)
    return [ok, failed]


@pytest.fixture
def stored_secret(project):
    secrets_file(project).set(REFERENCE["secret"], REFERENCE["key"], SECRET)
    return project


def test_a_secret_reaches_a_local_run_and_nothing_else(fn, stored_secret, tmp_path):
    project = stored_secret
    ok, failed = _check_secret_run(fn, project, "local")
    secret_fn = fn("uses_secret", env={"API_TOKEN": REFERENCE})
    for text in (secret_fn.to_yaml(), json.dumps(secret_fn.to_dict()), secret_fn.hash):
        assert SECRET not in text
    assert secret_fn.to_dict()["spec"]["env"] == {"API_TOKEN": REFERENCE}
    secrets_file(project).set("api", "token", "another value")
    assert fn("uses_secret", env={"API_TOKEN": REFERENCE}).hash == secret_fn.hash  # values are not hashed
    (project.root / "shoal.yaml").write_text("name: test\n")  # the fixture's project, for the CLI
    for args in (["runs", "show", ok.uid], ["runs", "show", failed.uid, "--json"], ["runs", "logs", ok.uid]):
        shown = _cli(project.root, *args)
        assert shown.returncode == 0, shown.stderr
        assert SECRET not in shown.stdout + shown.stderr


def test_a_secret_reaches_dask_runs_and_nothing_else(fn, stored_secret, dask_backend):
    _check_secret_run(fn, stored_secret, dask_backend)


def test_a_secret_reaches_ray_runs_and_nothing_else(fn, stored_secret, ray_backend):
    _check_secret_run(fn, stored_secret, ray_backend)


def test_a_secret_from_an_environment_variable(fn, project, monkeypatch):
    secrets_file(project).set("api", "token", "the file's value")
    monkeypatch.setenv("SHOAL_SECRET_API_TOKEN", SECRET)  # the variable comes first
    assert env_var_name("api", "token") == "SHOAL_SECRET_API_TOKEN"
    assert env_var_name("wandb", "api-key.v2") == "SHOAL_SECRET_WANDB_API_KEY_V2"
    run = fn("uses_secret", env={"API_TOKEN": REFERENCE}).run(backend="local", project=project, watch=False)
    assert run.results["digest"] == hashlib.sha256(SECRET.encode()).hexdigest()


def test_an_unresolved_secret_is_an_error_before_anything_is_recorded(fn, project):
    secret_fn = fn("uses_secret", env={"API_TOKEN": REFERENCE, "OTHER": {"secret": "db", "key": "password"}})
    for call in (
        lambda: secret_fn.run(backend="local", project=project),
        lambda: secret_fn.map([{}, {}], backend="local", project=project),
        lambda: shoal.tune(secret_fn, {"fail": [False]}, objective="max.digest", n_trials=1, backend="local", project=project),
    ):
        with pytest.raises(SecretError) as caught:
            call()
        message = str(caught.value)
        assert "secret 'api' key 'token' is not set" in message
        assert "shoal secrets set api token" in message and "SHOAL_SECRET_API_TOKEN" in message
        assert "1 more: OTHER" in message
    assert project.store.count_runs() == 0
    assert project.functions.list() == []
    assert not (project.home / "studies.journal").exists()  # no study was created either


def test_a_run_task_never_shows_a_secret_value(fn):
    t = task(fn("uses_secret"), secrets=SecretValues({"API_TOKEN": SECRET}))
    assert SECRET not in repr(t) and SECRET not in str(t.secrets) and "API_TOKEN" in repr(t.secrets)
    assert pickle.loads(pickle.dumps(t)).secrets == {"API_TOKEN": SECRET}  # it travels with the task


# -- the secrets file -------------------------------------------------------------------------------
def test_the_secrets_file_is_owner_only_and_written_atomically(tmp_path):
    store = SecretsFile(tmp_path / "home" / "secrets.json")
    store.set("api", "token", SECRET)
    store.set("api", "user", "me")
    store.set("db", "password", "pw")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["secrets.json", "secrets.json.lock"]
    assert store.listing() == {"api": ["token", "user"], "db": ["password"]}
    assert store.get("api", "token") == SECRET
    assert store.delete("api", "user") and not store.delete("api", "user")
    assert store.delete("db") and store.listing() == {"api": ["token"]}
    os.chmod(store.path, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        store.read()
    with pytest.raises(SecretError, match="invalid secret name"):
        store.set("no spaces", "k", "v")


def _cli(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    environ["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args], cwd=cwd, env=environ, input=stdin or "",
        capture_output=True, text=True, timeout=120,
    )


def test_secrets_command_line(tmp_path):
    (tmp_path / "value.txt").write_text("from a file")
    assert _cli(tmp_path, "secrets", "set", "api", "token", SECRET).returncode == 0
    assert _cli(tmp_path, "secrets", "set", "api", "user", "--from-file", "value.txt").returncode == 0
    assert _cli(tmp_path, "secrets", "set", "db", "password", stdin="piped\n").returncode == 0
    listed = _cli(tmp_path, "secrets", "list")
    assert listed.returncode == 0 and listed.stdout == "api: token, user\ndb: password\n"
    assert json.loads(_cli(tmp_path, "secrets", "list", "--json").stdout) == {"api": ["token", "user"], "db": ["password"]}
    store = SecretsFile(tmp_path / ".shoal" / "secrets.json")
    assert store.get("api", "user") == "from a file" and store.get("db", "password") == "piped"
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    deleted = _cli(tmp_path, "secrets", "delete", "api", "user")
    assert deleted.returncode == 0 and store.listing() == {"api": ["token"], "db": ["password"]}
    assert _cli(tmp_path, "secrets", "delete", "db").returncode == 0 and store.listing() == {"api": ["token"]}
    missing = _cli(tmp_path, "secrets", "delete", "api", "nope")
    assert missing.returncode == 1 and "no key 'nope'" in missing.stderr
    assert _cli(tmp_path, "secrets", "set", "bad name", "k", "v").returncode == 2
    for proc in (listed, deleted, missing):
        assert SECRET not in proc.stdout + proc.stderr

    (tmp_path / "job.py").write_text(HANDLERS)
    (tmp_path / "shoal.yaml").write_text(
        "functions:\n  job:\n    file: job.py\n    handler: uses_secret\n    env:\n"
        "      API_TOKEN: {secret: absent, key: k}\n"
    )
    refused = _cli(tmp_path, "run", "job", "--backend", "local")
    assert refused.returncode == 2
    assert "secret 'absent' key 'k' is not set" in refused.stderr and "shoal secrets set absent k" in refused.stderr
    assert json.loads(_cli(tmp_path, "runs", "list", "--json").stdout) == []
    (tmp_path / "shoal.yaml").write_text((tmp_path / "shoal.yaml").read_text().replace("absent, key: k", "api, key: token"))
    ran = _cli(tmp_path, "run", "job", "--backend", "local")
    assert ran.returncode == 0, ran.stderr
    assert SECRET not in ran.stdout + ran.stderr and "the token is ****" in ran.stdout
