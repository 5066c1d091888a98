"""A local autoscaling Ray cluster, for ``replicas=(min, max)`` with ``min < max`` on one machine.

Ray's own (v1) autoscaler with its fake multi-node provider: ``ray start --head`` with an autoscaling
config whose one worker node type has ``min_workers``/``max_workers``; the autoscaler starts worker
nodes (separate raylets on this machine) for pending tasks and removes them once idle. Nothing here
scales: this module only starts the head, rewrites the bounds in the config (the autoscaler re-reads
it on every update), reads the autoscaler's event log, and stops what it started.

Facts this relies on (Ray 2.60, measured): ``ray.cluster_utils.AutoscalingCluster`` is unusable from
the wheel and runs ``ray stop --force`` (which kills every Ray on the machine), so it is never used,
and neither is ``ray stop``. The provider needs ``RAY_FAKE_CLUSTER=1`` and the head's GCS address
(it assumes port 6379 otherwise), and its config needs ``disable_node_updaters`` (else its read-only
tags fail every launch), ``use_node_id_as_ip`` (else idle nodes are never recognised, never
removed), ``launch_multiple`` (else a launch of n nodes starts one) and ``foreground_node_launch``
(else a slow launch is launched again, and the extra node removed with whatever runs on it).
``RAY_AUTH_MODE=disabled`` lets the fake nodes join. Ray's daemons may ignore SIGTERM, so every
process started here carries a marker in its environment and is found by it and killed by PID, with
SIGKILL after a grace period; a small watchdog does the same if the driver dies without closing
(``shoal.backends.ray.processes``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from .processes import MARKER, cluster_pids, kill_cluster, reap_watchdog, start_watchdog, tell_watchdog

WORKER_TYPE = "shoal.worker"
HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's type


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def autoscaling_config(minimum: int, maximum: int, cpus: int, gcs_address: str, idle_timeout_s: float) -> dict:
    """The cluster config the autoscaler reads (and re-reads on every update)."""
    return {
        "cluster_name": "shoal",
        "max_workers": maximum,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "launch_multiple": True,  # else "Adding 2 node(s)" starts one
            "foreground_node_launch": True,  # launched within the update: no second launch for the same demand
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "shoal"},
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": {"CPU": cpus},
                "node_config": {},
                "min_workers": minimum,
                "max_workers": maximum,
            },
        },
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class LocalAutoscalingCluster:
    """A head with no CPUs plus autoscaled worker nodes of ``cpus_per_worker`` CPUs each."""

    def __init__(
        self,
        minimum: int,
        maximum: int,
        *,
        cpus_per_worker: int = 1,
        idle_timeout_s: float = 6.0,
        update_interval_s: float = 1.0,
        start_timeout: float = 60.0,
    ):
        self.minimum, self.maximum = minimum, maximum
        self.cpus_per_worker = cpus_per_worker
        self.idle_timeout_s = idle_timeout_s
        self.update_interval_s = update_interval_s
        self.start_timeout = start_timeout
        self.token = uuid.uuid4().hex
        self.root: Path | None = None
        self.gcs_address: str | None = None
        self.client_address: str | None = None
        self.session: int | None = None  # the session `ray start` leads: every process of the cluster
        self._watchdog: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        """Start the head (its autoscaler starts ``minimum`` worker nodes); returns the GCS address."""
        self.root = Path(tempfile.mkdtemp(prefix="shoal-ray-"))
        port, client_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{port}"
        self.client_address = f"ray://127.0.0.1:{client_port}"
        self._write_config()
        self._watchdog = start_watchdog(self.token, self.root)
        command = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
            f"--port={port}",
            f"--ray-client-server-port={client_port}",
            "--dashboard-agent-listen-port=0",
            "--num-cpus=0",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.root / 'ray'}",
            f"--autoscaling-config={self.config_path}",
        ]  # fmt: skip
        env = {
            **os.environ,
            MARKER: self.token,
            "RAY_FAKE_CLUSTER": "1",
            "RAY_AUTH_MODE": "disabled",
            "AUTOSCALER_UPDATE_INTERVAL_S": f"{self.update_interval_s:g}",
        }
        env.pop("RAY_ADDRESS", None)
        with open(self.root / "start.log", "wb") as out:
            starter = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its daemons outlive it: Ctrl-C at a terminal must not reach them
            )  # fmt: skip
        self.session = starter.pid  # the leader of the new session
        tell_watchdog(self._watchdog, self.session)
        try:
            code = starter.wait(self.start_timeout)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            reason = (self.root / "start.log").read_text(errors="replace")[-800:]
            self.stop()
            raise RuntimeError(f"`ray start --head` for the autoscaling cluster failed: {reason}")
        return self.gcs_address

    def stop(self, grace: float = 1.5) -> None:
        """Stop every process of this cluster by PID (TERM, then KILL); remove its folder."""
        kill_cluster(self.token, self.session, grace)
        if self._watchdog is not None:
            reap_watchdog(self._watchdog)
            self._watchdog = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def pids(self) -> list[int]:
        """The live processes of this cluster (head daemons, worker nodes, their workers)."""
        return cluster_pids(self.token, self.session)

    # -- bounds ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        assert self.root is not None, "the cluster is not started"
        return self.root / "autoscaling.json"

    def set_bounds(self, minimum: int, maximum: int) -> None:
        """New bounds for the autoscaler: it reads them at its next update."""
        self.minimum, self.maximum = minimum, maximum
        if self.root is not None:
            self._write_config()

    def _write_config(self) -> None:
        config = autoscaling_config(
            self.minimum, self.maximum, self.cpus_per_worker, self.gcs_address or "", self.idle_timeout_s
        )
        partial = self.config_path.with_suffix(".tmp")
        partial.write_text(json.dumps(config, indent=1))
        partial.replace(self.config_path)  # atomic: the autoscaler never reads half a file

    # -- what the autoscaler did ----------------------------------------------------------------
    def autoscaler_events(self) -> list[tuple[float, str]]:
        """(time, message) of every event the autoscaler logged, oldest first."""
        if self.root is None:
            return []
        events = []
        sessions = {path.resolve() for path in self.root.glob("ray/session_*") if path.name != "session_latest"}
        for path in sorted(session / "logs/events/event_AUTOSCALER.log" for session in sessions):
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                    events.append((float(event["timestamp"]), str(event["message"])))
                except (ValueError, KeyError, TypeError):
                    continue  # a line being written
        return events


# -- turning the autoscaler's messages into node counts ------------------------------------------------
_ADDING = re.compile(r"Adding (\d+) node\(s\) of type (\S+?)\.?$")
_REMOVING = re.compile(r"Removing (\d+) nodes of type (\S+?) \((.+)\)\.?$")


def node_changes(messages: Iterable[tuple[float, str]]) -> list[tuple[float, int, str]]:
    """(time, change in worker nodes, reason) for each launch or removal the autoscaler logged.

    Its times are whole seconds; events within one second are spread by a millisecond each, in the
    log's order, so that each keeps a time of its own.
    """
    changes: list[tuple[float, int, str]] = []
    for stamp, message in messages:
        if match := _ADDING.search(message):
            change = int(match.group(1))
        elif match := _REMOVING.search(message):
            change = -int(match.group(1))
        else:
            continue
        if changes and int(changes[-1][0]) == int(stamp):
            stamp = changes[-1][0] + 0.001
        changes.append((stamp, change, f"ray autoscaler: {message}"))
    return changes


__all__ = ["LocalAutoscalingCluster", "autoscaling_config", "free_port", "node_changes"]
