"""``shoal serve``, ``shoal deploy`` and ``shoal services``, run for real: ``shoal serve`` in a child
process of its own session (as a terminal runs a foreground job), real HTTP requests to the server
it starts, Ctrl-C (SIGINT to the process group) or ``shoal services delete`` from another process,
and no process left behind. The records are read back through the CLI's JSON output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import alive, descendants, free_port, kill_by_pid, refused

from shoal.testing import wait_for

HANDLERS = """\
def predict(x: list[float], scale: float = 1.0):
    return {"y": [v * scale for v in x]}


def boom(n: int = 0):
    raise RuntimeError(f"kaboom {n}")
"""
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def environment() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    environ["COLUMNS"] = "200"
    return environ


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with _opener.open(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


class Serving:
    """``shoal serve`` in a child process of its own session, its output in files."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.out, self.err = folder / "serve.out", folder / "serve.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "serve", *args],
                cwd=folder,
                env=environment(),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.children: list[int] = []

    def url(self) -> str:
        """The URL it announced, once it serves (fails with its output if it exits first)."""
        wait_for(lambda: "http://" in self.out.read_text() or self.process.poll() is not None, 120, "serve announces")
        assert self.process.poll() is None, self.out.read_text() + self.err.read_text()
        line = next(line for line in self.out.read_text().splitlines() if "http://" in line)
        self.children = descendants(self.process.pid)
        assert self.children, "the server process"
        return line[line.index("http://") :].split()[0]

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the process group, as a terminal sends it; the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(60)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        kill_by_pid(self.children)


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


def listed(folder: Path, *extra: str) -> dict[str, dict]:
    proc = cli(folder, "services", "list", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_serve_answers_then_ctrl_c_deletes_it_and_leaves_no_process(folder):
    port = free_port()
    serving = Serving(folder, "handlers.py:predict", "--port", str(port))
    try:
        url = serving.url()
        assert url == f"http://127.0.0.1:{port}/predict"
        assert post(url, {"x": [1, 2], "scale": "3"}) == (200, {"y": [3.0, 6.0]})
        status, body = post(url, {"x": "nope"})
        assert status == 422 and body["field"] == "x", body

        row = listed(folder)["predict"]
        assert row["state"] == "running" and row["backend"] == "local" and row["url"] == url
        assert (row["min_replicas"], row["max_replicas"]) == (1, 1)

        def shown() -> dict:
            proc = cli(folder, "services", "show", "predict", "--json")
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)

        wait_for(lambda: sum(m["requests"] for m in shown()["metrics"]) >= 2, 60, "request metrics recorded")
        shown_now = shown()
        assert shown_now["status"]["state"] == "RUNNING" and shown_now["status"]["replicas"] == 1
        assert sum(m["errors"] for m in shown_now["metrics"]) >= 1
        assert any(e["status"] == 422 and e["type"] == "ParamError" for e in shown_now["errors"]), shown_now["errors"]
        text = cli(folder, "services", "show", "predict")
        assert text.returncode == 0 and "ParamError" in text.stdout and url in text.stdout, text.stdout

        assert serving.interrupt() == 0, serving.err.read_text()
        wait_for(lambda: not any(alive(pid) for pid in serving.children), 60, "no server process left")
        assert refused(port)
        assert "predict" not in listed(folder)
        assert listed(folder, "--all")["predict"]["state"] == "deleted"
    finally:
        serving.close()


def test_services_delete_from_another_process_ends_the_server(folder):
    port = free_port()
    serving = Serving(folder, "handlers.py:boom", "--port", str(port), "--name", "failing")
    try:
        url = serving.url()
        status, body = post(url, {"n": 7})
        assert status == 500 and body["error"] == "RuntimeError" and "kaboom 7" in body["message"], body
        done = cli(folder, "services", "delete", "failing")
        assert done.returncode == 0 and "deleted service failing" in done.stdout, done.stderr
        wait_for(lambda: serving.process.poll() is not None, 60, "shoal serve ends when its service is deleted")
        wait_for(lambda: not any(alive(pid) for pid in serving.children), 60, "no server process left")
        assert refused(port)
        assert listed(folder, "--all")["failing"]["state"] == "deleted"
        again = cli(folder, "services", "delete", "failing")
        assert again.returncode == 0, again.stderr  # deleting a deleted service changes nothing
    finally:
        serving.close()


def test_a_port_in_use_is_refused_at_serve(folder):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = cli(folder, "serve", "handlers.py:predict", "--port", str(port))
    one_line_error(proc, 2, f"127.0.0.1:{port}", "in use")
    assert "predict" not in listed(folder, "--all")  # nothing half-recorded


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("serve", "handlers.py:predict", "--backend", "dask"), ("--backend 'dask'", "local or ray")),
        (("serve", "handlers.py:predict", "--backend", "ray://head:10001"), ("shoal deploy",)),
        (("serve", "handlers.py:predict", "--scaling", "upscale_delay_s=1"), ("--scaling", "--backend ray")),
        (("serve", "handlers.py:predict", "--name", "no/slash"), ("no/slash",)),
        (("serve", "handlers.py:predict", "--backend", "ray", "--scaling", "warp=1"), ("unknown scaling knob 'warp'",)),
        (("deploy", "handlers.py:predict", "--backend", "local"), ("ray://", "shoal serve")),
        (("services", "show", "nothing"), ("nothing", "shoal services list")),
        (("services", "delete", "nothing"), ("nothing", "shoal services list")),
    ],
    ids=[
        "engine-cannot-serve",
        "cluster-needs-deploy",
        "scaling-on-local",
        "bad-name",
        "unknown-scaling-knob",
        "deploy-local",
        "show-unknown",
        "delete-unknown",
    ],
)
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(folder, args, fragments):
    proc = cli(folder, *args)
    assert proc.returncode != 0
    one_line_error(proc, proc.returncode, *fragments)
    assert listed(folder, "--all") == {}


def test_serve_help_names_the_options(folder):
    proc = cli(folder, "serve", "--help")
    assert proc.returncode == 0
    for option in ("--backend", "--port", "--host", "--name", "--scaling"):
        assert option in proc.stdout


def test_serve_on_ray_answers_then_ctrl_c_leaves_no_process(folder):
    pytest.importorskip("ray.serve")
    port = free_port()
    serving = Serving(folder, "handlers.py:predict", "--backend", "ray", "--port", str(port))
    try:
        url = serving.url()
        assert url == f"http://127.0.0.1:{port}/predict"
        assert post(url, {"x": [2], "scale": 2}) == (200, {"y": [4.0]})
        status, body = post(url, {"x": [1], "scale": "many"})
        assert status == 422 and body["field"] == "scale", body
        row = listed(folder)["predict"]
        assert row["state"] == "running" and row["backend"] == "ray"
        serving.children = descendants(serving.process.pid)  # Ray's processes, replicas included
        assert serving.interrupt() == 0, serving.err.read_text()[-3000:]
        wait_for(lambda: not any(alive(pid) for pid in serving.children), 120, "no Ray process left")
        assert refused(port)
        assert listed(folder, "--all")["predict"]["state"] == "deleted"
    finally:
        serving.close()


@pytest.fixture
def ray_cluster(tmp_path):
    """A running Ray cluster as `shoal deploy` meets one: `ray start --head --block` in a session of
    its own (token authentication off: the client side does not send Ray's token), stopped with
    SIGTERM (Ray's --block then stops its processes), then whatever is left killed by PID."""
    pytest.importorskip("ray.serve")
    client_port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="shoal-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={free_port()}",
        f"--ray-client-server-port={client_port}", "--num-cpus=2", "--include-dashboard=false",
        f"--temp-dir={temp}", "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0",
    ]  # fmt: skip
    with open(tmp_path / "ray.log", "w") as log:
        head = subprocess.Popen(
            command, env={**environment(), "RAY_AUTH_MODE": "disabled"}, stdout=log, stderr=log, start_new_session=True
        )
    processes: list[int] = []
    try:
        wait_for(lambda: not refused(client_port) or head.poll() is not None, 120, "Ray client server up")
        assert head.poll() is None, (tmp_path / "ray.log").read_text()[-3000:]
        yield f"ray://127.0.0.1:{client_port}"
        processes = descendants(head.pid)
    finally:
        processes = processes or descendants(head.pid)
        if head.poll() is None:
            head.terminate()
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(30)
        try:
            wait_for(lambda: not any(alive(pid) for pid in processes), 60, "the Ray cluster's processes end")
        finally:
            kill_by_pid(processes)
            shutil.rmtree(temp, ignore_errors=True)


def test_deploy_onto_a_running_ray_cluster_then_show_and_delete(folder, ray_cluster):
    port = free_port()
    done = cli(folder, "deploy", "handlers.py:predict", "--backend", ray_cluster, "--port", str(port), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout)
    url = f"http://127.0.0.1:{port}/predict"
    assert status["state"] == "RUNNING" and status["url"] == url and status["replicas"] == 1, status
    assert post(url, {"x": [1.5]}) == (200, {"y": [1.5]})  # served by the cluster after the CLI has exited

    row = listed(folder)["predict"]
    assert row["backend"] == ray_cluster and row["state"] == "running"
    shown = cli(folder, "services", "show", "predict", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout)["status"]["state"] == "RUNNING"

    gone = cli(folder, "services", "delete", "predict")
    assert gone.returncode == 0, gone.stderr[-3000:]
    status_code, _ = post_status(url)
    assert status_code == 404  # the route is gone; the proxy still answers on the cluster
    assert listed(folder, "--all")["predict"]["state"] == "deleted"


def post_status(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", headers={"content-type": "application/json"}, method="POST")
    try:
        with _opener.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
