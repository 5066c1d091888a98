"""Joining through a Ray Client server that fails to start a server for its client.

Ray Client's server forks a server per client and that child sometimes dies at once; Ray then
refuses the ``ray.init`` with ``ConnectionAbortedError("Initialization failure from server:\\n<its
traceback>")``. The real failure cannot be made on demand, so these cases drive the join policy
with an engine stand-in that raises exactly what Ray raises; the real path runs in
test_ray_connect_auth and test_ray_backend.
"""

from __future__ import annotations

import logging

import pytest

from shoal.backends.ray.connect import JOIN_ATTEMPTS, join, server_refusal
from shoal.errors import BackendError

SERVER_TRACEBACK = (
    "Initialization failure from server:\n"
    "Traceback (most recent call last):\n"
    '  File "proxier.py", line 770, in Datapath\n'
    "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.\n"
)


class RefusingRay:
    """Refuses the first ``refusals`` joins the way Ray Client does, then connects."""

    def __init__(self, refusals: int, error: BaseException | None = None) -> None:
        self.refusals, self.error = refusals, error
        self.inits: list[str] = []
        self.shutdowns = 0

    def init(self, address: str, **_options: object) -> None:
        self.inits.append(address)
        if len(self.inits) <= self.refusals:
            raise self.error or ConnectionAbortedError(SERVER_TRACEBACK)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_the_refusal_names_the_servers_reason_not_only_that_it_refused():
    reason = server_refusal(ConnectionAbortedError(SERVER_TRACEBACK))
    assert reason.startswith("Initialization failure from server:")
    assert reason.endswith("See ray_client_server_23000.err for detailed logs.")
    assert server_refusal(ConnectionAbortedError("refused")) == "refused"


def test_a_join_refused_by_the_client_server_is_tried_again_until_it_connects(caplog):
    ray = RefusingRay(refusals=JOIN_ATTEMPTS - 1)
    with caplog.at_level(logging.WARNING, logger="shoal.backends.ray"):
        join(ray, "ray://head:10001", {}, pause=0.001)
    assert ray.inits == ["ray://head:10001"] * JOIN_ATTEMPTS
    assert ray.shutdowns == JOIN_ATTEMPTS - 1  # each half-made connection closed before the next try
    warnings = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(warnings) == JOIN_ATTEMPTS - 1
    assert "Starting Ray client server failed" in warnings[0]


def test_a_join_refused_every_time_raises_with_the_servers_reason():
    ray = RefusingRay(refusals=JOIN_ATTEMPTS + 5)
    with pytest.raises(BackendError) as caught:
        join(ray, "ray://head:10001", {}, pause=0.001)
    assert len(ray.inits) == JOIN_ATTEMPTS
    message = str(caught.value)
    assert "ray://head:10001" in message and "Starting Ray client server failed" in message
    assert f"{JOIN_ATTEMPTS} tries" in message


def test_any_other_refusal_ends_the_join_at_once():
    ray = RefusingRay(refusals=1, error=RuntimeError("Version mismatch: the cluster runs Ray 2.9"))
    with pytest.raises(BackendError, match="Version mismatch"):
        join(ray, "ray://head:10001", {}, pause=0.001)
    assert len(ray.inits) == 1
