"""GPU requests reach the engines: Ray's num_gpus, Dask's worker resources; a request no worker of
an embedded engine can ever meet is refused before anything is recorded (it would wait forever).

This machine has no GPU: Dask workers are told they have one (``resources={"GPU": 1}``), which is
how Dask itself models GPUs, and the run must land on such a worker.
"""

from __future__ import annotations

import pytest

import shoal
import shoal.backends
from shoal.errors import BackendError, SpecError
from shoal.spec import gpus_per_run


def worker_resources():
    from distributed import get_worker

    return dict(get_worker().state.total_resources)


def nothing():
    return {"ok": True}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [({}, 0), ({"gpu": 2}, 2), ({"requests": {"gpu": "1"}}, 1), ({"requests": {"gpu": 1}, "limits": {"gpu": 3}}, 3)],
)
def test_gpus_per_run_reads_the_limit_then_the_request(resources, expected):
    options = {"gpu": resources["gpu"]} if "gpu" in resources else {"resources": resources}
    assert gpus_per_run(shoal.function(nothing, **options).spec.resources) == expected


def test_half_a_gpu_is_a_spec_error():
    with pytest.raises(SpecError, match="whole number of GPUs"):
        shoal.function(nothing, gpu="0.5")


def test_embedded_dask_without_gpus_refuses_a_gpu_function_before_recording(project, dask_backend):
    fn = shoal.function(nothing, gpu=1)
    with pytest.raises(BackendError, match=r"asks for 1 GPU.*resources=\{'GPU': N\}"):
        fn.run(backend=dask_backend, project=project)
    assert project.store.count_runs(function=fn.name) == 0


def test_dask_gpu_runs_land_on_workers_that_declare_gpus(project):
    fn = shoal.function(worker_resources, gpu=1)
    with shoal.backends.get("dask", n_workers=1, resources={"GPU": 1}) as backend:
        run = fn.run(backend=backend, project=project)
        runs = fn.map([{}] * 3, backend=backend, project=project)
    assert run.state == "completed", run.error
    assert run.results["GPU"] == 1
    assert [r.state for r in runs] == ["completed"] * 3


def test_local_ray_instance_without_gpus_refuses_a_gpu_function(project, ray_backend):
    fn = shoal.function(nothing, gpu=1)
    with pytest.raises(BackendError, match=r"asks for 1 GPU\(s\) per run but this ray cluster has 0.*num_gpus=N"):
        fn.run(backend=ray_backend, project=project)
    assert project.store.count_runs(function=fn.name) == 0
