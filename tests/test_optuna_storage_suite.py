"""Optuna's own storage tests, run on the storages shoal uses.

The ``tests/storages_tests/`` of the installed Optuna's source distribution (fetched from PyPI with
``pip download`` once, unpacked into a cache folder) run in a pytest subprocess with
``optuna_storage_plugin``: the journal tests with shoal's ``QueuedJournalLock`` in place of
Optuna's locks, and ``test_storages.py`` on each storage ``shoal.tuning.storage`` resolves (journal
file, SQLite, PostgreSQL, Redis), built as a search builds them. Skipped, with the reason, only when
the source distribution cannot be fetched (or a server is not running).

Cache: ``$SHOAL_OPTUNA_TESTS`` or ``~/.cache/shoal/optuna-tests/<version>``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree

import optuna
import pytest

from conftest import _PG_REASON, PG_ADMIN_URL, REDIS_URL, redis_available

TESTS = pathlib.Path(__file__).parent
CACHE = pathlib.Path(
    os.environ.get("SHOAL_OPTUNA_TESTS")
    or pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "shoal" / "optuna-tests"
)
#: What is taken from the source distribution: the storage tests and the test package around them.
WANTED = ("tests/__init__.py", "tests/conftest.py", "tests/storages_tests/")


@pytest.fixture(scope="module")
def optuna_tests() -> pathlib.Path:
    """The folder holding Optuna's ``tests/`` for the installed version (fetched once)."""
    import importlib.util

    if importlib.util.find_spec("fakeredis") is None or importlib.util.find_spec("lupa") is None:
        pytest.fail("Optuna's storage tests import fakeredis (with Lua): pip install -e '.[dev]'")
    root = CACHE / optuna.__version__
    if (root / "tests" / "storages_tests" / "test_storages.py").is_file():
        return root
    with tempfile.TemporaryDirectory(prefix="shoal-optuna-sdist-") as download:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             "--disable-pip-version-check", "-q", "-d", download, f"optuna=={optuna.__version__}"],
            capture_output=True, text=True, timeout=600,
        )
        archives = list(pathlib.Path(download).glob("optuna-*.tar.gz"))
        if fetched.returncode != 0 or not archives:
            lines = [line.strip() for line in fetched.stderr.splitlines() if line.strip().startswith("ERROR")]
            why = lines[0] if lines else f"pip exited {fetched.returncode}"
            pytest.skip(f"cannot fetch the optuna {optuna.__version__} source distribution from PyPI: {why}")
        unpacked = pathlib.Path(tempfile.mkdtemp(prefix="optuna-tests-", dir=_made_dir(CACHE)))
        with tarfile.open(archives[0]) as archive:
            members = []
            for member in archive.getmembers():
                inner = member.name.split("/", 1)[1] if "/" in member.name else ""
                if inner.startswith(WANTED):
                    member.name = inner
                    members.append(member)
            archive.extractall(unpacked, members=members, filter="data")
    try:
        os.replace(unpacked, root)  # whole or not at all; a concurrent fetch may have won
    except OSError:
        shutil.rmtree(unpacked, ignore_errors=True)
    return root


def _made_dir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_suite(root: pathlib.Path, tmp_path: pathlib.Path, paths: list[str], storages: str = "") -> tuple[dict, dict]:
    """Run Optuna's ``paths`` with the plugin; (outcome by test id, the plugin's report)."""
    config = tmp_path / "pytest.ini"
    config.write_text("[pytest]\n")  # none of this repository's pytest settings
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "SHOAL_SUITE_STORAGES": storages,
        "SHOAL_SUITE_POSTGRES": PG_ADMIN_URL,
        "SHOAL_SUITE_REDIS": REDIS_URL,
        "SHOAL_SUITE_REPORT": str(report),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(config), "--rootdir", str(root), "-p", "optuna_storage_plugin",
         "-p", "no:cacheprovider", "-q", "-W", "ignore::optuna.exceptions.ExperimentalWarning",
         f"--junitxml={junit}", *paths],
        cwd=root, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    outcomes = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = "failed" if kinds & {"failure", "error"} else ("skipped" if "skipped" in kinds else "passed")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes, json.loads(report.read_text())


@pytest.mark.timeout(900)
def test_optuna_journal_tests_pass_with_shoals_lock(optuna_tests, tmp_path):
    outcomes, report = run_suite(optuna_tests, tmp_path, ["tests/storages_tests/journal_tests"])
    assert report["shoal_locks"] > 0  # the lock was swapped in
    passed = [name for name, outcome in outcomes.items() if outcome == "passed"]
    assert "failed" not in outcomes.values() and len(passed) >= 30
    # the cases the unpicklable lock broke: appends from other processes
    processes = [n for n in passed if "test_concurrent_append_logs_for_multi_processes[file" in n]
    assert len(processes) == 4, outcomes


@pytest.mark.timeout(900)
@pytest.mark.parametrize("storage", ["journal", "sqlite", "postgresql", "redis"])
def test_optuna_storage_tests_pass_on_every_storage_shoal_resolves(optuna_tests, tmp_path, storage):
    reason = _PG_REASON if storage == "postgresql" else redis_available() if storage == "redis" else None
    if reason:
        pytest.skip(reason)
    outcomes, _ = run_suite(optuna_tests, tmp_path, ["tests/storages_tests/test_storages.py"], storage)
    ours = {name: outcome for name, outcome in outcomes.items() if f"[shoal-{storage}" in name}
    assert "failed" not in outcomes.values()
    assert len(ours) >= 55 and list(ours.values()).count("passed") >= len(ours) - 1, ours  # Redis skips pickling
