"""The store's side of services: one row per deployed service, request metrics per interval and the
most recent failed requests (bounded), each write one transaction.

Requests are not runs: a replica counts them in memory and hands over one metrics row per interval
with a few error rows (``shoal.services.metrics``), so a busy service costs one small transaction
every few seconds. ``ServiceRecords(store)`` works on any open :class:`~shoal.store.Store`.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection

from ..errors import NotFoundError, StoreError
from .engine import first_line
from .schema import service_errors, service_metrics, services, utcnow
from .upsert import upsert

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

MAX_ERRORS = 50  # recent failed requests kept per service
SERVICE_STATES = ("deploying", "running", "failed", "deleted")


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One deployed service as recorded: where it runs, which version, its replica bounds and state."""

    name: str
    function: str
    function_hash: str
    backend: str
    address: str | None
    pid: int | None
    process_start: float | None
    url: str
    min_replicas: int
    max_replicas: int
    state: str
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ServiceMetricsRecord:
    """One replica's requests over one interval."""

    replica: str
    function_hash: str
    started_at: datetime
    ended_at: datetime
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, slots=True)
class ServiceErrorRecord:
    """A failed request: its id, HTTP status, error type, message and traceback."""

    replica: str
    function_hash: str
    request_id: str
    time: datetime
    status: int
    type: str
    message: str
    traceback: str


_SERVICE_FIELDS = tuple(c.name for c in services.columns if c.name != "project")
_METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(ServiceMetricsRecord))
_ERROR_FIELDS = tuple(f.name for f in dataclasses.fields(ServiceErrorRecord))


class ServiceRecords:
    """The service queries of one store's project."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def project(self) -> str:
        return self._store.project

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._store.engine.begin() as connection:
                yield connection
        except exc.SQLAlchemyError as error:
            raise StoreError(f"cannot use the services of {self._store.url}: {first_line(error)}") from error

    # -- services --------------------------------------------------------------------------------
    def save(self, **fields: Any) -> ServiceRecord:
        """Insert or replace the service ``fields["name"]`` (its created time is kept on replace)."""
        state = fields.get("state")
        if state not in SERVICE_STATES:
            raise StoreError(f"service state must be one of {', '.join(SERVICE_STATES)}, got {state!r}")
        now = utcnow()
        row = {"project": self.project, "created_at": now, "updated_at": now, "spec": {}, **fields}
        update = [name for name in _SERVICE_FIELDS if name not in ("name", "created_at")]
        with self._connection() as connection:
            upsert(connection, services, [row], keys=("project", "name"), update=update)
            return self._get(connection, fields["name"])

    def set_state(self, name: str, state: str, **fields: Any) -> None:
        if state not in SERVICE_STATES:
            raise StoreError(f"service state must be one of {', '.join(SERVICE_STATES)}, got {state!r}")
        with self._connection() as connection:
            connection.execute(
                services.update()
                .where(services.c.project == self.project, services.c.name == name)
                .values(state=state, updated_at=utcnow(), **fields)
            )

    def get(self, name: str) -> ServiceRecord:
        with self._connection() as connection:
            return self._get(connection, name)

    def _get(self, connection: Connection, name: str) -> ServiceRecord:
        row = connection.execute(
            sa.select(*(services.c[f] for f in _SERVICE_FIELDS)).where(
                services.c.project == self.project, services.c.name == name
            )
        ).first()
        if row is None:
            raise NotFoundError(
                f"no service {name!r} in project {self.project!r}; `shoal services list` shows the deployed ones"
            )
        return ServiceRecord(**row._asdict())

    def list(self, include_deleted: bool = False) -> list[ServiceRecord]:
        statement = sa.select(*(services.c[f] for f in _SERVICE_FIELDS)).where(services.c.project == self.project)
        if not include_deleted:
            statement = statement.where(services.c.state != "deleted")
        with self._connection() as connection:
            return [ServiceRecord(**row._asdict()) for row in connection.execute(statement.order_by(services.c.name))]

    # -- requests --------------------------------------------------------------------------------
    def record_requests(
        self, service: str, metrics: Sequence[dict[str, Any]], errors: Sequence[dict[str, Any]] = ()
    ) -> None:
        """Write interval rows and failed requests in one transaction, then trim the service's
        errors to the newest ``MAX_ERRORS``."""
        if not metrics and not errors:
            return
        base = {"project": self.project, "service": service}
        with self._connection() as connection:
            if metrics:
                connection.execute(service_metrics.insert(), [{**base, **row} for row in metrics])
            if errors:
                connection.execute(service_errors.insert(), [{**base, **row} for row in errors])
                keep = (
                    sa.select(service_errors.c.id)
                    .where(service_errors.c.project == self.project, service_errors.c.service == service)
                    .order_by(service_errors.c.time.desc(), service_errors.c.id.desc())
                    .limit(MAX_ERRORS)
                )
                connection.execute(
                    service_errors.delete().where(
                        service_errors.c.project == self.project,
                        service_errors.c.service == service,
                        service_errors.c.id.not_in(keep),
                    )
                )

    def metrics(self, service: str, limit: int | None = 100) -> builtins.list[ServiceMetricsRecord]:
        """Interval rows, newest first."""
        statement = (
            sa.select(*(service_metrics.c[f] for f in _METRIC_FIELDS))
            .where(service_metrics.c.project == self.project, service_metrics.c.service == service)
            .order_by(service_metrics.c.started_at.desc(), service_metrics.c.id.desc())
        )
        if limit is not None:
            statement = statement.limit(max(0, int(limit)))
        with self._connection() as connection:
            return [ServiceMetricsRecord(**row._asdict()) for row in connection.execute(statement)]

    def errors(self, service: str, limit: int | None = MAX_ERRORS) -> builtins.list[ServiceErrorRecord]:
        """Recent failed requests, newest first."""
        statement = (
            sa.select(*(service_errors.c[f] for f in _ERROR_FIELDS))
            .where(service_errors.c.project == self.project, service_errors.c.service == service)
            .order_by(service_errors.c.time.desc(), service_errors.c.id.desc())
        )
        if limit is not None:
            statement = statement.limit(max(0, int(limit)))
        with self._connection() as connection:
            return [ServiceErrorRecord(**row._asdict()) for row in connection.execute(statement)]
