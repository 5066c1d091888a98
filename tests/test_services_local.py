"""Services on the local backend: a real uvicorn server process answering real HTTP requests.

Each test deploys on a free port, calls the service over loopback, and deletes it; every server
process is checked gone (by PID) at the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from handler_sources import SERVICE_HANDLERS
from helpers import alive, free_port, functions_from, kill_by_pid, refused

import shoal
from shoal.errors import NotFoundError, SecretError, ServiceError, ServiceSpecError
from shoal.services import delete_service, get_service, service_errors, service_metrics, service_status
from shoal.testing import wait_for

HANDLERS = SERVICE_HANDLERS + """

def with_context(ctx, word: str):
    return {"function": ctx.function, "uid": ctx.uid, "word": word}


def stuck(seconds: float = 3.0):
    threading.Event().wait(seconds)  # the handler's own work, longer than its timeout
    return "late"


class Model:
    def __init__(self, ctx):
        with open(os.environ["LOADS_FILE"], "a") as out:
            out.write(f"{os.getpid()}\\n")
        self.weight = 2.0

    def predict(self, x: float) -> dict:
        return {"y": x * self.weight, "pid": os.getpid()}


def secret_fails():
    raise RuntimeError("rejected token " + os.environ["API_TOKEN"])
"""


def post_raw(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def fn(tmp_path, monkeypatch):
    monkeypatch.setenv("LOADS_FILE", str(tmp_path / "loads.txt"))
    return functions_from(tmp_path / "handlers.py", HANDLERS)


@pytest.fixture
def served():
    """Services a test deployed: deleted (and their processes gone) when it ends."""
    services: list = []
    yield services
    for service in services:
        try:
            service.delete()
        except ServiceError:
            pass
    kill_by_pid([s.pid for s in services if s.pid])


def test_parameters_are_checked_and_answers_are_json(fn, project, served):
    port = free_port()
    svc = fn("predict").deploy(project=project, port=port)
    served.append(svc)
    assert svc.url == f"http://127.0.0.1:{port}/predict"
    assert svc.backend_name == "local"
    assert svc.invoke({"x": [1.0, 2.0]})["sum"] == 3.0
    assert svc.invoke({"x": ["1", 2], "scale": "3"})["sum"] == 9.0  # converted by the hints, as runs

    with pytest.raises(ServiceError) as bad_type:
        svc.invoke({"x": "abc"})
    assert bad_type.value.status == 422
    assert bad_type.value.body["field"] == "x" and bad_type.value.body["error"] == "ParamError"
    assert "expects list" in bad_type.value.body["message"]

    with pytest.raises(ServiceError) as unknown:
        svc.invoke({"x": [1.0], "y": 2})
    assert unknown.value.status == 422 and unknown.value.body["field"] == "y"

    with pytest.raises(ServiceError) as missing:
        svc.invoke({})
    assert missing.value.status == 422 and missing.value.body["field"] == "x"

    status, body = post_raw(svc.url, b"[1, 2]")
    assert status == 422 and "JSON object" in body["message"]
    status, body = post_raw(svc.url, b"{not json")
    assert status == 422 and "not JSON" in body["message"]


def test_handler_error_is_500_json_and_recorded(fn, project, served):
    svc = fn("fails").deploy(project=project, port=free_port())
    served.append(svc)
    assert svc.invoke({"x": 4}) == 0.25
    with pytest.raises(ServiceError) as failed:
        svc.invoke({"x": 0})
    assert failed.value.status == 500
    body = failed.value.body
    assert body["error"] == "ZeroDivisionError" and body["message"] == "division by zero" and body["request_id"]
    request_id = body["request_id"]
    svc.delete()  # the server writes its last interval as it stops
    metrics = service_metrics("fails", project)
    assert sum(m.requests for m in metrics) == 2 and sum(m.errors for m in metrics) == 1
    assert all(m.p50_ms is not None and m.p99_ms >= m.p50_ms for m in metrics)
    errors = service_errors("fails", project)
    assert [e.request_id for e in errors] == [request_id]
    assert errors[0].status == 500 and "return 1 / x" in errors[0].traceback


def test_context_parameter_gets_the_request(fn, project, served):
    svc = fn("with_context").deploy(project=project, port=free_port(), name="ctx-service")
    served.append(svc)
    answer = svc.invoke({"word": "hi"})
    assert answer["function"] == "with_context" and answer["word"] == "hi" and answer["uid"]
    assert svc.url.endswith("/ctx-service")


def test_request_past_the_timeout_is_408(fn, project, served):
    svc = fn("stuck", timeout=0.5).deploy(project=project, port=free_port())
    served.append(svc)
    with pytest.raises(ServiceError) as late:
        svc.invoke({"seconds": 3.0})
    assert late.value.status == 408 and late.value.body["error"] == "TimeoutError"


def test_class_handler_loads_once(fn, project, served, tmp_path):
    svc = fn("Model").deploy(project=project, port=free_port())
    served.append(svc)
    answers = [svc.invoke({"x": value}) for value in (1, 2, 3, 4)]
    assert [a["y"] for a in answers] == [2.0, 4.0, 6.0, 8.0]
    assert {a["pid"] for a in answers} == {svc.pid}
    assert (tmp_path / "loads.txt").read_text().split() == [str(svc.pid)]


def test_constructor_failure_fails_deploy(fn, project):
    port = free_port()
    with pytest.raises(ServiceError) as failed:
        fn("Broken").deploy(project=project, port=port)
    assert failed.value.state == "DEPLOY_FAILED"
    assert "model file missing" in str(failed.value)
    assert get_service("Broken", project).state == "failed"
    assert refused(port)  # nothing serves it


def test_same_hash_is_a_no_op_and_a_new_hash_replaces(fn, project, served):
    port = free_port()
    first = fn("predict").deploy(project=project, port=port)
    served.append(first)
    pid = first.invoke({"x": [1.0]})["pid"]
    again = fn("predict").deploy(project=project, port=port)
    assert again is first and again.invoke({"x": [1.0]})["pid"] == pid

    changed = fn("predict", defaults={"scale": 10.0})
    assert changed.hash != first.function_hash
    second = changed.deploy(project=project, port=port)
    served.append(second)
    assert not alive(pid)
    answer = second.invoke({"x": [1.0]})
    assert answer["sum"] == 10.0 and answer["pid"] != pid
    record = get_service("predict", project)
    assert record.function_hash == changed.hash and record.state == "running" and record.pid == second.pid


def test_delete_leaves_no_process_and_no_route(fn, project):
    port = free_port()
    svc = fn("predict").deploy(project=project, port=port)
    pid = svc.pid
    try:
        assert alive(pid)
        record = get_service("predict", project)
        assert (record.backend, record.state, record.url, record.min_replicas, record.max_replicas) == (
            "local",
            "running",
            svc.url,
            1,
            1,
        )
        assert service_status("predict", project).state == "RUNNING"
        svc.delete()
        assert not alive(pid)
        assert refused(port)
        assert get_service("predict", project).state == "deleted"
        with pytest.raises(ServiceError) as gone:
            svc.invoke({"x": [1.0]})
        assert gone.value.status is None
        delete_service("predict", project)  # deleting again does nothing
    finally:
        kill_by_pid([pid])


def test_delete_twice_is_a_no_op(fn, project, served):
    """Ctrl-C in ``shoal serve`` deletes the service in ``wait`` and again on the way out: the second
    call must not touch what serves the name by then, nor mark its record deleted."""
    first = fn("predict").deploy(project=project, port=free_port())
    first.delete()
    second = fn("predict").deploy(project=project, port=free_port())
    served.append(second)
    first.delete()
    assert alive(second.pid)
    assert second.invoke({"x": [1.0]})["pid"] == second.pid
    assert get_service("predict", project).state == "running"
    second.delete()
    second.delete()
    assert not alive(second.pid) and get_service("predict", project).state == "deleted"


SECRET = "s3cr3t-Value-4711"
SECRET_ENV = {"API_TOKEN": {"secret": "api", "key": "token"}}


def test_secret_env_reaches_the_server_and_no_record(fn, project, served):
    from shoal.secrets import secrets_file

    secrets_file(project).set("api", "token", SECRET)
    port = free_port()
    svc = fn("secret_reversed", env=SECRET_ENV).deploy(project=project, port=port)
    served.append(svc)
    assert svc.invoke() == SECRET[::-1]
    failing = fn("secret_fails", env=SECRET_ENV).deploy(project=project, port=free_port())
    served.append(failing)
    with pytest.raises(ServiceError) as error:
        failing.invoke()
    assert error.value.status == 500 and "rejected token ****" in str(error.value) and SECRET not in str(error.value)
    failing.delete()  # its last request metrics and errors are written as it stops
    svc.delete()
    errors = service_errors("secret_fails", project)
    assert errors and all(SECRET not in f"{e.message} {e.traceback}" for e in errors)
    assert "****" in errors[0].message
    assert SECRET not in repr(get_service("secret_reversed", project))
    for path in project.root.rglob("*"):  # the database (and its WAL), logs: nothing holds the value
        if path.is_file() and path.name != "secrets.json":
            assert SECRET.encode() not in path.read_bytes(), path


def test_missing_secret_fails_deploy_before_any_record(fn, project):
    with pytest.raises(SecretError, match="shoal secrets set api token"):
        fn("secret_reversed", env=SECRET_ENV).deploy(project=project, port=free_port())
    with pytest.raises(NotFoundError):
        get_service("secret_reversed", project)


def test_delete_from_another_process(fn, project):
    port = free_port()
    svc = fn("predict").deploy(project=project, port=port)
    pid = svc.pid
    try:
        code = (
            "import shoal, shoal.services, sys; "
            "shoal.services.delete_service('predict', shoal.Project(sys.argv[1], name=sys.argv[2]))"
        )
        subprocess.run([sys.executable, "-c", code, str(project.root), project.name], check=True, timeout=120)
        wait_for(lambda: not alive(pid), what="the server process to end")
        assert refused(port)
        assert get_service("predict", project).state == "deleted"
    finally:
        kill_by_pid([pid])


def test_port_in_use_is_an_error_at_deploy(fn, project):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(ServiceSpecError, match=f"127.0.0.1:{port}.*in use"):
            fn("predict").deploy(project=project, port=port)
    with pytest.raises(NotFoundError):
        get_service("predict", project)  # nothing half-written


def test_bad_input_is_refused(fn, project):
    predict = fn("predict")
    with pytest.raises(ServiceSpecError, match="cannot serve"):
        predict.deploy(backend="dask", project=project)
    with pytest.raises(ServiceSpecError, match="invalid port"):
        predict.deploy(project=project, port=70000)
    with pytest.raises(ServiceSpecError, match="invalid service name"):
        predict.deploy(project=project, name="a/b")
    with pytest.raises(ServiceSpecError, match="one replica without autoscaling"):
        predict.deploy(project=project, scaling={"upscale_delay_s": 1})
    with pytest.raises(NotFoundError, match="shoal services list"):
        get_service("nothing", project)
    assert isinstance(predict, shoal.Function)


def test_service_records_on_both_databases(any_project):
    """The services table, request metrics and the bounded recent errors, on SQLite and PostgreSQL."""
    from datetime import datetime, timedelta, timezone

    from shoal.store.services import MAX_ERRORS, ServiceRecords

    records = ServiceRecords(any_project.store)
    fields = dict(
        name="svc", function="f", function_hash="a" * 64, backend="local", address=None, pid=None,
        process_start=None, url="http://127.0.0.1:1/svc", min_replicas=0, max_replicas=2, spec={"port": 1},
    )  # fmt: skip
    first = records.save(**fields, state="deploying")
    second = records.save(**{**fields, "function_hash": "b" * 64}, state="running")
    assert second.created_at == first.created_at and second.function_hash == "b" * 64
    assert [r.name for r in records.list()] == ["svc"]
    records.set_state("svc", "deleted")
    assert records.list() == [] and records.get("svc").state == "deleted"
    with pytest.raises(shoal.StoreError, match="service state"):
        records.save(**fields, state="sleeping")

    now = datetime.now(timezone.utc)
    row = {
        "replica": "r1", "function_hash": "b" * 64, "started_at": now, "ended_at": now, "requests": 10,
        "errors": 2, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0,
    }  # fmt: skip
    failures = [
        {"replica": "r1", "function_hash": "b" * 64, "request_id": f"req{i}", "time": now + timedelta(seconds=i),
         "status": 500, "type": "ValueError", "message": f"bad {i}", "traceback": "Traceback ..."}
        for i in range(MAX_ERRORS + 5)
    ]  # fmt: skip
    records.record_requests("svc", [row], failures)
    assert [(m.requests, m.errors, m.p99_ms) for m in records.metrics("svc")] == [(10, 2, 3.0)]
    kept = records.errors("svc", limit=None)
    assert len(kept) == MAX_ERRORS and kept[0].request_id == f"req{MAX_ERRORS + 4}"  # the newest kept


def overloaded_statuses(url: str, folder, more: int = 3) -> tuple[list[int], list[tuple[int, str, str]]]:
    """One ``held`` request runs; ``more`` are sent while it does. Returns the statuses answered
    before the first is released (the rejected ones: nothing else can finish), then every answer
    as (status, content type, body)."""
    started, release = folder / "started.txt", folder / "release"
    body = json.dumps({"started": str(started), "release": str(release)}).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    answers: dict[int, tuple[int, str, str]] = {}

    def call(index: int) -> None:
        request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
        try:
            with opener.open(request, timeout=120) as answer:
                answers[index] = (answer.status, answer.headers.get_content_type(), answer.read().decode())
        except urllib.error.HTTPError as exc:
            answers[index] = (exc.code, exc.headers.get_content_type(), exc.read().decode())

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    wait_for(started.exists, what="the first request running")
    threads += [threading.Thread(target=call, args=(i,)) for i in range(1, more + 1)]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(answers) >= more - 1, what="the requests past the queue answered")
    early = sorted(status for status, _, _ in answers.values())
    release.touch()
    for thread in threads:
        thread.join(150)
    return early, [answers[i] for i in sorted(answers)]


def test_overload_past_ongoing_and_queued_is_503_json(fn, project, served, tmp_path):
    from shoal.services import deploy

    service = deploy(fn("held"), port=free_port(), project=project, max_ongoing_requests=1, max_queued_requests=1)
    served.append(service)
    assert get_service("held", project).spec["max_ongoing_requests"] == 1
    assert get_service("held", project).spec["max_queued_requests"] == 1
    early, answers = overloaded_statuses(service.url, tmp_path)
    assert early == [503, 503]  # one runs, one waits in the queue, the other two are refused at once
    assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503]
    assert answers[0][0] == 200 and json.loads(answers[0][2]) == "done"
    rejected = [json.loads(text) for status, kind, text in answers if status == 503 and kind == "application/json"]
    assert len(rejected) == 2
    assert rejected[0]["error"] == "Overloaded" and "max_queued_requests=1" in rejected[0]["message"]
    assert rejected[0]["request_id"]


def test_overload_knobs_are_checked(fn, project):
    from shoal.services import deploy

    for knobs, field in [
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"max_ongoing_requests": True}, "max_ongoing_requests"),
        ({"max_queued_requests": 0}, "max_queued_requests"),
        ({"max_queued_requests": -2}, "max_queued_requests"),
        ({"max_queued_requests": 1.5}, "max_queued_requests"),
    ]:
        with pytest.raises(ServiceSpecError, match=field):
            deploy(fn("predict"), port=free_port(), project=project, **knobs)
    with pytest.raises(NotFoundError):
        get_service("predict", project)  # nothing recorded
