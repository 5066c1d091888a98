"""shoal.store against real SQLite files and a real PostgreSQL server (no mocks).

PostgreSQL tests each get a throwaway database (``CREATE DATABASE shoal_test_<random>``), dropped
afterwards; they are skipped, with the reason, only when the server cannot be reached.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import threading
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from shoal.errors import AmbiguousError, NotFoundError, SpecError, StoreError
from shoal.store import ArtifactRecord, FunctionRecord, RunRecord, Store, open_engine
from shoal.store import migrate
from shoal.store.schema import metadata, runs

PG_ADMIN_URL = os.environ.get("SHOAL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_uid() -> str:
    return uuid.uuid4().hex


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on the server's ``test`` database, or a skip saying why not."""
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as error:  # noqa: BLE001 - any failure means "no server"
        engine.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(error).splitlines()[0]}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_databases(pg_admin):
    """A factory of fresh PostgreSQL databases (URLs), all dropped at teardown."""
    created: list[str] = []

    def create() -> str:
        name = f"shoal_test_{uuid.uuid4().hex[:12]}"
        with pg_admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield create
    with pg_admin.connect() as connection:
        for name in created:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_databases(tmp_path):
    counter = iter(range(1000))
    return lambda: f"sqlite:///{tmp_path}/db{next(counter)}/shoal.db"


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def new_db(request):
    """A factory of fresh, empty databases of the parametrised kind."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_databases")
    return request.getfixturevalue("pg_databases")


@pytest.fixture
def url(new_db) -> str:
    return new_db()


@pytest.fixture
def store(url):
    with Store(url, project=f"proj_{uuid.uuid4().hex[:8]}") as opened:
        yield opened


# -- functions -----------------------------------------------------------------------------------


def test_save_and_get_by_name_tag_hash_and_prefix(store):
    v1, v2 = h("v1"), h("v2")
    saved = store.save_function("train", v1, {"name": "train", "code": "a"}, description="first", labels={"team": "x"}, tag="prod")
    assert isinstance(saved, FunctionRecord)
    assert (saved.name, saved.hash, saved.tags) == ("train", v1, ("latest", "prod"))
    assert saved.spec == {"name": "train", "code": "a"} and saved.labels == {"team": "x"}
    assert saved.created_at.tzinfo is not None and saved.created_at.utcoffset() == timedelta(0)
    store.save_function("train", v2, {"name": "train", "code": "b"})

    assert store.get_function("train").hash == v2
    assert store.get_function("train:latest").hash == v2
    assert store.get_function("train:prod").hash == v1
    assert store.get_function(f"train@{v1}").hash == v1
    assert store.get_function(f"train@{v1[:4]}").hash == v1
    assert store.get_function(f"train@{v2[:12].upper()}").hash == v2
    assert store.get_function("train:prod").description == "first"
    assert store.get_function("train:prod").tags == ("prod",)


def test_latest_moves_and_save_is_idempotent(store):
    v1, v2 = h("a"), h("b")
    first = store.save_function("f", v1, {"v": 1})
    store.save_function("f", v2, {"v": 2}, tag="stable")
    assert store.get_function("f").hash == v2
    again = store.save_function("f", v1, {"v": 1}, description="now described")  # same version again
    assert store.get_function("f").hash == v1  # latest moved back
    assert store.get_function("f:stable").hash == v2  # other tags stay
    history = store.function_history("f")
    assert [r.hash for r in history] == [v2, v1]  # no duplicate; newest version first
    assert again.created_at == first.created_at  # the version keeps its first save time
    assert again.description == "now described"
    assert {r.hash: r.tags for r in history} == {v1: ("latest",), v2: ("stable",)}


def test_history_newest_first_and_list_functions(store):
    hashes = [h(f"g{i}") for i in range(4)]
    for i, value in enumerate(hashes):
        store.save_function("g", value, {"i": i})
    store.save_function("a", h("a0"), {})
    history = store.function_history("g")
    assert [r.hash for r in history] == hashes[::-1]
    assert [r.created_at for r in history] == sorted((r.created_at for r in history), reverse=True)
    listed = store.list_functions()
    assert [(r.name, r.hash) for r in listed] == [("a", h("a0")), ("g", hashes[-1])]
    assert all("latest" in r.tags for r in listed)


def test_ambiguous_hash_prefix_lists_matches(store):
    # Find two hashes sharing their first 4 hex digits (the minimum prefix).
    seen: dict[str, str] = {}
    i = 0
    while True:
        value = h(f"collide{i}")
        if value[:4] in seen:
            first, second = seen[value[:4]], value
            break
        seen[value[:4]] = value
        i += 1
    store.save_function("amb", first, {})
    store.save_function("amb", second, {})
    with pytest.raises(AmbiguousError) as caught:
        store.get_function(f"amb@{first[:4]}")
    assert first[:12] in str(caught.value) and second[:12] in str(caught.value)
    assert store.get_function(f"amb@{first[:20]}").hash == first


def test_function_not_found_errors_say_what_exists(store):
    store.save_function("model", h("m"), {}, tag="prod")
    with pytest.raises(NotFoundError, match=r"no function named 'modle'.*did you mean 'model'.*shoal functions list"):
        store.get_function("modle")
    with pytest.raises(NotFoundError, match=r"has no tag 'dev'; its tags: latest, prod"):
        store.get_function("model:dev")
    with pytest.raises(NotFoundError, match=r"no version whose hash starts with 'ffff0000'"):
        store.get_function("model@ffff0000")
    with pytest.raises(NotFoundError, match="no function named 'ghost'"):
        store.function_history("ghost")
    assert store.list_functions()[0].name == "model"


def test_invalid_tags_refs_and_hashes(store):
    with pytest.raises(SpecError, match="invalid tag"):
        store.save_function("f", h("x"), {}, tag="bad tag!")
    with pytest.raises(SpecError, match="at least 4"):
        store.get_function("f@abc")
    with pytest.raises(SpecError, match="invalid function hash"):
        store.save_function("f", "nothex", {})
    with pytest.raises(SpecError, match="invalid function name"):
        store.save_function("a:b", h("x"), {})
    assert isinstance(SpecError("x"), ValueError)
    assert store.list_functions() == []  # nothing half-saved


def test_projects_are_isolated(url):
    with Store(url, project="one") as one, Store(url, project="two") as two:
        one.save_function("f", h("1"), {})
        one.create_runs([{"uid": "run1", "function": "f", "function_hash": h("1")}])
        assert two.list_functions() == [] and two.list_runs() == []
        with pytest.raises(NotFoundError):
            two.get_function("f")
        with pytest.raises(NotFoundError):
            two.get_run("run1")
        with pytest.raises(NotFoundError):
            two.update_run("run1", state="running")
        assert one.get_run("run1").state == "pending"


# -- runs ----------------------------------------------------------------------------------------


def test_create_update_finish_and_get_run(store):
    uid = new_uid()
    store.create_runs([{"uid": uid, "function": "train", "function_hash": h("t"), "params": {"lr": 0.1}, "backend": "local"}])
    run = store.get_run(uid)
    assert isinstance(run, RunRecord)
    assert (run.state, run.params, run.results, run.metrics, run.labels) == ("pending", {"lr": 0.1}, {}, {}, {})
    assert (run.logs, run.attempts, run.error, run.started_at, run.ended_at, run.artifacts) == ("", 0, None, None, None, ())
    assert run.created_at.tzinfo is not None

    started = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    store.update_run(uid, state="running", started_at=started, attempts=1)
    running = store.get_run(uid)
    assert running.state == "running" and running.attempts == 1
    assert running.started_at == started and running.started_at.tzinfo == timezone.utc
    assert running.updated_at >= run.updated_at

    store.finish_run(
        uid,
        {"state": "completed", "results": {"acc": 0.9}, "metrics": {"loss": [1.0, float("nan")]}, "logs": "hi\n",
         "ended_at": datetime.now(timezone.utc), "labels": {"k": "v"}},
        [{"key": "model", "url": "file:///a/model.pkl", "kind": "pickle", "format": "pkl", "size": 10, "sha256": h("m"), "meta": {"n": 1}}],
    )
    done = store.get_run(uid[:8])
    assert done.state == "completed" and done.results == {"acc": 0.9} and done.logs == "hi\n"
    assert done.metrics == {"loss": [1.0, "NaN"]}  # non-finite floats are stored as strings on every database
    assert done.labels == {"k": "v"}
    assert done.artifacts == (
        ArtifactRecord(uid, "model", "file:///a/model.pkl", "pickle", "pkl", 10, h("m"), {"n": 1}, done.artifacts[0].created_at),
    )


def test_artifact_upsert_on_retry(store):
    uid = new_uid()
    store.create_runs([{"uid": uid, "function": "f", "function_hash": h("f")}])
    store.finish_run(uid, {"state": "failed", "attempts": 1, "error": {"type": "ValueError"}},
                     [{"key": "out", "url": "file:///try1", "kind": "bytes", "size": 1}, {"key": "log", "url": "file:///log1", "kind": "text"}])
    store.finish_run(uid, {"state": "completed", "attempts": 2, "error": None},
                     [{"key": "out", "url": "file:///try2", "kind": "bytes", "size": 2}])
    run = store.get_run(uid)
    assert run.state == "completed" and run.attempts == 2 and run.error is None
    assert {a.key: (a.url, a.size) for a in run.artifacts} == {"out": ("file:///try2", 2), "log": ("file:///log1", None)}


def test_finish_runs_batch_is_one_transaction(store):
    uids = [new_uid() for _ in range(5)]
    store.create_runs([{"uid": u, "function": "f", "function_hash": h("f")} for u in uids])
    store.finish_runs([(u, {"state": "completed", "results": {"i": i}}, [{"key": "k", "url": f"file:///{i}", "kind": "b"}]) for i, u in enumerate(uids)])
    assert store.count_runs(state="completed") == 5
    assert sorted(r.results["i"] for r in store.list_runs()) == list(range(5))
    # One unknown uid fails the whole batch, and nothing of it is applied.
    with pytest.raises(NotFoundError, match="nosuchrun"):
        store.finish_runs([(uids[0], {"state": "cancelled"}, []), ("nosuchrun", {"state": "cancelled"}, [])])
    assert store.get_run(uids[0]).state == "completed"


def test_list_runs_filters_order_and_limit(store):
    base = datetime(2030, 1, 1, tzinfo=timezone.utc)
    parent = new_uid()
    rows = [{"uid": parent, "function": "tune", "function_hash": h("t"), "created_at": base}]
    children = []
    for i in range(6):
        uid = f"{i:02d}" + new_uid()[:30]
        children.append(uid)
        rows.append({"uid": uid, "function": "train", "function_hash": h("x"), "parent": parent, "iteration": i,
                     "state": ["completed", "failed", "running"][i % 3], "created_at": base + timedelta(seconds=i + 1)})
    same_time = [new_uid() for _ in range(3)]  # equal timestamps: ordered by uid, descending
    rows += [{"uid": u, "function": "other", "function_hash": h("o"), "created_at": base + timedelta(seconds=100)} for u in same_time]
    store.create_runs(rows)

    assert [r.uid for r in store.list_runs()][:3] == sorted(same_time, reverse=True)
    assert [r.uid for r in store.list_runs(function="train")] == children[::-1]
    assert [r.iteration for r in store.list_runs(parent=parent)] == [5, 4, 3, 2, 1, 0]
    assert [r.uid for r in store.list_runs(state="failed")] == [children[4], children[1]]
    assert {r.uid for r in store.list_runs(state=["failed", "running"], function="train")} == {children[i] for i in (1, 2, 4, 5)}
    assert [r.uid for r in store.list_runs(function="train", limit=2)] == [children[5], children[4]]
    assert store.list_runs(limit=0) == []
    assert store.count_runs() == 10 and store.count_runs(function="train", state="completed") == 2
    assert store.list_runs(function="nothing") == []


def test_get_run_prefix_ambiguous_and_missing(store):
    store.create_runs([{"uid": "abcd0001", "function": "f", "function_hash": h("f")},
                       {"uid": "abcd0002", "function": "f", "function_hash": h("f")},
                       {"uid": "abc_9999", "function": "f", "function_hash": h("f")}])
    assert store.get_run("abcd0001").uid == "abcd0001"
    with pytest.raises(AmbiguousError, match="abcd0001, abcd0002"):
        store.get_run("abcd")
    assert store.get_run("abc_").uid == "abc_9999"  # '_' is literal, not a LIKE wildcard
    with pytest.raises(NotFoundError, match="shoal runs list"):
        store.get_run("zzzz")
    with pytest.raises(SpecError, match="at least 4"):
        store.get_run("ab")


def test_create_runs_rejects_bad_input(store):
    with pytest.raises(StoreError, match="unknown run field"):
        store.create_runs([{"uid": "u1", "function": "f", "function_hash": h("f"), "colour": "red"}])
    with pytest.raises(StoreError, match="function_hash"):
        store.create_runs([{"uid": "u1", "function": "f"}])
    store.create_runs([{"uid": "u1", "function": "f", "function_hash": h("f")}])
    with pytest.raises(StoreError, match="conflicts"):  # duplicate uid; the batch is rolled back
        store.create_runs([{"uid": "u2", "function": "f", "function_hash": h("f")},
                           {"uid": "u1", "function": "f", "function_hash": h("f")}])
    assert [r.uid for r in store.list_runs()] == ["u1"]
    with pytest.raises(StoreError, match="unknown run field"):
        store.update_run("u1", colour="red")
    with pytest.raises(NotFoundError):
        store.update_run("nope", state="running")


def errors_in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads of their own; what they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as error:  # noqa: BLE001 - returned to the test
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_store_is_thread_safe(store):
    def work(t: int) -> None:
        for i in range(15):
            uid = f"t{t}-{i}"
            store.create_runs([{"uid": uid, "function": "f", "function_hash": h("f")}])
            store.finish_run(uid, {"state": "completed"}, [{"key": "k", "url": f"file:///{uid}", "kind": "b"}])
            store.save_function("f", h(f"{t}-{i % 3}"), {})
            store.list_runs(limit=3)

    assert errors_in_threads(work, 6) == []
    assert store.count_runs(state="completed") == 90
    assert len(store.function_history("f")) == 18


def test_in_memory_sqlite_is_shared_between_threads():
    with Store("sqlite://", project="mem") as store:
        thread = threading.Thread(target=store.create_runs, args=([{"uid": "m1", "function": "f", "function_hash": h("f")}],))
        thread.start()
        thread.join()
        assert store.get_run("m1").function == "f"


def test_closed_store_refuses_work(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.list_runs()


# -- opening: engine settings and bad URLs -------------------------------------------------------


def test_sqlite_engine_settings(tmp_path):
    url = f"sqlite:///{tmp_path}/new/nested/shoal.db"
    engine = open_engine(url)
    try:
        assert (tmp_path / "new" / "nested").is_dir()
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 30000
            assert pragma("synchronous") == 1  # NORMAL
            assert pragma("foreign_keys") == 1
        with engine.begin() as connection:  # write transactions hold the RESERVED lock from BEGIN
            other = engine.raw_connection()
            try:
                other.driver_connection.execute("PRAGMA busy_timeout = 0")
                with pytest.raises(Exception, match="locked"):
                    other.driver_connection.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
            assert connection.in_transaction()
    finally:
        engine.dispose()


def test_concurrent_first_opens_switch_to_wal_without_errors(tmp_path):
    """Switching a fresh file to WAL from several connections at once sometimes fails at once with
    "database is locked" (SQLite skips the busy handler there): measured ~1% of raw switches and
    ~0.3% of open_engine calls without the retry, so 1600 opens catch a regression."""
    errors: list[str] = []
    modes: set[str] = set()

    def first_open(url: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            engine = open_engine(url)
            with engine.connect() as connection:
                modes.add(connection.exec_driver_sql("PRAGMA journal_mode").scalar())
            engine.dispose()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(str(error))

    for round_ in range(200):
        url, barrier = f"sqlite:///{tmp_path}/r{round_}.db", threading.Barrier(8)
        threads = [threading.Thread(target=first_open, args=(url, barrier)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert modes == {"wal"}


def test_sqlite_reads_do_not_wait_for_writers(tmp_path):
    with Store(f"sqlite:///{tmp_path}/s.db") as store:
        store.create_runs([{"uid": "r1", "function": "f", "function_hash": h("f")}])
        outcome: list[object] = []
        reader = threading.Thread(target=lambda: outcome.append(store.get_run("r1").uid))
        with store.engine.begin() as writer:  # holds the write lock until the reader is done
            writer.exec_driver_sql("UPDATE runs SET state = 'running'")
            reader.start()
            reader.join()  # a reader that took the write lock would fail here with "locked" after 30 s
        assert outcome == ["r1"]
        assert store.get_run("r1").state == "running"


@pytest.mark.timeout(30)
def test_bad_urls_raise_store_error_and_create_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = {
        f"sqlite:///{blocker}/sub/shoal.db": str(blocker),  # parent is a file
        "sqlite:////proc/shoal-no-such-dir/shoal.db": "/proc/shoal-no-such-dir",  # not creatable, even as root
        f"sqlite:///{folder}": str(folder),  # the path is a folder
        "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test": "127.0.0.1:1",  # nothing listens on port 1
        "nosuchdb://x": "nosuchdb",
        "postgresql+nosuchdriver://u@h/db": "nosuchdriver",
    }
    for bad, named in cases.items():
        with pytest.raises(StoreError) as caught:
            Store(bad)
        message = str(caught.value)
        assert "\n" not in message and named in message, message
        assert "s3cret" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]
    assert blocker.read_text() == "not a folder" and list(folder.iterdir()) == []
    assert not Path("/proc/shoal-no-such-dir").exists()


# -- migrations ----------------------------------------------------------------------------------


def schema_of(url: str, skip: tuple[str, ...] = ()) -> dict:
    """Tables -> ordered columns (type, nullability, default), indexes and primary key."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        out = {}
        for table in sorted(set(inspector.get_table_names()) - set(skip)):
            columns = [
                (c["name"], c["type"].compile(dialect=engine.dialect), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ]
            indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table))
            uniques = sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table))
            pk = inspector.get_pk_constraint(table)
            out[table] = {
                "columns": columns,
                "indexes": indexes,
                "uniques": uniques,
                "pk": (pk["name"], tuple(pk["constrained_columns"])),
            }
        return out
    finally:
        engine.dispose()


def test_head_constant_matches_migration_scripts():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_heads() == [migrate.HEAD]
    assert [s.revision for s in scripts.walk_revisions()] == [
        "0008_cache_key_index", "0007_services", "0006_step_cache", "0005_pruned_state", "0004_run_drivers", "0003_scaling_events", "0002_artifacts", "0001_initial"
    ]


def test_migrations_fresh_upgraded_and_model_are_identical(new_db):
    fresh, stepped, modelled = new_db(), new_db(), new_db()
    Store(fresh).close()

    engine = open_engine(stepped)
    try:
        migrate.upgrade(engine, "0001_initial")
        at_0001 = schema_of(stepped)
        assert "artifacts" not in at_0001
        assert "scaling_events" not in at_0001
        assert "labels" not in [c[0] for c in at_0001["runs"]["columns"]]
        assert "ix_runs_project_state" not in [i[0] for i in at_0001["runs"]["indexes"]]
        now = datetime.now(timezone.utc)
        with engine.begin() as connection:  # a run written by the old schema
            connection.execute(
                sa.text(
                    "INSERT INTO runs (uid, project, function, function_hash, state, params, inputs, results, metrics,"
                    " logs, attempts, backend, created_at, updated_at) VALUES ('old1', 'default', 'f', :h, 'completed',"
                    " '{}', '{}', '{}', '{}', '', 0, 'local', :now, :now)"
                ),
                {"h": h("f"), "now": now},
            )
    finally:
        engine.dispose()
    with Store(stepped) as store:  # opening upgrades 0001 -> head
        assert store.get_run("old1").labels == {}

    engine = open_engine(modelled)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()

    head = schema_of(fresh)
    assert set(head) == {
        "functions", "function_tags", "runs", "artifacts", "scaling_events", "drivers", "cache_claims",
        "services", "service_metrics", "service_errors", migrate.VERSION_TABLE
    }
    assert "driver" in [c[0] for c in head["runs"]["columns"]]
    assert head["scaling_events"]["uniques"] == [
        ("uq_scaling_events_event", ("project", "backend", "time", "direction", "reason"))
    ]
    assert schema_of(stepped) == head
    assert schema_of(modelled) == schema_of(fresh, skip=(migrate.VERSION_TABLE,))

    engine = open_engine(stepped)  # and back down, and up again
    try:
        migrate.downgrade(engine, "0001_initial")
        assert schema_of(stepped) == at_0001
        migrate.upgrade(engine)
        assert schema_of(stepped) == head
        with engine.connect() as connection:
            assert connection.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalars().all() == [migrate.HEAD]
    finally:
        engine.dispose()


def _cache_index_sql(engine: sa.Engine) -> str:
    """The definition of the cache-key index as the database reports it."""
    if engine.dialect.name == "sqlite":
        query = "SELECT sql FROM sqlite_master WHERE name = 'ix_runs_project_cache_key'"
    else:
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_runs_project_cache_key'"
    with engine.connect() as connection:
        return str(connection.exec_driver_sql(query).scalar())


def test_cache_key_index_holds_only_keyed_runs_and_lookups_use_it(new_db):
    """0008: runs without a cache key (most) cost no entry in the index; a lookup by key still uses it."""
    url = new_db()
    Store(url).close()
    engine = open_engine(url)
    try:
        assert "cache_key IS NOT NULL" in _cache_index_sql(engine)
        keyed = sa.select(runs.c.uid).where(runs.c.project == "p", runs.c.cache_key.in_(["k1", "k2"]))
        explain = "EXPLAIN QUERY PLAN" if engine.dialect.name == "sqlite" else "EXPLAIN"
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":  # an empty table: only then is an index worth it
                connection.exec_driver_sql("SET enable_seqscan = off")
            compiled = keyed.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row) for row in connection.exec_driver_sql(f"{explain} {compiled}"))
        assert "ix_runs_project_cache_key" in plan
        migrate.downgrade(engine, "0007_services")
        assert "cache_key IS NOT NULL" not in _cache_index_sql(engine)
        migrate.upgrade(engine)
        assert "cache_key IS NOT NULL" in _cache_index_sql(engine)
    finally:
        engine.dispose()


@pytest.mark.timeout(60)  # without the migration lock, threads can deadlock on PostgreSQL
def test_concurrent_first_opens_migrate_once(url):
    """Threads hold separate connections, so they contend for the flock / advisory lock like processes."""
    barrier = threading.Barrier(6)

    def open_and_write(i: int) -> None:
        barrier.wait()
        with Store(url, project="concurrent") as store:
            store.create_runs([{"uid": f"c{i}", "function": "f", "function_hash": h("f")}])

    assert errors_in_threads(open_and_write, 6) == []
    with Store(url, project="concurrent") as store:
        assert store.count_runs() == 6
        with store.engine.connect() as connection:
            versions = connection.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalars().all()
    assert versions == [migrate.HEAD]


def test_opening_a_current_database_does_not_import_alembic(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    Store(url).close()
    code = (
        "import sys; import shoal.store as s; assert 'alembic' not in sys.modules, 'on import';"
        f" st = s.Store({url!r}); st.list_runs(); st.close(); print('alembic' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# -- many processes on one SQLite file -----------------------------------------------------------

PROCESSES, RUNS_EACH = 8, 50


def _writer(url: str, index: int, barrier, results) -> None:
    """One process: open the (fresh) store at the same moment as the others, then write a lot."""
    try:
        barrier.wait(timeout=120)
        with Store(url, project="race") as store:
            store.save_function("shared", h("common"), {"same": True})  # every process saves this version
            store.save_function("shared", h(f"mine{index}"), {"index": index}, tag=f"p{index}")
            for i in range(RUNS_EACH):
                uid = f"p{index}r{i:03d}"
                store.create_runs([{"uid": uid, "function": "shared", "function_hash": h(f"mine{index}"), "iteration": i}])
                store.update_run(uid, state="running", started_at=datetime.now(timezone.utc))
                store.finish_run(
                    uid,
                    {"state": "completed", "results": {"i": i}, "ended_at": datetime.now(timezone.utc)},
                    [{"key": "out", "url": f"file:///{uid}", "kind": "bytes", "size": i}],
                )
        results.put((index, None))
    except BaseException:  # noqa: BLE001 - sent to the parent
        results.put((index, traceback.format_exc()))


@pytest.mark.timeout(180)
def test_many_processes_write_one_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/race/shoal.db"  # fresh: the processes race to create and migrate it
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [context.Process(target=_writer, args=(url, i, barrier, results)) for i in range(PROCESSES)]
    try:
        for process in processes:
            process.start()
        outcomes = {}
        for _ in range(PROCESSES):
            index, error = results.get(timeout=150)
            outcomes[index] = error
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert outcomes == {i: None for i in range(PROCESSES)}
    assert [p.exitcode for p in processes] == [0] * PROCESSES

    with Store(url, project="race") as store:
        runs = store.list_runs()
        assert len(runs) == PROCESSES * RUNS_EACH
        assert {r.state for r in runs} == {"completed"}
        assert all(r.started_at and r.ended_at and len(r.artifacts) == 1 for r in runs)
        assert store.count_runs(function="shared", state="completed") == PROCESSES * RUNS_EACH
        history = store.function_history("shared")
        assert len(history) == PROCESSES + 1
        assert store.get_function("shared").hash in {r.hash for r in history}
        assert all(store.get_function(f"shared:p{i}").hash == h(f"mine{i}") for i in range(PROCESSES))
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalars().all() == [migrate.HEAD]
    finally:
        engine.dispose()



# -- drivers: who drives a run, and ending the runs of drivers that died --------------------------


def _dead_driver(store: Store) -> str:
    """Register a driver on this machine whose process has exited (a real PID, reaped)."""
    from shoal.store import drivers

    from helpers import reaped_pid

    me = drivers.current()
    ghost = drivers.Identity(uuid.uuid4().hex, me.host, me.machine, reaped_pid(), None)
    with store.engine.begin() as connection:
        drivers.register(connection, store.project, ghost)
    return ghost.id


def test_runs_are_stamped_with_their_driver_and_lost_drivers_runs_end(store):
    from shoal.store import drivers

    me = drivers.current()
    ghost = _dead_driver(store)
    store.create_runs([
        {"uid": "mine", "function": "f", "function_hash": h("f"), "state": "running"},
        {"uid": "nobody", "function": "f", "function_hash": h("f"), "driver": None},
        {"uid": "ghost1", "function": "f", "function_hash": h("f"), "driver": ghost},
        {"uid": "ghost2", "function": "f", "function_hash": h("f"), "driver": ghost, "state": "running"},
        {"uid": "ghost3", "function": "f", "function_hash": h("f"), "driver": ghost, "state": "completed"},
    ])
    assert store.get_run("mine").driver == me.id and store.get_run("nobody").driver is None
    assert set(store.live_drivers([me.id, ghost])) == {me.id}

    assert sorted(store.end_lost_runs()) == [("ghost1", "pending"), ("ghost2", "running")]
    for uid, when in (("ghost1", "before the run started"), ("ghost2", "while the run was running")):
        run = store.get_run(uid)
        assert run.state == "failed" and run.error["type"] == "DriverLost" and when in run.error["message"]
        assert drivers.is_swept(run) and run.ended_at is not None
    assert store.get_run("ghost3").state == "completed"
    assert {store.get_run(u).state for u in ("mine", "nobody")} == {"running", "pending"}
    assert store.end_lost_runs() == []  # done once

    store.claim_runs(["nobody"])
    assert store.get_run("nobody").driver == me.id
    with pytest.raises(NotFoundError):
        store.claim_runs(["nosuch"])


def test_a_start_never_reopens_an_ended_run_and_cancel_is_conditional(store):
    store.create_runs([{"uid": u, "function": "f", "function_hash": h("f")} for u in ("a", "b", "c")])
    store.finish_run("c", {"state": "completed"})
    assert sorted(store.cancel_runs(["a", "b", "c"], "requested by a test")) == ["a", "b"]
    assert store.get_run("a").error["message"] == "cancelled before it started: requested by a test"
    store.finish_runs([("a", {"state": "running"}, ()), ("b", {"state": "pending"}, ())])
    assert {store.get_run(u).state for u in ("a", "b")} == {"cancelled"}
    store.finish_run("a", {"state": "completed"})  # an outcome still lands: the run did end so
    assert store.get_run("a").state == "completed"


def test_delete_runs_keeps_open_runs_of_live_drivers_and_returns_artifacts(store):
    from shoal.store import drivers

    me = drivers.current().id
    store.create_runs([
        {"uid": "done", "function": "f", "function_hash": h("f"), "state": "completed"},
        {"uid": "child", "function": "f", "function_hash": h("f"), "parent": "done", "state": "failed"},
        {"uid": "open", "function": "f", "function_hash": h("f"), "state": "running"},
    ])
    store.finish_run("done", {}, [{"key": "m", "url": "file:///x/m.bin", "kind": "bytes"}])
    assert store.descendants(["done"]) == ["child"]
    deleted, artifacts = store.delete_runs(["done", "child", "open"], keep_open_of=[me])
    assert sorted(deleted) == ["child", "done"] and [a.key for a in artifacts] == ["m"]
    assert [r.uid for r in store.list_runs()] == ["open"]
    assert store.get_runs(["open", "done"])[0].uid == "open"


def test_stale_driver_rows_without_open_runs_are_pruned(store):
    from datetime import timedelta

    from shoal.store import drivers
    from shoal.store.schema import drivers as table

    ghost = _dead_driver(store)
    old = datetime.now(timezone.utc) - timedelta(seconds=drivers.PRUNE_AFTER + 60)
    with store.engine.begin() as connection:
        connection.execute(table.update().where(table.c.id == ghost).values(heartbeat_at=old))
    store.create_runs([{"uid": "r", "function": "f", "function_hash": h("f"), "state": "running"}])
    store.end_lost_runs(prune=True)
    found, _ = store.drivers([ghost, drivers.current().id])
    assert set(found) == {drivers.current().id}
