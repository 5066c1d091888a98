"""``shoal hub list | show | import | publish`` and ``shoal run hub://...``, through the real CLI
entry point (``shoal.cli.main.main``: one-line errors, exit codes) against hub folders the tests build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import shoal
from shoal.cli import hub as hub_cli
from shoal.cli import main as cli

GREET = '''\
def greet(name: str = "world") -> dict:
    """Say hello."""
    return {"greeting": f"hello {name}"}
'''


@pytest.fixture(scope="module", autouse=True)
def _hub_commands():
    """``shoal hub`` is registered by main.py; register it here too until main.py does."""
    if not any(group.name == "hub" for group in cli.app.registered_groups):
        hub_cli.register(cli.app)


def shoal_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``shoal ARGS`` in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """A project folder with greet.py and a ``team`` hub source at ./hub (empty until published)."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "greet.py").write_text(GREET)
    (project / "shoal.yaml").write_text(yaml.safe_dump({"name": "hubcli", "hubs": [{"name": "team", "url": "hub"}]}))
    monkeypatch.chdir(project)
    monkeypatch.delenv("SHOAL_DATABASE", raising=False)
    monkeypatch.delenv("SHOAL_ARTIFACTS", raising=False)
    return project


def test_publish_list_show_import_and_run(capsys, folder):
    code, out, err = shoal_cli(capsys, "hub", "publish", "greet.py:greet", "--hub", "hub", "--version", "1.2.0")
    assert code == 0, err
    assert out.startswith("published greet:1.2.0 (")
    index = json.loads((folder / "hub/index.json").read_text())
    digest = index["functions"]["greet"]["versions"]["1.2.0"]["hash"]

    code, out, err = shoal_cli(capsys, "hub", "list", "--source", "team", "--json")
    assert code == 0, err
    assert json.loads(out) == [
        {
            "source": "team",
            "name": "greet",
            "latest": "1.2.0",
            "versions": ["1.2.0"],
            "hash": digest,
            "description": None,
        }
    ]

    code, out, err = shoal_cli(capsys, "hub", "show", "team/greet")
    assert code == 0, err
    assert f"hub reference  hub://team/greet:1.2.0@{digest}" in out
    assert f"hash           {digest}" in out
    assert 'return {"greeting": f"hello {name}"}' in out  # the code, printed before anyone runs it

    code, out, err = shoal_cli(capsys, "hub", "import", "hub://team/greet:1.2.0", "--tag", "stable")
    assert code == 0, err
    assert f"saved greet@{digest[:12]} (tag stable) from hub://team/greet:1.2.0@" in out
    stored = shoal.Project(folder).functions
    assert stored.record("greet:stable").hash == digest

    code, out, err = shoal_cli(capsys, "run", f"hub://team/greet@{digest[:12]}", "--param", "name=cli", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["state"] == "completed" and run["results"] == {"greeting": "hello cli"}


def test_publish_conflict_and_bad_input_exit_2_with_one_line(capsys, folder):
    assert shoal_cli(capsys, "hub", "publish", "greet.py:greet", "--hub", "hub", "--version", "1.0.0")[0] == 0
    (folder / "greet.py").write_text(GREET.replace("hello", "howdy"))
    before = (folder / "hub/index.json").read_bytes()
    code, out, err = shoal_cli(capsys, "hub", "publish", "greet.py:greet", "--hub", "hub", "--version", "1.0.0")
    assert code == 2
    assert "error: greet:1.0.0 is already published" in err and len(err.strip().splitlines()) == 1
    assert (folder / "hub/index.json").read_bytes() == before

    code, out, err = shoal_cli(capsys, "hub", "show", "hub://nowhere/greet")
    assert code == 2 and "unknown hub source 'nowhere'; known sources: team, shoal" in err

    code, out, err = shoal_cli(capsys, "hub", "show", "hub://team/greet@zz")
    assert code == 2 and "invalid @hash" in err


def test_a_tampered_hub_is_refused_and_nothing_is_imported(capsys, folder):
    assert shoal_cli(capsys, "hub", "publish", "greet.py:greet", "--hub", "hub", "--version", "1.0.0")[0] == 0
    published = folder / "hub/functions/greet/1.0.0/greet.py"
    published.write_text(published.read_text().replace("hello", "pwned"))
    code, out, err = shoal_cli(capsys, "hub", "import", "team/greet")
    assert code == 1
    assert "greet.py differs from the hub index" in err and "nothing was imported" in err
    assert shoal.Project(folder).functions.list() == []
    assert list(folder.glob(".shoal/hub/*.json")) == []
