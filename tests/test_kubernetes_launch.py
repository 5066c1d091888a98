"""Launch paths without an API server: configuration errors, refused storage, the objects handed
to the real clients, the CLI, and the Job's worker command (for real, against SQLite)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml

pytest.importorskip("kubernetes")
pytest.importorskip("dask_kubernetes")

import shoal  # noqa: E402
from shoal import backends  # noqa: E402
from shoal.backends.kubernetes import DaskKubernetes, RayKubernetes, dask_cluster, job, ray_cluster  # noqa: E402
from shoal.backends.kubernetes.config import load_config  # noqa: E402
from shoal.errors import BackendError, KubernetesError, UnreachableStorageError  # noqa: E402

SHOAL = [sys.executable, "-m", "shoal.cli.main"]
SERVER_DB = "postgresql+psycopg://shoal@db.example:5432/shoal"  # never connected to here


def handler(x: int = 1):
    return {"double": 2 * x}


@pytest.fixture
def fn():
    return shoal.Function.from_callable(handler, name="train", replicas=(0, 3), cpu="500m")


@pytest.fixture
def remote_project(tmp_path):
    """A project whose database and artifacts pods could reach (nothing is connected to)."""
    return shoal.Project(tmp_path, name="demo", database=SERVER_DB, artifacts="s3://bucket/shoal")


@pytest.fixture
def no_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def closed_port_cluster(tmp_path, monkeypatch):
    """A kubeconfig naming an API server on a localhost port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "closed",
        "clusters": [{"name": "closed", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "closed", "context": {"cluster": "closed", "user": "u", "namespace": "ml"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return port


def test_no_kubeconfig_is_one_clear_line(no_cluster):
    with pytest.raises(KubernetesError) as caught:
        load_config()
    message = str(caught.value)
    assert "\n" not in message
    for part in ("no Kubernetes cluster configured", "missing-kubeconfig", "KUBECONFIG", "~/.kube/config", "in a cluster"):
        assert part in message


def test_launchers_report_a_missing_kubeconfig(no_cluster, fn, remote_project):
    for kind in (DaskKubernetes, RayKubernetes):
        backend = kind(fn, project=remote_project)
        with pytest.raises(KubernetesError, match="no Kubernetes cluster configured"):
            backend.start()
        backend.close()


def test_launchers_hand_the_validated_objects_to_the_clients(fn, remote_project):
    dask = DaskKubernetes(fn, namespace="ml", project=remote_project)
    assert dask.spec == dask_cluster(fn, namespace="ml", project="demo")
    ray = RayKubernetes(fn, namespace="ml", project=remote_project)
    assert ray.spec == ray_cluster(fn, namespace="ml", project="demo")
    assert ray.remote and dask.remote


def test_ray_launcher_against_a_closed_api_server(closed_port_cluster, fn, remote_project):
    backend = RayKubernetes(fn, project=remote_project, request_timeout=5)
    with pytest.raises(KubernetesError) as caught:
        backend.start()
    message = str(caught.value)
    assert backend.cluster_name in message and "did not answer" in message and "\n" not in message
    assert backend.namespace == "ml"  # taken from the kubeconfig's context
    backend.close()


def test_dask_launcher_against_a_closed_api_server(closed_port_cluster, fn, remote_project):
    backend = DaskKubernetes(fn, project=remote_project, resource_timeout=5)
    with pytest.raises(KubernetesError, match=f"could not create DaskCluster {backend.spec['metadata']['name']}"):
        backend.start()
    backend.close()


@pytest.mark.parametrize("kind", [DaskKubernetes, RayKubernetes])
def test_local_storage_is_refused_before_anything_is_created(kind, fn, tmp_path, no_cluster):
    sqlite = shoal.Project(tmp_path, name="p", artifacts="s3://bucket/x")
    with pytest.raises(UnreachableStorageError, match="SQLite"):
        kind(fn, project=sqlite)
    local = shoal.Project(tmp_path, name="p", database=SERVER_DB, artifacts=str(tmp_path / "artifacts"))
    with pytest.raises(UnreachableStorageError, match="local artifact store"):
        kind(fn, project=local)


def test_job_refuses_local_storage_and_renders_for_a_server(fn, tmp_path, remote_project):
    with pytest.raises(UnreachableStorageError):
        job(fn, "0" * 32, project=shoal.Project(tmp_path, name="p"))
    rendered = job(fn, "ab" * 16, project=remote_project, database={"secret": "shoal-db", "key": "url"})
    pod = rendered["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["SHOAL_DATABASE"]["valueFrom"]["secretKeyRef"] == {"name": "shoal-db", "key": "url"}
    assert env["SHOAL_ARTIFACTS"]["value"] == "s3://bucket/shoal" and env["SHOAL_PROJECT_NAME"]["value"] == "demo"
    assert pod["containers"][0]["args"] == ["shoal", "worker", "run", "ab" * 16]
    assert pod["restartPolicy"] == "Never" and rendered["spec"]["backoffLimit"] == 0


def test_registry_names(fn, remote_project):
    with pytest.raises(BackendError, match="needs the function"):
        backends.get("dask-k8s")
    made = backends.get("ray-k8s", fn=fn, project=remote_project)
    assert isinstance(made, RayKubernetes)
    made.close()


# -- the command line ------------------------------------------------------------------------------
def _cli(args, cwd, env=None, check=False):
    environment = {**os.environ, **(env or {})}
    environment.pop("SHOAL_DATABASE", None) if env is None or "SHOAL_DATABASE" not in env else None
    return subprocess.run(SHOAL + args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture
def train_file(tmp_path):
    (tmp_path / "train.py").write_text(textwrap.dedent('''
        import shoal

        @shoal.function(replicas=(0, 4), cpu="500m", gpu=1, spot="require",
                        volumes=[{"type": "pvc", "name": "data", "mount_path": "/data", "claim_name": "c"}])
        def train(x: int = 1):
            return {"double": 2 * x}
    '''))
    return tmp_path


def test_cli_render_dask_yaml_is_multi_document(train_file):
    done = _cli(["k8s", "render", "train.py:train", "--engine", "dask", "-n", "ml"], train_file)
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(done.stdout))
    assert [d["kind"] for d in docs] == ["DaskCluster", "DaskAutoscaler"]
    assert docs[0]["metadata"]["namespace"] == "ml"


def test_cli_render_ray_json_and_bad_input(train_file):
    done = _cli(["k8s", "render", "train.py:train", "--engine", "ray", "-o", "json"], train_file)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [item["kind"] for item in listed["items"]] == ["RayCluster"]
    bad = _cli(["k8s", "render", "train.py:train", "--engine", "spark"], train_file)
    assert bad.returncode == 2 and "use dask, ray or job" in bad.stderr
    sqlite = _cli(["k8s", "render", "train.py:train", "--engine", "job"], train_file)
    assert sqlite.returncode == 2 and "SQLite" in sqlite.stderr and sqlite.stdout == ""


def test_worker_run_executes_and_records_a_pending_run(project):
    """What a Job's pod runs, for real: a pending run recorded here completes in another process."""
    from shoal.cli.k8s import record_pending_run

    (project.root / "work.py").write_text("def work(x: int = 1):\n    return {'double': 2 * x}\n")
    fn = shoal.Function.from_file(project.root / "work.py", "work")
    uid = record_pending_run(fn, project, {"x": "21"})
    assert project.runs.get(uid).state == "pending"
    env = {"SHOAL_DATABASE": project.database, "SHOAL_ARTIFACTS": project.artifacts_url, "SHOAL_PROJECT_NAME": project.name}
    elsewhere = project.root / "pod"
    elsewhere.mkdir()
    done = _cli(["worker", "run", uid], elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    run = project.runs.get(uid)
    assert run.state == "completed" and run.results == {"double": 42}
    again = _cli(["worker", "run", uid], elsewhere, env=env)
    assert again.returncode == 1 and "not pending" in again.stderr


def test_shared_backend_is_per_function_version(fn, remote_project):
    from shoal.backends.kubernetes import shared_for

    first = shared_for("ray-k8s", fn, remote_project)
    assert shared_for("ray-k8s", fn, remote_project) is first
    other = shared_for("ray-k8s", fn.with_spec(replicas=(1, 2)), remote_project)
    assert other is not first and other.spec["spec"]["workerGroupSpecs"][0]["minReplicas"] == 1


@pytest.mark.parametrize("name", ["dask-k8s", "ray-k8s"])
def test_backend_by_name_reaches_the_launcher_and_records_nothing_without_a_cluster(name, fn, tmp_path, no_cluster):
    """``fn.run(backend="dask-k8s")`` builds that function's launcher, which refuses a project whose
    database pods could not reach, before any run is recorded."""
    project = shoal.Project(tmp_path, name="demo", database=f"sqlite:///{tmp_path}/runs.db", artifacts="s3://bucket/x")
    with pytest.raises(UnreachableStorageError, match="SQLite") as caught:
        fn.with_spec(description=name).run(backend=name, project=project)
    assert "\n" not in str(caught.value)
    assert project.store.count_runs() == 0
