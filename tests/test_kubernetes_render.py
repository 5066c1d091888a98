"""Rendering and validation of Kubernetes objects (no API server needed: all real schemas)."""

from __future__ import annotations

import copy
import pathlib

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("kubernetes_validate")
pytest.importorskip("dask_kubernetes")

import shoal  # noqa: E402
from shoal.backends.kubernetes import dask_autoscaler, dask_cluster, pod_template, ray_cluster, render, validate  # noqa: E402
from shoal.backends.kubernetes.placement import PROVIDERS, SpotConfig  # noqa: E402
from shoal.backends.kubernetes.validation import validate_custom  # noqa: E402
from shoal.errors import ManifestError  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "kuberay"
VOLUMES = [
    {"type": "pvc", "name": "data", "mount_path": "/data", "claim_name": "shared-data"},
    {"type": "nfs", "name": "nfs", "mount_path": "/nfs", "server": "10.0.0.2", "path": "/exports", "read_only": True},
    {"type": "host_path", "name": "scratch", "mount_path": "/scratch", "path": "/mnt/ssd", "host_path_type": "Directory"},
    {"type": "config_map", "name": "cfg", "mount_path": "/etc/app", "config_map": "app-config"},
    {"type": "secret", "name": "creds", "mount_path": "/secrets", "secret": "cloud-creds", "sub_path": "key.json"},
]


def handler(x: int = 1):
    return x


def make(**spec):
    return shoal.Function.from_callable(handler, name="train", **spec)


@pytest.fixture(autouse=True)
def _kuberay_crds_from_test_data(monkeypatch):
    """Validate Ray objects against the CRDs copied into the repository's test data."""
    from shoal.backends.kubernetes import validation as module

    monkeypatch.setenv(module.KUBERAY_CRDS_ENV, str(DATA))
    module.crd_validator.cache_clear()
    yield
    module.crd_validator.cache_clear()


def container(template):
    return template["spec"]["containers"][0]


# -- pod templates -------------------------------------------------------------------------------
@pytest.mark.parametrize("volume", VOLUMES, ids=[v["type"] for v in VOLUMES])
def test_each_volume_kind_is_mounted(volume):
    template = pod_template(make(volumes=[volume]))
    (pod_volume,) = template["spec"]["volumes"]
    (mount,) = container(template)["volumeMounts"]
    assert pod_volume["name"] == mount["name"] == volume["name"]
    assert mount["mountPath"] == volume["mount_path"]
    source = {
        "pvc": ("persistentVolumeClaim", {"claimName": "shared-data"}),
        "nfs": ("nfs", {"server": "10.0.0.2", "path": "/exports", "readOnly": True}),
        "host_path": ("hostPath", {"path": "/mnt/ssd", "type": "Directory"}),
        "config_map": ("configMap", {"name": "app-config"}),
        "secret": ("secret", {"secretName": "cloud-creds"}),
    }[volume["type"]]
    assert pod_volume[source[0]] == source[1]
    assert mount.get("readOnly", False) == volume.get("read_only", False)
    assert mount.get("subPath") == volume.get("sub_path")


def test_resources_env_secrets_and_placement():
    fn = make(
        cpu=("500m", "2"), memory="1Gi", env={"MODE": "fast", "TOKEN": {"secret": "api", "key": "token"}},
        node_selector={"pool": "cpu"}, priority_class="batch-high",
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        affinity={"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
    )
    template = pod_template(fn, project="demo")
    c = container(template)
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2"}}
    assert {"name": "MODE", "value": "fast"} in c["env"]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}} in c["env"]
    spec = template["spec"]
    assert spec["nodeSelector"] == {"pool": "cpu"}
    assert spec["priorityClassName"] == "batch-high"
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert "podAntiAffinity" in spec["affinity"] and "nodeAffinity" not in spec["affinity"]
    labels = template["metadata"]["labels"]
    assert labels["shoal.dev/function"] == "train" and labels["shoal.dev/project"] == "demo"
    assert labels["shoal.dev/hash"] == fn.hash[:16]
    assert template["metadata"]["annotations"]["shoal.dev/function-hash"] == fn.hash


def test_gpu_is_request_and_limit():
    c = container(pod_template(make(gpu=2)))
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    only_request = make(resources={"requests": {"gpu": "1"}})
    assert container(pod_template(only_request))["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_gpu_request_below_limit_is_refused():
    fn = make(resources={"requests": {"gpu": "1"}, "limits": {"gpu": "2"}})
    with pytest.raises(ManifestError, match="GPU request equal to the limit"):
        pod_template(fn)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_spot_require(provider):
    config = PROVIDERS[provider]
    spec = pod_template(make(spot="require"), spot=provider)["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": config.label_key, "operator": "In", "values": [config.label_value]}]}]
    tolerated = [t for t in spec.get("tolerations", []) if t["key"] == config.taint_key]
    assert len(tolerated) == (1 if config.taint_key else 0)


def test_spot_prefer_and_none():
    prefer = pod_template(make(spot="prefer"))["spec"]
    (preferred,) = prefer["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["weight"] == 100
    assert preferred["preference"]["matchExpressions"][0]["key"] == "cloud.google.com/gke-spot"
    assert prefer["tolerations"][0]["key"] == "cloud.google.com/gke-spot"
    none = pod_template(make(spot="none"))["spec"]
    assert "affinity" not in none and "tolerations" not in none
    on_demand = SpotConfig("eks.amazonaws.com/capacityType", "SPOT", on_demand_label=("eks.amazonaws.com/capacityType", "ON_DEMAND"))
    avoid = pod_template(make(spot="none"), spot=on_demand)["spec"]
    term = avoid["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["ON_DEMAND"]}]


def test_spot_requirement_is_added_to_every_user_term():
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
    ]}}}
    spec = pod_template(make(spot="require", affinity=user))["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [len(t["matchExpressions"]) for t in terms] == [2, 2]
    assert all(t["matchExpressions"][1]["key"] == "cloud.google.com/gke-spot" for t in terms)


def test_requirements_install_at_start_only_without_an_image():
    plain = container(pod_template(make(requirements=["numpy>=1.26"]), args=["dask", "worker"]))
    assert {"name": "EXTRA_PIP_PACKAGES", "value": "numpy>=1.26"} in plain["env"]
    assert plain["command"][:2] == ["sh", "-c"] and "pip install" in plain["command"][2]
    assert plain["args"] == ["dask", "worker"] and plain["image"] == f"ghcr.io/shoal-project/shoal:{shoal.__version__}"
    custom = container(pod_template(make(requirements=["numpy"], image="registry.example/ml:1"), args=["dask", "worker"]))
    assert custom["image"] == "registry.example/ml:1" and "command" not in custom
    assert "EXTRA_PIP_PACKAGES" not in {e["name"] for e in custom.get("env", [])}


def test_coordinators_get_no_gpu_volumes_or_spot():
    fn = make(gpu=1, spot="require", volumes=VOLUMES[:1], node_selector={"pool": "x"})
    for role in ("scheduler", "head"):
        spec = pod_template(fn, role)["spec"]
        assert "resources" not in spec["containers"][0] and "volumes" not in spec and "affinity" not in spec
        assert spec["nodeSelector"] == {"pool": "x"}


def test_long_names_fit_kubernetes_limits():
    fn = shoal.Function.from_callable(handler, name="a" * 100)
    cluster = dask_cluster(fn)
    assert len(cluster["metadata"]["name"]) <= 40
    assert len(cluster["metadata"]["labels"]["shoal.dev/function"]) == 63


# -- custom resources ----------------------------------------------------------------------------
@pytest.mark.parametrize("replicas", [(0, 4), (2, 2), (1, 3)])
def test_dask_cluster_and_autoscaler(replicas):
    fn = make(replicas=replicas, cpu="1", memory="2Gi", spot="prefer", volumes=VOLUMES)
    cluster = dask_cluster(fn, namespace="ml")
    assert cluster["kind"] == "DaskCluster" and cluster["metadata"]["namespace"] == "ml"
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] == replicas[0]
    c = worker["spec"]["containers"][0]
    assert c["args"][:4] == ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"]
    assert len(worker["spec"]["volumes"]) == len(VOLUMES)
    scheduler = cluster["spec"]["scheduler"]
    assert scheduler["spec"]["containers"][0]["args"][:2] == ["dask", "scheduler"]
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == cluster["metadata"]["name"]
    autoscaler = dask_autoscaler(fn)
    assert autoscaler["spec"] == {"cluster": cluster["metadata"]["name"], "minimum": replicas[0], "maximum": replicas[1]}
    kinds = [o["kind"] for o in render(fn, "dask")]
    assert kinds == (["DaskCluster"] if replicas[0] == replicas[1] else ["DaskCluster", "DaskAutoscaler"])


@pytest.mark.parametrize("replicas", [(0, 4), (3, 3)])
def test_ray_cluster(replicas):
    fn = make(replicas=replicas, gpu=1, cpu="4", memory="8Gi", spot="require", env={"K": {"secret": "s", "key": "k"}})
    cluster = ray_cluster(fn, idle_timeout=120)
    spec = cluster["spec"]
    (group,) = spec["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"], group["replicas"]) == (replicas[0], replicas[1], replicas[0])
    assert spec["enableInTreeAutoscaling"] is (replicas[0] < replicas[1])
    if replicas[0] < replicas[1]:
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    else:
        assert "autoscalerOptions" not in spec
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head_ports = {p["name"]: p["containerPort"] for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports["client"] == 10001
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    head_env = {e["name"]: e for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["GRPC_ENABLE_FORK_SUPPORT"]["value"] == "false"  # Ray Client's per-client fork
    assert head_env["K"]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "k"}
    worker_env = {e["name"] for e in group["template"]["spec"]["containers"][0]["env"]}
    assert "GRPC_ENABLE_FORK_SUPPORT" not in worker_env


def test_the_functions_own_grpc_fork_setting_wins_on_the_ray_head():
    fn = make(replicas=(0, 2), env={"GRPC_ENABLE_FORK_SUPPORT": "true"})
    head = ray_cluster(fn)["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert [e["value"] for e in head["env"] if e["name"] == "GRPC_ENABLE_FORK_SUPPORT"] == ["true"]


def test_rayjob_crd_accepts_a_rendered_cluster_spec():
    cluster = ray_cluster(make(replicas=(0, 2)))
    ray_job = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "train-job"},
        "spec": {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": cluster["spec"]},
    }
    assert validate(ray_job) is ray_job


# -- the validators reject what the API server would reject ------------------------------------------
def test_invalid_custom_resources_are_rejected():
    cluster = dask_cluster(make(replicas=(0, 2)))
    bad = copy.deepcopy(cluster)
    bad["spec"]["worker"]["replicas"] = "two"
    with pytest.raises(ManifestError, match="spec.worker.replicas"):
        validate_custom(bad)
    typo = copy.deepcopy(cluster)
    typo["spec"]["workers"] = typo["spec"].pop("worker")
    with pytest.raises(ManifestError, match="worker"):
        validate(typo)
    ray = ray_cluster(make(replicas=(0, 2)))
    del ray["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(ManifestError, match="maxReplicas"):
        validate(ray)


def test_invalid_pod_spec_inside_a_custom_resource_is_rejected():
    cluster = dask_cluster(make())
    cluster["spec"]["worker"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": ["1"]}}
    with pytest.raises(ManifestError, match="spec.worker"):
        validate(cluster)


def test_bad_user_affinity_is_rejected():
    fn = make(affinity={"nodeAffinity": {"required": True}})
    with pytest.raises(ManifestError, match="required"):
        pod_template(fn)


def test_packaged_kuberay_crds_match_the_test_data():
    packaged = pathlib.Path(shoal.backends.kubernetes.__file__).parent / "crds"
    for name in ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"):
        assert (packaged / name).read_bytes() == (DATA / name).read_bytes()
