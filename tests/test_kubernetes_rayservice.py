"""The KubeRay RayService of a function (``shoal k8s render FILE:HANDLER --engine serve``): rendered,
validated against the RayService CRD shipped with shoal and against Ray Serve's own config schema,
with the same cluster as the function's RayCluster and the same autoscaling as ``fn.deploy``."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("kubernetes")
pytest.importorskip("kubernetes_validate")
pytest.importorskip("ray.serve")

import shoal  # noqa: E402
from shoal.backends.kubernetes import ray_cluster, validate  # noqa: E402
from shoal.backends.kubernetes.serve import APPLICATION_BUILDER, SERVE_PORT, ray_service  # noqa: E402
from shoal.errors import ManifestError, ServiceSpecError  # noqa: E402
from shoal.services.config import FAST_AUTOSCALING  # noqa: E402
from helpers import cli  # noqa: E402

HANDLERS = """\
def predict(x: list[float], scale: float = 1.0):
    return {"y": [v * scale for v in x]}
"""


def handler(x: int = 1):
    return x


def make(**spec):
    return shoal.Function.from_callable(handler, name="predict", **spec)


@pytest.fixture(autouse=True)
def _shipped_crds(monkeypatch):
    """Validate against the CRDs in the package (what users get), not a folder named by the environment."""
    from shoal.backends.kubernetes import validation as module

    monkeypatch.delenv(module.KUBERAY_CRDS_ENV, raising=False)
    module.crd_validator.cache_clear()
    yield
    module.crd_validator.cache_clear()


def serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def without_serve_ports(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        container["ports"] = [p for p in container.get("ports", []) if p["name"] != "serve"] or None
        if container["ports"] is None:
            del container["ports"]
    return spec


def test_rayservice_carries_the_application_and_the_functions_cluster():
    fn = make(
        replicas=(0, 3), cpu="500m", memory="1Gi", requirements=["scikit-learn>=1.3"], env={"MODE": "fast"}, timeout=20
    )
    service = ray_service(fn, namespace="ml", project="demo")
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    assert service["metadata"]["name"] == "shoal-predict" and service["metadata"]["namespace"] == "ml"
    assert service["metadata"]["annotations"]["shoal.dev/function-hash"] == fn.hash

    config = serve_config(service)
    assert config["http_options"] == {"host": "0.0.0.0", "port": SERVE_PORT, "request_timeout_s": 20}
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("predict", "/predict", APPLICATION_BUILDER)
    assert app["runtime_env"] == {"pip": ["scikit-learn>=1.3"]}
    assert shoal.Function.from_dict(app["args"]["function"]).hash == fn.hash  # the code travels in the config
    assert app["args"]["project"] == "demo"
    (deployment,) = app["deployments"]
    assert deployment["name"] == "predict" and deployment["user_config"] == {"function_hash": fn.hash}
    scaling = deployment["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (0, 3)
    assert {key: scaling[key] for key in FAST_AUTOSCALING} == FAST_AUTOSCALING
    assert deployment["ray_actor_options"]["num_cpus"] == 0.5  # from the CPU request

    cluster = service["spec"]["rayClusterConfig"]
    expected = ray_cluster(fn, name="shoal-predict", namespace="ml", project="demo")["spec"]
    assert without_serve_ports(cluster) == expected  # the RayCluster rendering, reused
    group = cluster["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 3) and cluster["enableInTreeAutoscaling"] is True
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert {"name": "serve", "containerPort": SERVE_PORT, "protocol": "TCP"} in worker["ports"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"] for p in head["ports"]} == {"gcs", "dashboard", "client", "serve"}


def test_name_stays_across_versions_and_scaling_overrides_apply():
    first = ray_service(make(), service="scorer")
    second = ray_service(make(env={"V": "2"}), service="scorer", scaling={"downscale_delay_s": 30})
    assert first["metadata"]["name"] == second["metadata"]["name"] == "shoal-scorer"  # apply rolls it in place
    assert (
        serve_config(first)["applications"][0]["deployments"][0]["user_config"]
        != serve_config(second)["applications"][0]["deployments"][0]["user_config"]
    )
    scaling = serve_config(second)["applications"][0]["deployments"][0]["autoscaling_config"]
    assert scaling["downscale_delay_s"] == 30 and (scaling["min_replicas"], scaling["max_replicas"]) == (1, 1)
    assert "runtime_env" not in serve_config(first)["applications"][0]  # no requirements


def test_function_with_its_own_image_gets_no_runtime_env():
    fn = make(image="registry.example/model:1", requirements=["numpy"])
    (app,) = serve_config(ray_service(fn))["applications"]
    assert "runtime_env" not in app
    cluster = ray_service(fn)["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/model:1"


def test_a_misspelt_field_is_refused_by_the_crd():
    service = ray_service(make())
    service["spec"]["serveConfigV2Typo"] = service["spec"].pop("serveConfigV2")
    with pytest.raises(ManifestError, match="serveConfigV2Typo"):
        validate(service)


def test_a_bad_pod_template_inside_is_refused():
    service = ray_service(make())
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["ports"][0]["containerPort"] = "6379"
    with pytest.raises(ManifestError, match=r"spec\.rayClusterConfig\.headGroupSpec"):
        validate(service)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda c: c["applications"][0]["deployments"][0]["autoscaling_config"].update(min_replicas=4),
            "autoscaling_config",
        ),
        (lambda c: c["applications"][0]["deployments"][0].update(num_replicas="many"), "num_replicas"),
        (lambda c: c.update(applications="predict"), "applications"),
    ],
    ids=["min-above-max", "bad-num-replicas", "applications-not-a-list"],
)
def test_a_bad_serve_config_is_refused(change, match):
    service = ray_service(make(replicas=(0, 2)))
    config = serve_config(service)
    change(config)
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    with pytest.raises(ManifestError, match=match):
        validate(service)


def test_serve_config_that_is_not_a_mapping_is_refused():
    service = ray_service(make())
    service["spec"]["serveConfigV2"] = "- just\n- a list\n"
    with pytest.raises(ManifestError, match="serveConfigV2"):
        validate(service)


def test_bad_service_name_and_scaling_knob_are_refused():
    with pytest.raises(ServiceSpecError, match="no/slash"):
        ray_service(make(), service="no/slash")
    with pytest.raises(ServiceSpecError, match="warp_speed"):
        ray_service(make(), scaling={"warp_speed": 9})


def test_overload_limits_are_the_deployments_and_checked():
    (deployment,) = serve_config(ray_service(make(), max_ongoing_requests=2, max_queued_requests=10))["applications"][
        0
    ]["deployments"]
    assert (deployment["max_ongoing_requests"], deployment["max_queued_requests"]) == (2, 10)
    (unset,) = serve_config(ray_service(make()))["applications"][0]["deployments"]
    assert "max_ongoing_requests" not in unset and "max_queued_requests" not in unset  # Ray Serve's defaults
    with pytest.raises(ServiceSpecError, match="max_queued_requests"):
        ray_service(make(), max_queued_requests=0)
    with pytest.raises(ServiceSpecError, match="max_ongoing_requests"):
        ray_service(make(), max_ongoing_requests=-1)


def test_the_application_builder_exists_where_the_config_points():
    import importlib

    module, _, attribute = APPLICATION_BUILDER.partition(":")
    builder = getattr(importlib.import_module(module), attribute, None)
    if builder is None:
        pytest.fail(f"{APPLICATION_BUILDER} does not exist: the RayService would fail on the cluster")
    from ray import serve

    (app,) = serve_config(ray_service(make(replicas=(0, 2))))["applications"]
    assert isinstance(builder(app["args"]), serve.Application)


# -- the command line ---------------------------------------------------------------------------------
def test_cli_renders_a_rayservice_as_yaml_and_json(tmp_path):
    (tmp_path / "handlers.py").write_text(HANDLERS)
    as_yaml = cli(tmp_path, "k8s", "render", "handlers.py:predict", "--engine", "serve", "--name", "scorer")
    assert as_yaml.returncode == 0, as_yaml.stderr
    (service,) = [doc for doc in yaml.safe_load_all(as_yaml.stdout) if doc]
    assert service["kind"] == "RayService" and service["metadata"]["name"] == "shoal-scorer"
    (app,) = serve_config(service)["applications"]
    assert app["route_prefix"] == "/scorer"
    as_json = cli(tmp_path, "k8s", "render", "handlers.py:predict", "--engine", "serve", "-o", "json", "--name", "scorer")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["items"] == [service]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--engine", "nope"], "--engine"),
        (["--engine", "serve", "--output", "xml"], "--output"),
        (["--engine", "ray", "--name", "scorer"], "--name is for --engine serve"),
        (["--engine", "serve", "--name", "bad name!"], "invalid service name"),
    ],
)
def test_cli_refuses_bad_input_and_prints_nothing(tmp_path, args, fragment):
    (tmp_path / "handlers.py").write_text(HANDLERS)
    done = cli(tmp_path, "k8s", "render", "handlers.py:predict", *args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == "" and fragment in done.stderr and done.stderr.startswith("error: ")


def test_the_rendered_serve_config_deploys_on_ray_serve(tmp_path):
    """What KubeRay hands to Ray Serve, run by Ray Serve itself (`serve run CONFIG`, a Ray instance
    of its own): the function answers over HTTP with shoal's contract. Only host and port change
    (loopback and a free port, instead of 0.0.0.0:8000 in a pod)."""
    import signal
    import socket
    import urllib.error
    import urllib.request

    from helpers import alive, descendants, kill_by_pid

    from shoal.testing import wait_for

    (tmp_path / "handlers.py").write_text(HANDLERS)
    fn = shoal.Function.from_file(tmp_path / "handlers.py", "predict", replicas=(1, 2), cpu="500m")
    config = serve_config(ray_service(fn, project="demo"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config["http_options"].update(host="127.0.0.1", port=port)
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", json.dumps(body).encode(), {"content-type": "application/json"}
        )
        try:
            with opener.open(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()) if exc.headers.get_content_type() == "application/json" else {}

    def answering() -> bool:
        try:
            return post({"x": [1]})[0] == 200
        except OSError:
            return False

    log = tmp_path / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "RAY_ADDRESS"))}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ray.serve.scripts", "run", "--address", "local", str(tmp_path / "serve.yaml")],
            cwd=tmp_path, env=environ, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    processes: list[int] = []
    try:
        wait_for(lambda: answering() or process.poll() is not None, 180, "the application answers")
        assert process.poll() is None, log.read_text()[-3000:]
        assert post({"x": [1.5, 2], "scale": 2}) == (200, {"y": [3.0, 4.0]})
        status, body = post({"x": "nope"})
        assert status == 422 and body["field"] == "x", body
        processes = descendants(process.pid)
    finally:
        processes = processes or descendants(process.pid)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
        try:
            wait_for(lambda: not any(alive(pid) for pid in processes), 60, "Ray's processes end")
        finally:
            kill_by_pid(processes)
