"""Rules the backend contract owns (backends/base.py, backends/__init__.py) rather than each engine:
the bounds of scale/adapt, the registry's refusal to clobber, ``Backend.for_function`` as the one way
a backend name becomes a backend, and the error and environment helpers of ``shoal.execution``."""

from __future__ import annotations

import os
import uuid

import pytest

import shoal
from shoal import backends
from shoal.backends.local import LocalBackend
from shoal.errors import BackendError, RegistryError, ScalingError
from shoal.execution import error_dict, error_record, swapped_environment


def double(x: int = 1):
    return {"double": 2 * x}


BAD_ADAPT = [(3, 1), (-1, 2), (0, 0), (1.0, 2), (True, 2), (0, "4")]
BAD_SCALE = [-1, 2.5, True, "2", None]


@pytest.mark.parametrize("bounds", BAD_ADAPT, ids=repr)
def test_adapt_refuses_the_same_bounds_with_the_same_error_on_every_engine(backend, bounds):
    slots = backend.slots
    with pytest.raises(ScalingError) as caught:
        backend.adapt(*bounds)
    assert str(caught.value) == (
        "adapt(minimum, maximum) needs whole numbers with 0 <= minimum <= maximum and maximum >= 1, "
        f"got ({bounds[0]!r}, {bounds[1]!r}); pass e.g. adapt(0, 4)"
    )
    assert isinstance(caught.value, BackendError) and isinstance(caught.value, ValueError)
    assert backend.slots == slots  # refused before the engine was asked anything


@pytest.mark.parametrize("n", BAD_SCALE, ids=repr)
def test_scale_refuses_the_same_values_on_every_engine(backend, n):
    slots = backend.slots
    with pytest.raises(ScalingError, match=rf"scale\(n\) needs a whole number n >= {backend.min_scale} .*{backend.name} backend, got "):
        backend.scale(n)
    assert backend.slots == slots


def test_the_fewest_workers_is_declared_by_the_engine():
    """Local threads cannot go to zero (nothing would ever run); the check is still the base's."""
    with backends.get("local", n_workers=2) as local:
        with pytest.raises(ScalingError, match=r"n >= 1 .*local backend, got 0; pass e.g. scale\(1\)"):
            local.scale(0)
        local.scale(1)
        local.adapt(0, 3)
        assert local.slots == 3
        assert [(e.workers_before, e.workers_after) for e in local.scaling_events()] == [(2, 1), (1, 3)]


def test_register_refuses_to_overwrite_another_class_unless_asked():
    name = f"contract-{uuid.uuid4().hex[:8]}"
    backends.register(name, "shoal.backends.local:LocalBackend")
    backends.register(name, LocalBackend)  # the same class, resolved or not: no conflict

    class Other(LocalBackend):
        pass

    with pytest.raises(RegistryError) as caught:
        backends.register(name, Other)
    message = str(caught.value)
    assert name in message and "shoal.backends.local:LocalBackend" in message and "clobber=True" in message
    assert type(backends.get(name)) is LocalBackend  # unchanged

    backends.register(name, Other, clobber=True)
    with backends.get(name) as replaced:
        assert type(replaced) is Other
    with pytest.raises(RegistryError, match="already"):
        backends.register("local", Other)  # a built-in engine is protected the same way


class RecordingLocal(LocalBackend):
    """A third-party engine: the local pool, counting the functions it was resolved for."""

    name = "recording-local"
    resolved: list[tuple[str, str]] = []

    @classmethod
    def for_function(cls, name, fn, project):
        cls.resolved.append((name, fn.hash))
        return super().for_function(name, fn, project)


def test_a_registered_third_party_backend_resolves_runs_by_name(project):
    name = f"recording-{uuid.uuid4().hex[:8]}"
    backends.register(name, RecordingLocal)
    fn = shoal.Function.from_callable(double, name="double", replicas=(1, 2))
    try:
        run = fn.run({"x": 21}, backend=name, project=project)
        assert run.state == "completed" and run.results == {"double": 42}
        assert run.backend == "recording-local"
        assert RecordingLocal.resolved == [(name, fn.hash)]
        shared = backends.shared(name)
        assert type(shared) is RecordingLocal and shared.slots == 2  # fitted to the replicas by the default
        assert backends.for_function(name, fn, project) is shared
    finally:
        backends.shared(name).close()


def test_for_function_names_an_unknown_backend():
    fn = shoal.Function.from_callable(double, name="double")
    with pytest.raises(shoal.errors.UnknownBackendError, match="unknown backend 'no-such-engine'"):
        backends.for_function("no-such-engine", fn, None)


def test_kubernetes_launchers_share_one_backend_per_function_version(tmp_path):
    pytest.importorskip("kubernetes")
    pytest.importorskip("dask_kubernetes")
    from shoal.backends.kubernetes import DaskKubernetes, RayKubernetes

    project = shoal.Project(
        tmp_path, name="demo", database="postgresql+psycopg://shoal@db.example:5432/shoal", artifacts="s3://bucket/x"
    )
    fn = shoal.Function.from_callable(double, name="train", replicas=(0, 3), cpu="500m")
    for name, kind in (("dask-k8s", DaskKubernetes), ("ray-k8s", RayKubernetes)):
        first = backends.for_function(name, fn, project)
        assert type(first) is kind and first.fn is fn
        assert backends.for_function(name, fn, project) is first  # one per version: no second cluster
        other = backends.for_function(name, fn.with_spec(replicas=(1, 2)), project)
        assert other is not first and type(other) is kind
        elsewhere = shoal.Project(tmp_path / "b", name="demo", database=project.database, artifacts="s3://bucket/y")
        assert backends.for_function(name, fn, elsewhere) is not first  # per project's store too
    ray_other = backends.for_function("ray-k8s", fn.with_spec(replicas=(1, 2)), project)
    assert ray_other.spec["spec"]["workerGroupSpecs"][0]["minReplicas"] == 1


def test_error_dict_has_the_keys_of_error_record():
    try:
        raise ValueError("bad")
    except ValueError as exc:
        record = error_record(exc)
    assert error_dict("CancelledError", "run was cancelled") == {
        "type": "CancelledError",
        "message": "run was cancelled",
        "traceback": "",
    }
    assert set(error_dict("X", "y", "tb")) <= set(record) and error_dict("X", "y", "tb")["traceback"] == "tb"


def test_swapped_environment_restores_set_and_unset_variables(monkeypatch):
    present, absent = f"SHOAL_T_{uuid.uuid4().hex[:6]}", f"SHOAL_T_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(present, "before")
    monkeypatch.delenv(absent, raising=False)
    with pytest.raises(RuntimeError):
        with swapped_environment({present: "during", absent: "during"}):
            assert os.environ[present] == os.environ[absent] == "during"
            raise RuntimeError("the run failed")
    assert os.environ[present] == "before" and absent not in os.environ
