"""Joining a ``ray://`` cluster when Ray's token authentication is on (Ray 2.60).

A head started with ``RAY_AUTH_MODE=token`` refuses a Ray Client that sends no token, and Ray's
client sends it only when ``RAY_AUTH_MODE=token`` is set ("ray client connection timeout"). shoal
uses the token when the mode is unset and a token exists, as ``ray.init`` does for a GCS address;
a head without authentication must still accept that client. Each case starts a real one-CPU head
with ``ray start --block`` and ends it by PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("ray")

from helpers import descendants, free_port, kill_by_pid  # noqa: E402

from shoal.testing import wait_for  # noqa: E402

CLIENT = """
import os, sys
import ray
import shoal.backends

backend = shoal.backends.get(sys.argv[1])
backend.start()
print("answer", ray.get(ray.remote(lambda: 6 * 7).remote()), "mode", os.environ.get("RAY_AUTH_MODE"))
backend.close()
"""


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def base_env(token_path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env["RAY_AUTH_TOKEN_PATH"] = token_path
    return env


@pytest.fixture
def folder():
    path = tempfile.mkdtemp(prefix="shoal-auth-", dir="/tmp")  # short: Ray's socket paths must fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("head_mode", ["token", "disabled"])
def test_client_joins_with_the_token_when_the_mode_is_unset(folder, head_mode):
    token_path = os.path.join(folder, "auth_token")
    with open(token_path, "w") as out:
        out.write(secrets.token_hex(32))
    gcs_port, client_port = free_port(), free_port()
    head_env = {**base_env(token_path), "RAY_AUTH_MODE": head_mode}
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    command = [
        ray_cli, "start", "--head", "--block", f"--port={gcs_port}", f"--ray-client-server-port={client_port}",
        "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={folder}/ray",
    ]  # fmt: skip
    head = subprocess.Popen(command, env=head_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: head.poll() is not None or listening(client_port), 120, "the Ray Client server listening")
        assert head.poll() is None, "ray start --head ended early"
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, f"ray://127.0.0.1:{client_port}"],
            env=base_env(token_path),  # RAY_AUTH_MODE unset, a token on this machine
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, client.stderr[-3000:]
        assert "answer 42 mode token" in client.stdout
        if head_mode == "token":  # another cluster's token: a quick error that says what to fix
            other = os.path.join(folder, "other_token")
            with open(other, "w") as out:
                out.write(secrets.token_hex(32))
            refused = subprocess.run(
                [sys.executable, "-c", CLIENT, f"ray://127.0.0.1:{client_port}"],
                env=base_env(other),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert refused.returncode != 0 and "refused this machine's Ray token" in refused.stderr
            no_token = subprocess.run(
                [sys.executable, "-c", CLIENT, f"ray://127.0.0.1:{client_port}"],
                env={**base_env(token_path), "RAY_AUTH_MODE": "disabled"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert no_token.returncode != 0 and "requires token authentication" in no_token.stderr
            assert "RAY_AUTH_MODE=disabled" in no_token.stderr
    finally:
        left = descendants(head.pid)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        kill_by_pid([head.pid, *left])


def test_an_explicit_mode_is_respected(monkeypatch):
    from shoal.backends.ray.connect import use_token_if_available

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert use_token_if_available() is False
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert use_token_if_available() is True
