"""Study storages for real: the default journal file, SQLite by URL, PostgreSQL and Redis servers on
this machine; a local-file storage refused with a remote backend; and a driver killed with SIGKILL
mid-search, then resumed by running the same script again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime

import optuna
import pytest

import shoal
from conftest import _PG_REASON, PG_ADMIN_URL, REDIS_URL, redis_available, requires_postgres
from shoal.errors import TuningError
from shoal.testing import wait_for
from shoal.tuning import Float, load_study
from shoal.tuning.storage import default_ref, resolve


HANDLERS = '''
import os
import time


def quad(x: float, pause: float = 0.0, hold: str = ""):
    if hold:  # a folder: the first three calls go on; later ones wait there for a "release" file
        calls = 0
        while True:
            try:
                os.close(os.open(os.path.join(hold, f"call-{calls}"), os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                calls += 1
        if calls >= 3:
            open(os.path.join(hold, f"held-{calls}"), "w").close()
            end = time.monotonic() + 120
            while not os.path.exists(os.path.join(hold, "release")) and time.monotonic() < end:
                time.sleep(0.05)
    time.sleep(pause)
    return {"score": -(x - 0.3) ** 2}
'''


_REDIS_REASON = redis_available()


@pytest.fixture
def quad(project, tmp_path):
    path = tmp_path / "handlers.py"
    path.write_text(HANDLERS)
    return shoal.Function.from_file(path, "quad", replicas=(0, 2))


def test_default_storage_is_a_journal_file_in_the_project_home(project, quad):
    result = quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=3, project=project)
    ref = default_ref(project)
    assert ref.kind == "journal-file" and ref.target == str(project.home / "studies.journal")
    assert (project.home / "studies.journal").stat().st_size > 0
    assert type(result.study._storage).__name__ == "JournalStorage"


def _append(backend, index: int) -> None:
    backend.append_logs([{"index": index}])


def test_the_default_storage_pickles_and_goes_back_to_resolve_and_to_other_processes(project, quad):
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    from shoal.tuning.journal_lock import QueuedJournalLock

    storage = default_ref(project).open()
    optuna.create_study(study_name="pickled", storage=storage).set_user_attr("a", 1)
    restored = pickle.loads(pickle.dumps(storage))
    assert isinstance(restored._backend._lock, QueuedJournalLock)
    assert optuna.load_study(study_name="pickled", storage=restored).user_attrs == {"a": 1}
    # An object shoal opened is named by its file again (no pickled copy travels)
    assert resolve(storage, project) == default_ref(project)
    result = quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, storage=storage, project=project)
    assert len(result.trials) == 2
    # Appends from other processes all land (before the fix each failed to pickle, unseen by map)
    backend = storage._backend
    before = len(list(backend.read_logs(0)))
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_append, [backend] * 100, range(100), timeout=60))
    logged = [log["index"] for log in list(backend.read_logs(0))[before:]]
    assert sorted(logged) == list(range(100))


def test_a_storage_object_that_cannot_be_pickled_is_a_tuning_error(project):
    import threading

    class Unpicklable(optuna.storages.InMemoryStorage):
        def __init__(self):
            super().__init__()
            self.local = threading.local()

    with pytest.raises(TuningError, match="cannot be pickled for the workers.*give storage= a URL"):
        resolve(Unpicklable(), project)


JOURNAL_WRITER = """
import sys

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from shoal.tuning.journal_lock import QueuedJournalLock

path, name, queued = sys.argv[1], sys.argv[2], sys.argv[3] == "queued"
backend = JournalFileBackend(path, lock_obj=QueuedJournalLock(path)) if queued else JournalFileBackend(path)
storage = JournalStorage(backend)
study = storage.get_study_id_from_name("shared")
for i in range(100):
    storage.set_study_user_attr(study, f"{name}-{i}", i)
"""


def test_shoal_processes_and_plain_optuna_share_one_journal_file(tmp_path):
    path = str(tmp_path / "studies.journal")
    optuna.create_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path)))
    script = tmp_path / "writer.py"
    script.write_text(JOURNAL_WRITER)
    # Two shoal processes (queued on the flock) and one plain Optuna process (symlink lock only).
    writers = [
        subprocess.Popen([sys.executable, str(script), path, name, mode])
        for name, mode in (("a", "queued"), ("b", "queued"), ("c", "optuna"))
    ]
    try:
        assert [w.wait(120) for w in writers] == [0, 0, 0]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    attrs = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path))).user_attrs
    assert attrs == {f"{name}-{i}": i for name in "abc" for i in range(100)}


def test_the_queued_journal_lock_waits_for_a_plain_optuna_holder(tmp_path):
    import threading

    from optuna.storages.journal import JournalFileSymlinkLock

    from shoal.tuning.journal_lock import QueuedJournalLock

    path = str(tmp_path / "studies.journal")
    foreign = JournalFileSymlinkLock(path)
    assert foreign.acquire()  # e.g. optuna-dashboard writing to the same journal
    acquired = threading.Event()
    lock = QueuedJournalLock(path)
    waiter = threading.Thread(target=lambda: (lock.acquire(), acquired.set()), daemon=True)
    waiter.start()
    try:
        assert not acquired.wait(0.3)  # held elsewhere: it waits
    finally:
        foreign.release()
    assert acquired.wait(30)
    lock.release()
    assert foreign.acquire()  # released in turn
    foreign.release()


def test_sqlite_url_relative_to_the_project(project, quad):
    result = quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=3, storage="sqlite:///studies.db", project=project)
    assert (project.root / "studies.db").exists()
    study = load_study("quad", project=project, storage="sqlite:///studies.db")
    assert [t.number for t in study.trials] == [t["number"] for t in result.trials]


@requires_postgres
def test_postgresql_storage(project, quad):
    name = f"quad-{uuid.uuid4().hex[:10]}"
    try:
        result = quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=4, storage=PG_ADMIN_URL, study=name, project=project)
        assert len(result.trials) == 4 and {t["state"] for t in result.trials} == {"complete"}
        assert type(result.study._storage._backend).__name__ == "RDBStorage"
        study = optuna.load_study(study_name=name, storage=PG_ADMIN_URL)
        assert study.best_value == result.best_value
        assert result.best_run.results["score"] == result.best_value
    finally:
        optuna.delete_study(study_name=name, storage=PG_ADMIN_URL)


@requires_postgres
def test_a_postgresql_project_keeps_its_studies_in_its_database(pg_project, tmp_path):
    (tmp_path / "pgq.py").write_text(HANDLERS)
    fn = shoal.Function.from_file(tmp_path / "pgq.py", "quad", name=f"q{uuid.uuid4().hex[:8]}")
    assert default_ref(pg_project).kind == "rdb"
    try:
        result = fn.tune({"x": Float(0, 1)}, objective="max.score", n_trials=2, project=pg_project)
        assert load_study(fn.name, project=pg_project).best_value == result.best_value
        assert pg_project.runs.get(result.parent).results["best_run"] == result.best_run.uid
    finally:
        optuna.delete_study(study_name=fn.name, storage=PG_ADMIN_URL)


@pytest.mark.skipif(_REDIS_REASON is not None, reason=_REDIS_REASON or "")
@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql", "redis"])
def test_a_trial_sampled_ahead_on_the_sampling_thread_with_every_storage(project, quad, kind):
    """What a batch does on a worker: sample the next trial on the sampling thread, then run and
    tell it on the worker's own thread, through one storage object shared by both."""
    from helpers import task

    from shoal.execution import execute
    from shoal.tuning.objective import Objective
    from shoal.tuning.space import Space
    from shoal.tuning.strategies import NamedSampler
    from shoal.tuning.trial_scope import TrialScope

    if kind == "postgresql" and _PG_REASON:
        pytest.skip(_PG_REASON)
    if kind == "redis" and _REDIS_REASON:
        pytest.skip(_REDIS_REASON)
    url = {"journal": None, "sqlite": "sqlite:///studies.db", "postgresql": PG_ADMIN_URL, "redis": REDIS_URL}[kind]
    ref = resolve(url, project)
    name = f"ahead-{uuid.uuid4().hex[:10]}"
    study = optuna.create_study(study_name=name, storage=ref.open(), direction="maximize")
    try:
        space = Space({"x": Float(0, 1)})
        trial = study.ask()
        scope = TrialScope(storage=ref, study_name=name, trial_id=trial._trial_id, objective=Objective.parse("max.score"),
                           distributions=space.distributions(), sampler=NamedSampler("tpe", space, 1, False), tell=True)
        scope.prepare()
        outcome = execute(task(quad, {"pause": 0.0}, scope=scope, artifacts=project.artifacts_url))
        assert outcome.state == "completed", outcome.error
        frozen = ref.open().get_trial(trial._trial_id)
        assert frozen.state.name == "COMPLETE" and frozen.params == {"x": outcome.params["x"]}
        assert frozen.value == outcome.results["score"]
    finally:
        if kind in ("postgresql", "redis"):
            optuna.delete_study(study_name=name, storage=ref.open())


def test_redis_journal_storage(project, quad):
    import redis

    prefix = f"shoal-test-{uuid.uuid4().hex[:10]}"
    url = f"{REDIS_URL}?prefix={prefix}"
    try:
        result = quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=4, storage=url, project=project)
        assert len(result.trials) == 4 and type(result.study._storage).__name__ == "JournalStorage"
        again = load_study("quad", project=project, storage=url)
        assert [t.params for t in again.trials] == [t["params"] for t in result.trials]
        assert redis.Redis.from_url(REDIS_URL).exists(f"{prefix}:log_number")
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def test_unreachable_redis_is_a_clear_error(project, quad):
    with pytest.raises(TuningError, match="cannot open the study storage redis://127.0.0.1:1"):
        quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=1, storage="redis://127.0.0.1:1", project=project)
    assert project.runs.list(limit=None) == []


def test_a_local_file_storage_with_a_remote_backend_is_refused_before_any_trial(project, quad):
    import shoal.backends

    remote = shoal.backends.get("dask", address="tcp://127.0.0.1:9")  # never contacted
    assert remote.remote
    try:
        for storage in (None, "sqlite:///studies.db", "journal:///tmp/x.journal"):
            with pytest.raises(TuningError, match="file on this machine"):
                quad.tune({"x": Float(0, 1)}, objective="max.score", n_trials=1, backend=remote, storage=storage, project=project)
        assert project.runs.list(limit=None) == []
        assert resolve("journal:///mnt/shared/s.journal?shared=true", project).local_file is False
    finally:
        remote.close()


# -- driver killed mid-search -----------------------------------------------------------------------
SCRIPT = '''
import os, sys
import shoal
from shoal.tuning import Float

folder, storage, retries = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
project = shoal.project(folder, name="resume")
fn = shoal.Function.from_file(os.path.join(folder, "handlers.py"), "quad", replicas=(0, 2), retries=retries)
hold = os.path.join(folder, "hold")  # the test releases the held trials only after the kill
result = fn.tune({"x": Float(0, 1), "hold": hold}, objective="max.score", n_trials=10, seed=1, storage=storage,
                 project=project)
print("DONE", result.parent, flush=True)
'''


@pytest.mark.parametrize("storage, retries", [("", 0), ("sqlite:///studies.db", 1)], ids=["journal", "sqlite-retry"])
def test_driver_killed_with_sigkill_resumes_the_same_study(tmp_path, storage, retries):
    (tmp_path / "handlers.py").write_text(HANDLERS)
    (tmp_path / "tune.py").write_text(SCRIPT)
    command = [sys.executable, str(tmp_path / "tune.py"), str(tmp_path), storage, str(retries)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    project = shoal.Project(tmp_path, name="resume")
    ref = resolve(storage or None, project)
    hold = tmp_path / "hold"
    hold.mkdir()
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Three trials complete at once; the later ones wait in their handler for a release that
        # comes only after the kill, so the kill surely lands while some run.
        wait_for(
            lambda: proc.poll() is not None
            or (sum(t.state.name == "COMPLETE" for t in _trials(ref, "quad")) >= 3 and any(hold.glob("held-*"))),
            timeout=120,
            what="three trials done and one held",
        )
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    (hold / "release").touch()
    before = _trials(ref, "quad")
    completed = {t.number: t.params for t in before if t.state.name == "COMPLETE"}
    running = {t.number: t.params for t in before if t.state.name == "RUNNING"}
    before_by_number = {t.number: t for t in before}
    assert completed and running

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    parent = second.stdout.split("DONE ")[1].split()[0]

    after = {t.number: t for t in _trials(ref, "quad")}
    project = shoal.Project(tmp_path, name="resume")
    for number, params in completed.items():  # kept, not run again
        assert after[number].state.name == "COMPLETE" and after[number].params == params
    # the dead driver's trials: queued again if they never started (this search ran them), told from
    # their recorded run if it had finished, else failed with a note
    requeued = {n for n in running if _run_of(project, after[n]) and _run_of(project, after[n]).parent == parent}
    recovered = {n for n in running if after[n].state.name == "COMPLETE"} - requeued
    failed = set(running) - recovered - requeued
    for number in requeued:
        assert after[number].state.name == "COMPLETE" and _run_of(project, after[number]).state == "completed"
        assert _run_of(project, before_by_number[number]).state == "cancelled"  # its first record
    for number in set(running) - requeued:
        if "shoal" not in after[number].user_attrs:  # killed between asking the trial and labelling it
            assert after[number].state.name == "FAIL" and "died while it ran" in after[number].user_attrs["shoal_error"]
            continue
        try:
            run = project.runs.get(after[number].user_attrs["shoal"]["run"])
        except shoal.NotFoundError:  # killed between labelling the trial and recording its run
            assert after[number].state.name == "FAIL" and "died while it ran" in after[number].user_attrs["shoal_error"]
            continue
        if number in recovered:
            assert run.state == "completed" and run.results["score"] == after[number].value
        else:
            assert after[number].state.name == "FAIL" and run.state == "failed"
            assert "died while it ran" in after[number].user_attrs["shoal_error"]
    retried = {n for t in after.values() for n in t.system_attrs.get("retry_history", ())}
    if retries:
        assert retried == failed  # re-queued with the same params and run again
        reruns = [t for t in after.values() if t.system_attrs.get("failed_trial") in failed]
        assert {t.state.name for t in reruns} <= {"COMPLETE"} and len(reruns) == len(failed)
        for rerun in reruns:  # the same params (those the killed trial had got before it died)
            original = running[rerun.system_attrs["failed_trial"]]
            assert {k: rerun.params[k] for k in original} == original
    finished = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 10  # the total reaches n_trials (failed trials use up no budget)

    children = project.runs.list(parent=parent, limit=None)
    assert len(children) == 10 - len(completed) - len(recovered)
    assert {r.iteration for r in children}.isdisjoint(set(completed) | set(running) - requeued)
    dead = [r for r in project.runs.list(limit=None) if r.parent is None and r.uid != parent]
    assert len(dead) == 1 and dead[0].state == "failed" and "driver died" in dead[0].error["message"]
    project.close()


def test_a_resume_mends_what_a_dead_driver_left_open(project, quad):
    """A dead driver's records: a trial told on its worker, one queued that never started and one
    that was running; set up as a SIGKILL leaves them (the kill itself is tested above)."""
    from helpers import dead_search_driver

    from shoal.tuning.driver import ATTR_DRIVER

    space = {"x": Float(0, 1)}
    quad.tune(space, objective="max.score", n_trials=1, backend="local", project=project)
    study = load_study("quad", project=project)
    owner, driver, parent = dead_search_driver(study, quad, project)
    records, trials = [parent], {}
    for name, state in (("told", "running"), ("queued", "pending"), ("cut", "running")):
        trial = study.ask()
        record = {**driver.new_record({}, {}, parent=parent["uid"], iteration=trial.number), "state": state}
        if state == "running":
            record["started_at"] = datetime.now().astimezone()
        study._storage.set_trial_user_attr(trial._trial_id, "shoal", {"run": record["uid"], "parent": parent["uid"], "driver": owner})
        records.append(record)
        trials[name] = (trial, record["uid"])
    told, told_uid = trials["told"]
    told.suggest_float("x", 0, 1)
    study.tell(told, -0.25)  # its worker told it; the driver died before recording the run
    project.store.create_runs(records)

    result = quad.tune(space, objective="max.score", n_trials=5, backend="local", project=project)
    after = {t.number: t for t in result.study.get_trials(deepcopy=False)}
    run = project.runs.get(told_uid)
    assert run.state == "completed" and run.results == {"score": -0.25} and run.params["x"] == told.params["x"]
    assert "restored from the study" in run.logs
    queued, queued_uid = trials["queued"]  # never started: queued again and run, not failed
    assert project.runs.get(queued_uid).state == "cancelled" and after[queued.number].state.name == "COMPLETE"
    cut, cut_uid = trials["cut"]
    assert project.runs.get(cut_uid).state == "failed" and after[cut.number].state.name == "FAIL"
    assert project.runs.get(parent["uid"]).error["type"] == "DriverLost"
    assert sum(t.state.name == "COMPLETE" for t in after.values()) == 5  # the failed one used up no budget
    assert not load_study("quad", project=project).user_attrs[f"{ATTR_DRIVER}{owner['host']}:{owner['pid']}"]["active"]


def _run_of(project, trial):
    """The run a trial is linked to now, or None (not linked, or never recorded)."""
    uid = (trial.user_attrs.get("shoal") or {}).get("run")
    try:
        return project.runs.get(uid) if uid else None
    except shoal.NotFoundError:
        return None


def _trials(ref, name: str) -> list:
    try:
        storage = ref._build(heartbeat=False)  # a fresh view: the cached one may lag a killed writer
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except (KeyError, TuningError, Exception):  # noqa: BLE001 - not created yet
        return []


