"""Services on Ray Serve: real HTTP requests to a real Serve proxy on the session's local Ray instance.

One Serve instance (one HTTP port) for the module, shut down at its end; the tests run in file order
(the port-in-use check must come before Serve starts).
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from handler_sources import SERVICE_HANDLERS  # noqa: E402
from helpers import alive, free_port  # noqa: E402

import shoal  # noqa: E402
from shoal.errors import ServiceError, ServiceSpecError  # noqa: E402
from shoal.services import delete_service, get_service, service_status  # noqa: E402
from shoal.testing import wait_for  # noqa: E402

# Ray 2.60 deprecates metrics_interval_s (kept on purpose: see shoal.services.config), once per parse.
# One xdist worker runs the whole module, in file order, on one Serve instance (see the docstring).
pytestmark = [
    pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning"),
    pytest.mark.xdist_group("services_ray"),
]

HANDLERS = SERVICE_HANDLERS + """

def busy(seconds: float = 0.3) -> int:
    threading.Event().wait(seconds)  # a request that takes a while: load for the autoscaler
    return os.getpid()


class Model:
    def __init__(self, ctx):
        with open(os.environ.get("LOADS_FILE", os.path.join(os.path.dirname(__file__), "loads.txt")), "a") as out:
            out.write(f"{os.getpid()}\\n")
        self.weight = 2.0

    def predict(self, x: float) -> dict:
        return {"y": x * self.weight, "pid": os.getpid()}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("services-ray")
    (path / "handlers.py").write_text(HANDLERS)
    return path


@pytest.fixture(scope="module")
def project(folder):
    proj = shoal.Project(folder, name="services-ray")
    yield proj
    proj.close()


@pytest.fixture(scope="module")
def serve_on(ray_backend):
    """The module's Serve HTTP port; Serve is shut down (its controller and proxy actors ended) after."""
    port = free_port()
    yield port
    from ray import serve

    serve.shutdown()


def make(folder: Path, handler: str, **options) -> shoal.Function:
    return shoal.Function.from_file(folder / "handlers.py", handler, **options)


def test_port_in_use_is_an_error_at_deploy(ray_backend, project, folder, serve_on):
    from shoal.backends.ray.serve_state import serve_details

    if serve_details() is not None:
        pytest.skip("Serve already runs on this Ray instance (started by an earlier test)")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(ServiceSpecError, match="in use"):
            make(folder, "predict").deploy(backend=ray_backend, project=project, port=port)


def test_parameters_errors_and_class_loaded_once(ray_backend, project, folder, serve_on):
    # half a CPU each: the three replicas fit the session's 2-CPU instance
    svc = make(folder, "predict", cpu="500m").deploy(backend=ray_backend, project=project, port=serve_on)
    failing = make(folder, "fails", cpu="500m").deploy(backend=ray_backend, project=project, port=serve_on)
    model = make(folder, "Model", cpu="500m").deploy(backend=ray_backend, project=project, port=serve_on)
    try:
        assert svc.url == f"http://127.0.0.1:{serve_on}/predict"
        assert svc.invoke({"x": [1.0, 2.0], "scale": "2"})["sum"] == 6.0
        with pytest.raises(ServiceError) as bad:
            svc.invoke({"x": "abc"})
        assert bad.value.status == 422 and bad.value.body["field"] == "x"
        with pytest.raises(ServiceError) as failed:
            failing.invoke({"x": 0})
        assert failed.value.status == 500
        assert failed.value.body["error"] == "ZeroDivisionError" and failed.value.body["request_id"]

        answers = [model.invoke({"x": value}) for value in (1, 2, 3)]
        assert [a["y"] for a in answers] == [2.0, 4.0, 6.0]
        pids = {a["pid"] for a in answers}
        assert len(pids) == 1
        assert (folder / "loads.txt").read_text().split() == [str(p) for p in pids]

        status = svc.status()
        assert (status.state, status.replicas, status.min_replicas, status.max_replicas) == ("RUNNING", 1, 1, 1)
        assert status.version == svc.function_hash
        record = get_service("predict", project)
        assert record.state == "running" and record.url == svc.url and record.address
        assert record.spec["autoscaling_config"]["metrics_interval_s"] == 0.5
        assert record.spec["ray_actor_options"]["num_cpus"] == 0.5
    finally:
        for service in (svc, failing, model):
            service.delete()


def test_constructor_failure_fails_deploy(ray_backend, project, folder, serve_on):
    from ray import serve

    with pytest.raises(ServiceError) as failed:
        make(folder, "Broken").deploy(backend=ray_backend, project=project, port=serve_on)
    assert failed.value.state == "DEPLOY_FAILED" and "model file missing" in str(failed.value)
    assert "Broken" not in serve.status().applications  # not a service answering 503 forever
    assert get_service("Broken", project).state == "failed"


def test_same_hash_is_a_no_op_and_a_rollout_answers_every_request(ray_backend, project, folder, serve_on):
    from ray import serve

    first = make(folder, "predict").deploy(backend=ray_backend, project=project, port=serve_on)
    try:
        pid = first.invoke({"x": [1.0]})["pid"]
        deployed_at = serve.status().applications["predict"].last_deployed_time_s
        again = make(folder, "predict").deploy(backend=ray_backend, project=project, port=serve_on)
        assert serve.status().applications["predict"].last_deployed_time_s == deployed_at
        assert again.invoke({"x": [1.0]})["pid"] == pid  # the same replica: nothing restarted

        answers: list = []
        failures: list = []
        rolled = threading.Event()

        def client() -> None:
            while not rolled.is_set() and len(answers) < 5000:
                try:
                    answers.append(first.invoke({"x": [1.0]}, timeout=60)["sum"])
                except ServiceError as exc:
                    failures.append(exc)
            for _ in range(5):  # a few after the rollout: the new version answers
                answers.append(first.invoke({"x": [1.0]}, timeout=60)["sum"])

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_for(lambda: len(answers) >= 3, what="requests before the rollout")
            changed = make(folder, "predict", defaults={"scale": 10.0})
            second = changed.deploy(backend=ray_backend, project=project, port=serve_on)
        finally:
            rolled.set()
            thread.join(120)
        assert failures == []
        assert answers[0] == 1.0 and answers[-1] == 10.0
        assert set(answers) == {1.0, 10.0}
        assert second.status().version == changed.hash
        assert get_service("predict", project).function_hash == changed.hash
    finally:
        delete_service("predict", project)


def test_delete_leaves_no_replica_and_no_route(ray_backend, project, folder, serve_on):
    from ray import serve

    svc = make(folder, "predict").deploy(backend=ray_backend, project=project, port=serve_on)
    pid = svc.invoke({"x": [1.0]})["pid"]
    assert alive(pid)
    svc.delete()
    assert "predict" not in serve.status().applications
    wait_for(lambda: not alive(pid), what="the replica's process to end")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as missing:
        opener.open(urllib.request.Request(svc.url, data=b"{}", method="POST"), timeout=30)
    assert missing.value.code == 404
    assert get_service("predict", project).state == "deleted"


def test_delete_twice_is_a_no_op(ray_backend, project, folder, serve_on):
    """The second ``delete`` of a service object (``shoal serve`` on Ctrl-C) neither deletes the
    application deployed under its name since, nor marks that one's record deleted."""
    first = make(folder, "predict").deploy(backend=ray_backend, project=project, port=serve_on)
    first.delete()
    second = make(folder, "predict").deploy(backend=ray_backend, project=project, port=serve_on)
    try:
        first.delete()
        assert second.invoke({"x": [1.0, 2.0]})["sum"] == 3.0
        assert get_service("predict", project).state == "running"
        second.delete()
        second.delete()
        assert get_service("predict", project).state == "deleted"
    finally:
        delete_service("predict", project)


def test_secret_env_reaches_the_replicas_and_no_record(ray_backend, project, folder, serve_on):
    import json

    from shoal.backends.ray.serve_state import serve_details
    from shoal.secrets import secrets_file

    value = "s3cr3t-Ray-Value-0815"
    secrets_file(project).set("api", "token", value)
    fn = make(folder, "secret_reversed", env={"API_TOKEN": {"secret": "api", "key": "token"}, "PLAIN": "yes"})
    svc = fn.deploy(backend=ray_backend, project=project, port=serve_on)
    try:
        assert svc.invoke() == value[::-1]
        record = get_service("secret_reversed", project)
        assert value not in repr(record) and record.spec["ray_actor_options"]["runtime_env"] == {
            "env_vars": {"PLAIN": "yes"}
        }
        assert value not in json.dumps(serve_details(), default=str)  # not in Ray's deployment options
    finally:
        svc.delete()


def test_scales_from_zero_to_two_under_load_and_back(ray_backend, project, folder, serve_on):
    busy = make(folder, "busy", replicas=(0, 2))
    svc = busy.deploy(backend=ray_backend, project=project, port=serve_on, scaling={"target_ongoing_requests": 1})
    try:
        wait_for(lambda: svc.status().replicas == 0, timeout=120, what="scale to zero when idle")
        stop = threading.Event()
        seen: list[int] = []
        failures: list = []

        def client() -> None:
            while not stop.is_set() and len(seen) < 2000:
                try:
                    seen.append(svc.invoke({"seconds": 0.3}, timeout=120))
                except ServiceError as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(seen) >= 1, timeout=120, what="the first answer from zero replicas")
            wait_for(lambda: svc.status().replicas == 2, timeout=120, what="two replicas under load")
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
        assert failures == []
        wait_for(lambda: svc.status().replicas == 0, timeout=120, what="back to zero replicas")

        def counts() -> list[tuple]:
            events = project.store.list_scaling_events(backend="service:busy", limit=None)
            return [(e.direction, e.workers_before, e.workers_after) for e in reversed(events)]

        wait_for(lambda: counts() and counts()[-1][2] == 0, what="the scale-down to zero recorded")
        recorded = counts()
        assert ("up", 0, 1) in recorded and any(d == "up" and a == 2 for d, _, a in recorded)
        assert recorded[-1][0] == "down"
        assert service_status("busy", project).min_replicas == 0
    finally:
        svc.delete()


def test_app_builder_serves_a_function_document(ray_backend, project, folder, serve_on):
    """What a RayService's serveConfigV2 runs: the application built from a function's document."""
    from ray import serve

    from shoal.backends.ray.serving import app_builder
    from shoal.services.service import post_json

    fn = make(folder, "predict", cpu="500m")
    app = app_builder({"function": fn.to_dict(), "name": "built", "project": project.name})
    serve.run(app, name="built", route_prefix="/built")
    try:
        answer = post_json(f"http://127.0.0.1:{serve_on}/built", {"x": [2.0, 3.0]}, 60, "built")
        assert answer["sum"] == 5.0
    finally:
        serve.delete("built")


def test_overload_past_ongoing_and_queued_is_503(ray_backend, project, folder, serve_on, tmp_path):
    """Serve's proxy refuses what exceeds max_ongoing_requests + max_queued_requests with 503 and its
    own plain-text body (the request never reaches a replica, so shoal cannot shape it)."""
    from test_services_local import overloaded_statuses

    from shoal.backends.ray.serve_state import serve_details
    from shoal.services import deploy

    fn = make(folder, "held", cpu="500m")
    svc = deploy(fn, ray_backend, project=project, port=serve_on, max_ongoing_requests=1, max_queued_requests=1)
    try:
        config = serve_details()["applications"]["held"]["deployments"]["held"]["deployment_config"]
        assert (config["max_ongoing_requests"], config["max_queued_requests"]) == (1, 1)
        assert get_service("held", project).spec["max_queued_requests"] == 1
        early, answers = overloaded_statuses(svc.url, tmp_path)
        assert early == [503, 503]  # one runs, one waits in the proxy's queue, two are refused at once
        assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503]
        assert all("backpressure" in text for status, _, text in answers if status == 503)

        # the same hash with other limits is not a no-op: the deployment takes the new limits
        deploy(fn, ray_backend, project=project, port=serve_on, max_ongoing_requests=1, max_queued_requests=2)
        config = serve_details()["applications"]["held"]["deployments"]["held"]["deployment_config"]
        assert config["max_queued_requests"] == 2
    finally:
        delete_service("held", project)
