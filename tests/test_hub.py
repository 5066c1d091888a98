"""The function hub (issue 17): references, verified imports, sources, the cache and publishing.

Hubs are folders each test builds with ``shoal.hub.publish``, read directly and served over HTTP
from the test itself (loopback, ``http.server`` in a thread). No mocks: every refusal is checked
for its message and for leaving nothing cached or saved.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import yaml

import shoal
from shoal.errors import (
    HubCompatibilityError,
    HubIndexError,
    HubNotFoundError,
    HubReferenceError,
    HubSourceError,
    HubUnreachableError,
    HubVerificationError,
    ProjectError,
)
from shoal.hub import HubRef, list_functions, parse_ref, publish

GREET_V1 = """\
def greet(name: str = "world") -> dict:
    return {"greeting": f"hello {name}"}
"""
GREET_V2 = """\
def greet(name: str = "world") -> dict:
    return {"greeting": f"hi {name}"}
"""
STEPS = """\
def produce(ctx, n: int = 3):
    ctx.log_artifact("values", list(range(n)))


def consume(values: list) -> dict:
    return {"total": sum(values)}
"""


# -- building hubs --------------------------------------------------------------------------------
def make_function(folder: Path, text: str, handler: str, **options) -> shoal.Function:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{handler}.py"
    path.write_text(text)
    return shoal.Function.from_file(path, handler, **options)


@pytest.fixture
def hub(tmp_path) -> Path:
    """A hub folder: greet 1.0.0 and 2.0.0 (latest), produce and consume 1.0.0."""
    root = tmp_path / "hub"
    src = tmp_path / "src"
    publish(make_function(src / "v1", GREET_V1, "greet", description="say hello"), str(root), "1.0.0")
    publish(make_function(src / "v2", GREET_V2, "greet", description="say hi"), str(root), "2.0.0")
    for handler in ("produce", "consume"):
        publish(make_function(src / "steps", STEPS, handler), str(root), "1.0.0")
    return root


def make_project(folder: Path, monkeypatch, hubs: list[dict] | None = None, functions: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    config: dict = {"name": "hubtest"}
    if hubs is not None:
        config["hubs"] = hubs
    if functions is not None:
        config["functions"] = functions
    (folder / "shoal.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(folder)
    monkeypatch.delenv("SHOAL_DATABASE", raising=False)
    monkeypatch.delenv("SHOAL_ARTIFACTS", raising=False)
    return shoal.Project(folder)


@pytest.fixture
def team(tmp_path, hub, monkeypatch):
    """A project whose one extra source, ``team``, is the hub folder."""
    project = make_project(tmp_path / "proj", monkeypatch, [{"name": "team", "url": str(hub)}])
    yield project
    project.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def served(hub):
    """The hub folder served over HTTP on loopback; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(hub))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def web(tmp_path, served, monkeypatch):
    url, _ = served
    project = make_project(tmp_path / "proj", monkeypatch, [{"name": "team", "url": url}])
    yield project
    project.close()


def nothing_kept(project: shoal.Project) -> None:
    assert list(project.home.glob("hub/*.json")) == []
    assert project.functions.list() == []


def index_of(hub: Path) -> dict:
    return json.loads((hub / "index.json").read_text())


# -- references -----------------------------------------------------------------------------------
def test_references_parse_into_their_parts():
    assert parse_ref("hub://describe") == HubRef("describe")
    assert parse_ref("hub://team/train-sklearn:1.2.0@ABCDEF0123") == HubRef(
        "train-sklearn", "team", "1.2.0", "abcdef0123"
    )
    assert str(parse_ref("hub://team/x:1.0@" + "a" * 64)) == "hub://team/x:1.0@" + "a" * 64
    assert parse_ref("describe:1.0.0", scheme_optional=True) == HubRef("describe", version="1.0.0")


@pytest.mark.parametrize(
    "text, words",
    [
        ("describe", "not a hub reference"),
        ("hub://", "invalid hub reference"),
        ("hub://a/b/c", "invalid hub reference"),
        ("hub://describe:not a version", "invalid version"),
        ("hub://describe@xyz", "invalid @hash"),
        ("hub://describe@abc", "at least 8"),
    ],
)
def test_bad_references_say_what_is_wrong(text, words):
    with pytest.raises(HubReferenceError, match=words):
        parse_ref(text)


# -- importing ------------------------------------------------------------------------------------
def test_import_resolves_latest_records_the_reference_and_runs(team, hub):
    fn = shoal.Function.from_hub("hub://team/greet", project=team)
    entry = index_of(hub)["functions"]["greet"]["versions"]["2.0.0"]
    assert fn.hash == entry["hash"]
    assert fn.labels["hub"] == f"hub://team/greet:2.0.0@{entry['hash']}"
    run = fn.run({"name": "hub"}, project=team)
    assert run.state == "completed" and run.results == {"greeting": "hi hub"}
    assert run.labels["hub"] == fn.labels["hub"]  # on the run itself too (runs show, filters)
    assert team.functions.record(f"greet@{fn.hash}").labels["hub"] == fn.labels["hub"]

    older = team.get_function("hub://greet:1.0")  # no prefix: only "team" has greet; 1.0 is 1.0.0
    assert older.labels["hub"].startswith("hub://team/greet:1.0.0@")
    assert older(name="x") == {"greeting": "hello x"}


def test_import_over_http_is_verified_the_same_way(web, hub):
    fn = shoal.Function.from_hub("hub://team/greet:1.0.0", project=web)
    assert fn.hash == index_of(hub)["functions"]["greet"]["versions"]["1.0.0"]["hash"]
    assert fn.run({"name": "web"}, project=web).results == {"greeting": "hello web"}


def test_yaml_functions_take_hub_references_with_spec_fields_on_top(tmp_path, hub, monkeypatch):
    project = make_project(
        tmp_path / "proj",
        monkeypatch,
        [{"name": "team", "url": str(hub)}],
        {"hello": "hub://team/greet:1.0.0", "tuned": {"hub": "hub://greet", "env": {"MODE": "fast"}}},
    )
    try:
        hello = project.get_function("hello")
        assert hello.name == "hello" and hello.labels["hub"].startswith("hub://team/greet:1.0.0@")
        tuned = project.get_function("tuned")
        assert tuned.spec.env == {"MODE": "fast"} and tuned.labels["hub"].startswith("hub://team/greet:2.0.0@")
        assert project.functions.get("hello")(name="y") == {"greeting": "hello y"}
    finally:
        project.close()


def test_hub_functions_are_pipeline_steps(team):
    (team.root / "flow.py").write_text(
        "import shoal\n"
        'produce = shoal.Function.from_hub("hub://team/produce")\n'
        'consume = shoal.Function.from_hub("hub://team/consume:1.0.0")\n\n\n'
        "@shoal.pipeline\n"
        "def flow(n: int = 4):\n"
        '    made = produce.submit({"n": n})\n'
        '    return consume.submit(inputs={"values": made.output("values")})\n'
    )
    flow = shoal.Function.from_file(team.root / "flow.py", "flow")
    run = flow.run({"n": 5}, project=team)
    assert run.state == "completed", run.error
    steps = team.runs.list(parent=run.uid)
    totals = [r.results.get("total") for r in steps if r.results and "total" in r.results]
    assert totals == [10]


# -- refusals: each one clear error, nothing cached or saved ---------------------------------------
@pytest.mark.parametrize("over_http", [False, True], ids=["folder", "http"])
def test_a_tampered_file_is_refused(request, hub, over_http):
    project = request.getfixturevalue("web" if over_http else "team")
    source = hub / "functions/greet/2.0.0/greet.py"
    source.write_text(source.read_text().replace("hi", "pwned"))
    with pytest.raises(HubVerificationError, match=r"greet\.py differs from the hub index"):
        shoal.Function.from_hub("hub://team/greet", project=project)
    nothing_kept(project)


def test_a_tampered_file_with_a_matching_index_entry_is_refused_by_its_hash(team, hub):
    """Fixing sha256 and size in the index is not enough: the rebuilt function's hash still differs."""
    source = hub / "functions/greet/2.0.0/greet.py"
    source.write_text(source.read_text().replace("hi", "pwned"))
    index = index_of(hub)
    from shoal.hub.documents import digest

    data = source.read_bytes()
    index["functions"]["greet"]["versions"]["2.0.0"]["files"]["greet.py"] = {"sha256": digest(data), "size": len(data)}
    (hub / "index.json").write_text(json.dumps(index))
    with pytest.raises(HubVerificationError, match="hashes to"):
        shoal.Function.from_hub("hub://team/greet", project=team)
    nothing_kept(team)


@pytest.mark.parametrize("field, value", [("sha256", "0" * 64), ("size", 1), ("hash", "f" * 64)])
def test_a_tampered_index_is_refused(web, hub, field, value):
    index = index_of(hub)
    index["functions"]["greet"]["versions"]["2.0.0"][field] = value
    (hub / "index.json").write_text(json.dumps(index))
    with pytest.raises(HubVerificationError, match="nothing was imported"):
        shoal.Function.from_hub("hub://team/greet", project=web)
    nothing_kept(web)


def test_a_wrong_hash_pin_is_refused(team):
    with pytest.raises(HubVerificationError, match="not the pinned 0123456789ab"):
        shoal.Function.from_hub("hub://team/greet:1.0.0@0123456789ab", project=team)
    nothing_kept(team)


def test_a_missing_version_names_the_versions_there_are(web):
    with pytest.raises(HubNotFoundError, match=r"no version '3\.0\.0' of 'greet' \(it has: 1\.0\.0, 2\.0\.0\)"):
        shoal.Function.from_hub("hub://team/greet:3.0.0", project=web)
    with pytest.raises(HubNotFoundError, match="no function 'nope'"):
        shoal.Function.from_hub("hub://team/nope", project=web)
    nothing_kept(web)


def test_an_unknown_source_names_the_known_ones(team):
    with pytest.raises(HubSourceError, match="unknown hub source 'other'; known sources: team, shoal"):
        shoal.Function.from_hub("hub://other/greet", project=team)
    nothing_kept(team)


def test_an_unreachable_hub_fails(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    project = make_project(tmp_path / "proj", monkeypatch, [{"name": "gone", "url": f"http://127.0.0.1:{port}/hub"}])
    try:
        with pytest.raises(HubUnreachableError, match="hub 'gone' is unreachable"):
            shoal.Function.from_hub("hub://gone/greet", project=project)
        nothing_kept(project)
    finally:
        project.close()


def test_a_hub_that_never_answers_fails_in_bounded_time(tmp_path, monkeypatch):
    """A listening socket that never accepts: the read gives up after the source's timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        hubs = [{"name": "slow", "url": f"http://127.0.0.1:{port}/hub", "timeout": 1}]
        project = make_project(tmp_path / "proj", monkeypatch, hubs)
        try:
            with pytest.raises(HubUnreachableError, match="slow"):
                shoal.Function.from_hub("hub://slow/greet", project=project)
            nothing_kept(project)
        finally:
            project.close()


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not valid JSON"),
        ('{"schema": 2, "functions": {}}', "schema 2; this shoal reads schema 1"),
        ('{"schema": 1, "functions": {"greet": {"latest": "1.0.0"}}}', "functions.greet.versions"),
        ('{"schema": 1, "functions": {"greet": {"latest": "9.0", "versions": {}}}}', "latest of 'greet' is '9.0'"),
        (
            '{"schema": 1, "functions": {"g": {"latest": "1", "versions": {"1": {"hash": "x", "path": "a",'
            ' "sha256": "x", "size": 1}}}}}',
            "functions.g.versions.1.hash",
        ),
    ],
)
def test_a_malformed_index_is_one_clear_error(web, hub, text, words):
    (hub / "index.json").write_text(text)
    with pytest.raises(HubIndexError, match=words):
        shoal.Function.from_hub("hub://team/greet", project=web)
    nothing_kept(web)


def test_an_incompatible_function_names_both_versions(team, tmp_path):
    fn = make_function(tmp_path / "future", GREET_V1, "greet")
    publish(fn, str(tmp_path / "hub"), "9.0.0", requires_shoal=">=99")
    with pytest.raises(HubCompatibilityError, match=rf"requires shoal >=99, but this is shoal {shoal.__version__}"):
        shoal.Function.from_hub("hub://team/greet:9.0.0", project=team)
    nothing_kept(team)


def test_a_name_in_two_sources_needs_a_prefix(tmp_path, hub, monkeypatch):
    other = tmp_path / "other"
    publish(make_function(tmp_path / "o", GREET_V1, "greet"), str(other), "5.0.0")
    hubs = [{"name": "team", "url": str(hub)}, {"name": "other", "url": str(other)}]
    project = make_project(tmp_path / "proj", monkeypatch, hubs)
    try:
        with pytest.raises(HubSourceError, match="'team' and 'other'.*hub://team/greet or hub://other/greet"):
            shoal.Function.from_hub("hub://greet", project=project)
        assert (
            shoal.Function.from_hub("hub://other/greet", project=project)
            .labels["hub"]
            .startswith("hub://other/greet:5.0.0@")
        )
    finally:
        project.close()


def test_credentials_in_hub_options_are_refused(tmp_path, monkeypatch):
    (tmp_path / "shoal.yaml").write_text(
        yaml.safe_dump({"hubs": [{"name": "s3hub", "url": "s3://bucket/hub", "options": {"secret": "abc"}}]})
    )
    with pytest.raises(HubSourceError, match="looks like a credential; move it to secrets"):
        shoal.Project(tmp_path)
    (tmp_path / "shoal.yaml").write_text(yaml.safe_dump({"hubs": {"name": "x"}}))
    with pytest.raises(HubSourceError, match="must be a list"):
        shoal.Project(tmp_path)
    (tmp_path / "shoal.yaml").write_text(yaml.safe_dump({"functions": {"f": {"hub": "describe"}}}))
    with pytest.raises(ProjectError, match="'hub' must be a reference like hub://"):
        shoal.Project(tmp_path).get_function("f")


class _TokenHandler(_QuietHandler):
    """Answers only requests that carry the hub's token."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.send_error(401, "token required")
            return
        super().do_GET()


def test_credentials_come_from_secret_references(tmp_path, hub, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_TokenHandler, directory=str(hub)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        secrets = {"headers.Authorization": {"secret": "hubtoken", "key": "value"}}
        project = make_project(tmp_path / "proj", monkeypatch, [{"name": "private", "url": url, "secrets": secrets}])
        try:
            with pytest.raises(
                shoal.errors.SecretError, match="hub source 'private'.*shoal secrets set hubtoken value"
            ):
                shoal.Function.from_hub("hub://private/greet", project=project)
            monkeypatch.setenv("SHOAL_SECRET_HUBTOKEN_VALUE", "Bearer wrong")
            with pytest.raises(HubUnreachableError, match="401"):
                shoal.Function.from_hub("hub://private/greet", project=project)
            nothing_kept(project)
            monkeypatch.setenv("SHOAL_SECRET_HUBTOKEN_VALUE", "Bearer s3cret")
            fn = shoal.Function.from_hub("hub://private/greet", project=project)
            assert fn(name="t") == {"greeting": "hi t"}
            assert "s3cret" not in (project.root / "shoal.yaml").read_text()
        finally:
            project.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- the cache ------------------------------------------------------------------------------------
def test_a_pinned_import_works_offline_from_the_cache(web, served):
    url, server = served
    first = shoal.Function.from_hub("hub://team/greet:1.0.0", project=web)
    pinned = f"hub://team/greet:1.0.0@{first.hash}"
    server.shutdown()  # the hub is gone
    server.server_close()
    again = shoal.Function.from_hub(pinned, project=web)
    assert again.hash == first.hash and again.labels == first.labels
    assert again(name="offline") == {"greeting": "hello offline"}
    with pytest.raises(HubUnreachableError):  # without a pin the index is needed
        shoal.Function.from_hub("hub://team/greet:1.0.0", project=web)


def test_a_changed_upstream_cannot_change_a_pinned_import(team, hub, tmp_path, monkeypatch):
    first = shoal.Function.from_hub("hub://team/greet:2.0.0", project=team)
    for name in ("index.json", "functions"):  # the upstream is replaced wholesale, index and all
        target = hub / name
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink()
    publish(make_function(tmp_path / "evil", GREET_V1.replace("hello", "evil"), "greet"), str(hub), "2.0.0")
    pinned = shoal.Function.from_hub(f"hub://team/greet:2.0.0@{first.hash[:16]}", project=team)
    assert pinned.hash == first.hash and pinned(name="x") == {"greeting": "hi x"}
    fresh = make_project(tmp_path / "fresh", monkeypatch, [{"name": "team", "url": str(hub)}])
    try:
        with pytest.raises(HubVerificationError, match="not the pinned"):  # a fresh project sees the change
            shoal.Function.from_hub(f"hub://team/greet:2.0.0@{first.hash}", project=fresh)
        nothing_kept(fresh)
    finally:
        fresh.close()


# -- publishing -----------------------------------------------------------------------------------
def test_publish_is_idempotent_and_refuses_other_content_for_a_version(tmp_path, hub):
    before = (hub / "index.json").read_bytes()
    same = make_function(tmp_path / "again", GREET_V1, "greet", description="say hello")
    assert publish(same, str(hub), "1.0.0").hash == same.hash  # the same content: a no-op
    assert (hub / "index.json").read_bytes() == before
    changed = make_function(tmp_path / "changed", GREET_V1.replace("hello", "howdy"), "greet")
    with pytest.raises(shoal.errors.HubPublishError, match="already published .* publish it as a new version"):
        publish(changed, str(hub), "1.0.0")
    assert (hub / "index.json").read_bytes() == before
    assert "howdy" not in (hub / "functions/greet/1.0.0/greet.py").read_text()
    assert not list(hub.rglob("*.tmp-*"))
    with pytest.raises(shoal.errors.HubPublishError, match="not a version number"):
        publish(changed, str(hub), "one")


def test_publish_keeps_latest_on_the_highest_version(tmp_path, hub, team):
    publish(make_function(tmp_path / "patch", GREET_V1.replace("hello", "hey"), "greet"), str(hub), "1.0.1")
    assert index_of(hub)["functions"]["greet"]["latest"] == "2.0.0"
    rows = {(r.source, r.name): r for r in list_functions(team, "team")}
    assert rows[("team", "greet")].versions == ("1.0.0", "1.0.1", "2.0.0")
    assert rows[("team", "greet")].description == "say hi"


def test_rebuilt_index_of_a_hand_written_hub_verifies(tmp_path, monkeypatch):
    """The shipped catalog's way: function.yaml naming its source file, index rebuilt from the folders."""
    from shoal.hub.rebuild import rebuild

    root = tmp_path / "handmade"
    folder = root / "functions/shout/0.1.0"
    folder.mkdir(parents=True)
    (folder / "shout.py").write_text("def shout(text: str = 'hi'):  # the handler\n    return text.upper()\n")
    (folder / "function.yaml").write_text(
        "kind: function\nname: shout\nhandler: shout\ncode: {file: shout.py}\nmetadata: {description: loud text}\n"
    )
    index = rebuild(root)
    assert index.functions["shout"].latest == "0.1.0"
    project = make_project(tmp_path / "p2", monkeypatch, [{"name": "hand", "url": str(root)}])
    try:
        fn = shoal.Function.from_hub("hub://hand/shout", project=project)
        assert fn.hash == index.functions["shout"].versions["0.1.0"].hash and fn(text="a") == "A"
    finally:
        project.close()


# -- the hub shipped in shoal ------------------------------------------------------------------------
SHIPPED = ("describe", "split", "train-sklearn", "evaluate", "predict", "tune-sklearn")


def test_the_shipped_hub_lists_and_verifies_its_functions(project):
    rows = {r.name: r for r in list_functions(project, "shoal")}
    assert set(SHIPPED) <= set(rows)
    for name in SHIPPED:  # every byte and hash as the index says (rebuild the index after editing them)
        fn = shoal.Function.from_hub(name, project=project)
        assert fn.hash == rows[name].hash
        assert fn.labels["hub"] == f"hub://shoal/{name}:{rows[name].latest}@{fn.hash}"
