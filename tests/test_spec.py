"""The operational spec (shoal.spec, shoal.quantity, shoal.hashing): validation, errors, canonical form.

Every bad input must raise a SpecError that names the field and says how to fix it.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

import shoal
from shoal import hashing
from shoal.errors import SpecError
from shoal.quantity import canonical_quantity, parse_quantity
from shoal.spec import SPEC_FIELDS, FunctionSpec, build_spec, canonical_spec, spec_to_dict


def spec(**fields) -> FunctionSpec:
    return build_spec(fields)


def decorate(**options) -> shoal.Function:
    """A Function built through the public decorator with ``options``."""

    def handler(x=1):
        return x

    return shoal.function("f", **options)(handler)


# -- quantities ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal("2")),
        (2, Decimal("2")),
        (0.5, Decimal("0.5")),
        ("4Gi", Decimal(4 * 2**30)),
        ("512Mi", Decimal(512 * 2**20)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        (" 2 ", Decimal("2")),
        ("0", Decimal(0)),
    ],
)
def test_parse_quantity_accepts_kubernetes_syntax(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["2Gx", "-1", "-500m", "", "abc", "inf", "Infinity", "nan", "1.2.3", True, False])
def test_parse_quantity_rejects_malformed_negative_and_infinite(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize("a, b", [("1000m", "1"), ("1", 1), ("1.0", "1"), ("1Gi", "1073741824"), ("1k", "1000")])
def test_canonical_quantity_has_one_spelling_per_amount(a, b):
    assert canonical_quantity(a) == canonical_quantity(b)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"cpu": "2Gx"}, "resources.requests.cpu"),
        ({"cpu": "-1"}, "resources.requests.cpu"),
        ({"memory": "-1"}, "resources.requests.memory"),
        ({"memory": "1Qi"}, "resources.requests.memory"),
        ({"gpu": "inf"}, "resources.requests.gpu"),
        ({"resources": {"limits": {"memory": "lots"}}}, "resources.limits.memory"),
    ],
)
def test_bad_quantity_is_a_spec_error_naming_field_and_syntax(options, field):
    with pytest.raises(SpecError) as info:
        decorate(**options)
    message = str(info.value)
    assert repr(field) in message
    assert "Kubernetes quantity syntax" in message and "500m" in message


def test_limit_below_request_is_refused_with_the_fix():
    with pytest.raises(SpecError) as info:
        decorate(cpu=("2", "1"))
    assert "limits.cpu" in str(info.value) and "raise the limit or lower the request" in str(info.value)
    with pytest.raises(SpecError, match="limits.memory"):
        decorate(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "1G"}})  # 1G < 1Gi


def test_limit_equal_to_or_above_request_is_accepted_in_any_spelling():
    fn = decorate(cpu=("1000m", "1"), memory=("512Mi", "1Gi"))
    assert fn.resources.requests.cpu == "1000m" and fn.resources.limits.cpu == "1"
    assert fn.resources.limits.memory == "1Gi"


def test_gpu_is_request_and_limit_and_must_be_whole():
    fn = decorate(gpu=2)
    assert fn.resources.requests.gpu == fn.resources.limits.gpu == "2"
    with pytest.raises(SpecError, match="whole number of GPUs"):
        decorate(gpu="0.5")


def test_cpu_finer_than_a_millicore_is_refused():
    with pytest.raises(SpecError, match="finer than 1m"):
        decorate(cpu="0.0001")
    assert decorate(cpu="0.001").resources.requests.cpu == "0.001"


def test_cpu_shorthand_pair_must_have_two_items():
    with pytest.raises(SpecError, match="'cpu'.*request, limit"):
        decorate(cpu=("1", "2", "3"))


# -- replicas --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [((1, 1), (1, 1)), ((0, 4), (0, 4)), ([2, 8], (2, 8)), (3, (3, 3)), ({"min": 0, "max": 5}, (0, 5)), ({"max": 3}, (1, 3))],
)
def test_replicas_forms(value, expected):
    replicas = decorate(replicas=value).replicas
    assert (replicas.min, replicas.max) == expected


def test_unset_replicas_stay_unset_and_differ_from_one_at_a_time():
    unset = decorate()
    assert unset.replicas is None and "replicas" not in unset.to_dict()["spec"]
    one = decorate(replicas=1)
    assert one.to_dict()["spec"]["replicas"] == {"min": 1, "max": 1}  # spelled out, not {}
    assert shoal.Function.from_dict(one.to_dict()).replicas == one.replicas
    assert one.hash != unset.hash  # (1, 1) runs one at a time; unset uses every slot


# Hashes computed with the code before replicas could be unset (replicas defaulted to (1, 1)): every
# stored spec keeps its hash. An explicit (1, 1) was stored without replicas, so it reads back as
# unset with that same hash; only a newly built explicit (1, 1) hashes differently.
GOLDEN_HASHES = [
    ({}, "1e425933a0c6b824ddb10012072f5de3634783e3ef45e9659bbc7842f801af92"),
    ({"replicas": (0, 4)}, "f66ca908bd8acd9c9bbfc8451ca7add1222487fc5a8025a55e8899e639377d5d"),
    ({"replicas": (1, 4)}, "96c4b1666a430aa9d2bb522d29fa852aef1556a8a55604a45871196890c7986a"),
    ({"replicas": 2}, "656e94a69b40bed6a851cfc542789d48868b822487e7b33ad57db4a1771a507e"),
    ({"replicas": (0, 1)}, "cb7c615b26cd2db955a0cc8a1419a6d7a341e3a8e0ed874a3e7f5f1226530f08"),
    ({"retries": 1}, "781c1c074e860f930569df66c5c4a4e1767d50c9550278dc9b88d13ceff014ba"),
]


@pytest.mark.parametrize("fields, expected", GOLDEN_HASHES)
def test_hashes_of_existing_specs_are_stable(fields, expected):
    assert hashing.function_hash("train", "0" * 64, canonical_spec(spec(**fields))) == expected


def test_replicas_min_greater_than_max_is_refused_with_the_fix():
    with pytest.raises(SpecError) as info:
        decorate(replicas=(5, 2))
    message = str(info.value)
    assert "'replicas'" in message and "min (5) is greater than max (2)" in message and "min <= max" in message


@pytest.mark.parametrize(
    "value, match",
    [
        ((0, 0), "replicas.max"),
        (0, "replicas.max"),
        ((-1, 2), "replicas.min"),
        ((1, 2, 3), "(min, max) pair"),
        (True, "replicas"),
        ((0.5, 2), "replicas.min"),
        ("many", "replicas"),
    ],
)
def test_bad_replicas_are_spec_errors(value, match):
    with pytest.raises(SpecError, match=match.replace("(", r"\(").replace(")", r"\)")):
        decorate(replicas=value)


# -- placement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spot", ["none", "prefer", "require"])
def test_spot_values(spot):
    assert decorate(spot=spot).spec.placement.spot == spot


def test_bad_spot_names_field_and_value():
    with pytest.raises(SpecError) as info:
        decorate(spot="sometimes")
    assert "'placement.spot'" in str(info.value) and "'sometimes'" in str(info.value)
    assert "'prefer'" in str(info.value)


def test_full_placement():
    fn = decorate(
        node_selector={"pool": "gpu"},
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        spot="prefer",
        priority_class="high",
    )
    placement = fn.spec.placement
    assert placement.node_selector == {"pool": "gpu"}
    assert placement.tolerations[0].operator == "Exists" and placement.priority_class == "high"


@pytest.mark.parametrize(
    "options, field",
    [
        ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "placement.tolerations.0.effect"),
        ({"tolerations": [{"key": "a", "toleration_seconds": -1}]}, "placement.tolerations.0.toleration_seconds"),
        ({"node_selector": {"pool": 3}}, "placement.node_selector.pool"),
        ({"affinity": {"x": float("nan")}}, "placement.affinity"),
        ({"placement": {"zone": "a"}}, "placement.zone"),
    ],
)
def test_bad_placement_is_a_spec_error_naming_the_field(options, field):
    with pytest.raises(SpecError, match=repr(field).replace(".", r"\.")):
        decorate(**options)


# -- volumes ---------------------------------------------------------------------------------------

VOLUMES = [
    {"type": "pvc", "name": "data", "mount_path": "/data", "claim_name": "datasets"},
    {"type": "nfs", "name": "shared", "mount_path": "/shared", "server": "nfs.local", "path": "/exports"},
    {"type": "host_path", "name": "scratch", "mount_path": "/scratch", "path": "/mnt/scratch"},
    {"type": "config_map", "name": "conf", "mount_path": "/etc/app", "config_map": "app-config"},
    {"type": "secret", "name": "creds", "mount_path": "/secrets", "secret": "db-creds", "read_only": True},
]


def test_every_volume_type_is_accepted_and_round_trips_with_its_type():
    fn = decorate(volumes=VOLUMES)
    assert [v.type for v in fn.spec.volumes] == ["pvc", "nfs", "host_path", "config_map", "secret"]
    stored = spec_to_dict(fn.spec)["volumes"]
    assert [v["type"] for v in stored] == ["pvc", "nfs", "host_path", "config_map", "secret"]
    assert build_spec(spec_to_dict(fn.spec)) == fn.spec


def test_a_function_with_volumes_can_still_be_changed():
    fn = decorate(volumes=VOLUMES[:1])
    changed = fn.with_spec(timeout=10)
    assert changed.spec.volumes == fn.spec.volumes and changed.spec.timeout == 10


@pytest.mark.parametrize(
    "volume, match",
    [
        ({"type": "s3", "name": "d", "mount_path": "/d"}, "unknown volume type; use one of pvc"),
        ({"name": "d", "mount_path": "/d", "claim_name": "c"}, "missing volume type; add type"),
        ({"type": "pvc", "name": "d", "mount_path": "data", "claim_name": "c"}, "absolute path"),
        ({"type": "pvc", "name": "Bad_Name", "mount_path": "/d", "claim_name": "c"}, "'volumes.0.name'"),
        ({"type": "pvc", "name": "d", "mount_path": "/d"}, "'volumes.0.claim_name'"),
        ({"type": "nfs", "name": "d", "mount_path": "/d", "path": "/x"}, "'volumes.0.server'"),
        ({"type": "pvc", "name": "d", "mount_path": "/d", "claim_name": "c", "size": "1Gi"}, "'volumes.0.size'"),
    ],
)
def test_invalid_volume_is_a_spec_error(volume, match):
    with pytest.raises(SpecError, match=match):
        decorate(volumes=[volume])


def test_volume_names_and_mount_paths_must_be_unique():
    with pytest.raises(SpecError, match="volume names must be unique; repeated: data"):
        decorate(volumes=[VOLUMES[0], {**VOLUMES[0], "mount_path": "/other"}])
    with pytest.raises(SpecError, match="mount paths must be unique; repeated: /data"):
        decorate(volumes=[VOLUMES[0], {**VOLUMES[0], "name": "other"}])


# -- env and secrets -----------------------------------------------------------------------------------


def test_env_values_and_secret_references():
    fn = decorate(env={"MODE": "fast", "WORKERS": 4, "RATE": 0.5, "TOKEN": {"secret": "api", "key": "token"}})
    env = fn.spec.env
    assert env["WORKERS"] == "4" and env["RATE"] == "0.5"
    assert env["TOKEN"].secret == "api" and env["TOKEN"].key == "token"
    assert spec_to_dict(fn.spec)["env"]["TOKEN"] == {"secret": "api", "key": "token"}


@pytest.mark.parametrize(
    "env, match",
    [
        ({"TOKEN": {"secret": "api", "key": "token", "value": "hunter2"}}, "env"),  # no secret values
        ({"TOKEN": {"secret": "api"}}, "env"),
        ({"1BAD": "x"}, "not a valid environment variable name"),
        ({"A B": "x"}, "not a valid environment variable name"),
        ({"A\n": "x"}, "not a valid environment variable name"),
        ({"DEBUG": True}, "'DEBUG' must be a string or a secret reference"),
        ({"X": None}, "'X' must be a string or a secret reference"),
        (["A=1"], "use a mapping"),
    ],
)
def test_bad_env_is_a_spec_error(env, match):
    with pytest.raises(SpecError, match=match):
        decorate(env=env)


# -- requirements, defaults, timeout, retries ------------------------------------------------------------


def test_requirements_are_normalised_pip_specifiers():
    fn = decorate(requirements=["numpy >= 1.26", "pandas", "scipy==1.13; python_version >= '3.10'"])
    assert fn.spec.requirements[0] == "numpy>=1.26"
    assert decorate(requirements="numpy").spec.requirements == ("numpy",)


@pytest.mark.parametrize(
    "requirements, match",
    [
        (["numpy>>=1"], "'numpy>>=1' is not a pip requirement"),
        (["numpy pandas"], "not a pip requirement"),
        ([""], "not a pip requirement"),
        ([None], "None is not a pip requirement string"),
        (123, "use a list of pip requirement strings"),
        ({"numpy": "1.26"}, "use a list of pip requirement strings"),
    ],
)
def test_bad_requirement_is_a_spec_error_with_an_example(requirements, match):
    with pytest.raises(SpecError) as info:
        decorate(requirements=requirements)
    assert "'requirements'" in str(info.value)
    assert match in str(info.value)


def test_default_parameters_are_plain_json():
    fn = decorate(defaults={"lr": 0.1, "layers": (64, 32)})
    assert fn.spec.defaults == {"lr": 0.1, "layers": [64, 32]}  # as every other process will see them
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"when": object()}, {"s": {1, 2}}):
        with pytest.raises(SpecError, match="'defaults'.*plain JSON data"):
            decorate(defaults=bad)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "soon"])
def test_bad_timeout(timeout):
    with pytest.raises(SpecError, match="'timeout'"):
        decorate(timeout=timeout)


def test_bad_retries():
    with pytest.raises(SpecError, match="'retries'"):
        decorate(retries=-1)
    with pytest.raises(SpecError, match="'retries'"):
        decorate(retries=1.5)


# -- unknown fields ----------------------------------------------------------------------------------


def test_unknown_field_is_refused_with_a_suggestion_and_the_valid_list():
    with pytest.raises(SpecError) as info:
        decorate(cpus=2)
    message = str(info.value)
    assert "unknown spec field 'cpus'" in message and "did you mean 'cpu'?" in message
    for field in ("requirements", "replicas", "cpu", "spot", "description"):
        assert field in message
    with pytest.raises(SpecError, match="did you mean 'replicas'"):
        decorate(replica=(0, 2))


def test_unknown_nested_field_names_its_path():
    with pytest.raises(SpecError, match="'resources.requests.cpus'.*unknown field"):
        decorate(resources={"requests": {"cpus": "1"}})
    with pytest.raises(SpecError, match="'replicas.maximum'"):
        decorate(replicas={"min": 0, "maximum": 3})


# -- canonical form and hashing module -----------------------------------------------------------------

FULL = dict(
    requirements=["numpy>=1.26"],
    image="python:3.11-slim",
    env={"A": "1", "S": {"secret": "s", "key": "k"}},
    resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi", "gpu": 1}},
    replicas=(0, 4),
    placement={
        "node_selector": {"pool": "a"},
        "affinity": {"podAntiAffinity": {}},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "spot": "require",
        "priority_class": "batch",
    },
    volumes=VOLUMES,
    backend="dask",
    timeout=30,
    retries=2,
    defaults={"lr": 0.1},
)


def test_every_spec_field_survives_a_json_round_trip():
    original = spec(**FULL)
    document = json.loads(json.dumps(spec_to_dict(original)))
    assert set(document) == set(SPEC_FIELDS)
    assert build_spec(document) == original
    assert canonical_spec(build_spec(document)) == canonical_spec(original)


def test_canonical_spec_omits_defaults_and_normalises_quantities():
    assert canonical_spec(spec()) == {}
    assert canonical_spec(spec(replicas=None, retries=0, env={}, timeout=None)) == {}
    assert canonical_spec(spec(resources={"requests": {"cpu": "1000m"}})) == canonical_spec(
        spec(resources={"requests": {"cpu": 1}})
    )


def test_build_spec_over_a_base_changes_only_what_is_given():
    base = spec(**FULL)
    changed = build_spec({"retries": 5}, base=base)
    assert changed.retries == 5 and changed.volumes == base.volumes and changed.env == base.env


def test_hash_is_sha256_hex_of_canonical_json():
    value = hashing.function_hash("h", "0" * 64, {"b": 1, "a": [1, 2]})
    assert len(value) == 64 and int(value, 16) >= 0
    assert value == hashing.function_hash("h", "0" * 64, {"a": [1, 2], "b": 1})
    assert value != hashing.function_hash("g", "0" * 64, {"a": [1, 2], "b": 1})
    assert hashing.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    with pytest.raises(ValueError):
        hashing.canonical_json({"x": float("nan")})


def test_hashing_docstring_names_what_is_and_is_not_hashed():
    doc = hashing.__doc__
    hashed, not_hashed = doc.split("Not hashed:")
    for field in [f for f in SPEC_FIELDS if f != "defaults"] + ["handler", "code", "default parameters"]:
        assert field in hashed, field
    for field in ("name", "description", "labels", "tags", "timestamps"):
        assert field in not_hashed, field
