"""The tables at the head revision, as SQLAlchemy Core objects the queries are written against.

The migrations in ``migrations/versions`` are the source of truth for the database; this module must
describe the same schema (a test compares ``create_all`` from here with the migrated database).
Every table has a ``project`` column so one PostgreSQL database can serve many projects.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp that always comes back timezone-aware in UTC, on SQLite too.

    SQLite has no timezone type, so values are stored as naive UTC there; PostgreSQL keeps
    ``timestamptz``. Naive inputs are taken as local time (Python's ``astimezone`` convention).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every timestamp column holds)."""
    return datetime.now(timezone.utc)


def _project() -> sa.Column[Any]:
    return sa.Column("project", sa.String(128), nullable=False)


functions = sa.Table(
    "functions",
    metadata,
    _project(),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("spec", sa.JSON(), nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("labels", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project", "name", "hash", name="pk_functions"),
)

function_tags = sa.Table(
    "function_tags",
    metadata,
    _project(),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("tag", sa.String(128), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project", "name", "tag", name="pk_function_tags"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("uid", sa.String(32), nullable=False),
    _project(),
    sa.Column("function", sa.String(255), nullable=False),
    sa.Column("function_hash", sa.String(64), nullable=False),
    sa.Column("parent", sa.String(32), nullable=True),
    sa.Column("iteration", sa.Integer(), nullable=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("inputs", sa.JSON(), nullable=False),
    sa.Column("results", sa.JSON(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("logs", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("backend", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # Added by 0002 (ALTER TABLE appends it last); the server default fills rows of older databases.
    sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    # Added by 0004: the process that drives the run (``drivers.id``); NULL for a run nobody drives
    # yet (recorded for a Kubernetes Job, which claims it when it starts).
    sa.Column("driver", sa.String(32), nullable=True),
    # Added by 0006: the step cache key a run was made under, and the run a ``cached`` run reuses.
    sa.Column("cache_key", sa.String(64), nullable=True),
    sa.Column("cached_from", sa.String(32), nullable=True),
    sa.PrimaryKeyConstraint("uid", name="pk_runs"),
    sa.Index("ix_runs_parent", "parent"),
    sa.Index("ix_runs_project_created", "project", "created_at"),
    sa.Index("ix_runs_project_function_created", "project", "function", "created_at"),
    sa.Index("ix_runs_project_state", "project", "state"),
    sa.Index("ix_runs_driver_state", "driver", "state"),
    # Only runs with a cache key (0008): most runs have none, and lookups always name one.
    sa.Index(
        "ix_runs_project_cache_key",
        "project",
        "cache_key",
        postgresql_where=sa.text("cache_key IS NOT NULL"),
        sqlite_where=sa.text("cache_key IS NOT NULL"),
    ),
)

# Which driver is running a cache key right now (``shoal.store.cache``): the primary key decides.
cache_claims = sa.Table(
    "cache_claims",
    metadata,
    _project(),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("run_uid", sa.String(32), nullable=False),
    sa.Column("driver", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project", "key", name="pk_cache_claims"),
    sa.Index("ix_cache_claims_driver", "driver"),
)

drivers = sa.Table(
    "drivers",
    metadata,
    _project(),
    sa.Column("id", sa.String(32), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),  # the host name, for people
    sa.Column("machine", sa.String(255), nullable=False),  # host name and PID namespace: PIDs compare within it
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("process_start", sa.Float(), nullable=True),  # epoch seconds; tells a reused PID apart
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project", "id", name="pk_drivers"),
    sa.Index("ix_drivers_project_heartbeat", "project", "heartbeat_at"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    _project(),
    sa.Column("run_uid", sa.String(32), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("format", sa.String(64), nullable=True),
    sa.Column("size", sa.BigInteger(), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("meta", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("run_uid", "key", name="pk_artifacts"),
)

scaling_events = sa.Table(
    "scaling_events",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    _project(),
    sa.Column("backend", sa.String(255), nullable=False),  # a backend name or an engine address
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),  # up or down
    sa.Column("workers_before", sa.Integer(), nullable=True),  # NULL: the engine did not say
    sa.Column("workers_after", sa.Integer(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_scaling_events"),
    # The same event pulled twice (two flushes, two processes) is stored once.
    sa.UniqueConstraint("project", "backend", "time", "direction", "reason", name="uq_scaling_events_event"),
    sa.Index("ix_scaling_events_project_time", "project", "time"),
)

# Added by 0007: functions deployed as HTTP services (``shoal.services``), one row per (project, name).
services = sa.Table(
    "services",
    metadata,
    _project(),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("function", sa.String(255), nullable=False),
    sa.Column("function_hash", sa.String(64), nullable=False),
    sa.Column("backend", sa.String(255), nullable=False),  # local, ray, or a ray address
    sa.Column("address", sa.Text(), nullable=True),  # how another process reaches the engine (a Ray address)
    sa.Column("pid", sa.Integer(), nullable=True),  # the local server's process
    sa.Column("process_start", sa.Float(), nullable=True),  # epoch seconds: tells a reused PID apart
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("min_replicas", sa.Integer(), nullable=False),
    sa.Column("max_replicas", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("spec", sa.JSON(), nullable=False),  # host, port, scaling knobs as deployed
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project", "name", name="pk_services"),
)

# Requests are not runs: per replica and interval, a count, the errors and latency percentiles.
service_metrics = sa.Table(
    "service_metrics",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    _project(),
    sa.Column("service", sa.String(255), nullable=False),
    sa.Column("replica", sa.String(128), nullable=False),
    sa.Column("function_hash", sa.String(64), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=False),
    sa.Column("requests", sa.Integer(), nullable=False),
    sa.Column("errors", sa.Integer(), nullable=False),
    sa.Column("p50_ms", sa.Float(), nullable=True),
    sa.Column("p95_ms", sa.Float(), nullable=True),
    sa.Column("p99_ms", sa.Float(), nullable=True),
    sa.Column("max_ms", sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint("id", name="pk_service_metrics"),
    sa.Index("ix_service_metrics_service_time", "project", "service", "started_at"),
)

# The most recent failed requests of each service (bounded: older ones are deleted as new ones come).
service_errors = sa.Table(
    "service_errors",
    metadata,
    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
    _project(),
    sa.Column("service", sa.String(255), nullable=False),
    sa.Column("replica", sa.String(128), nullable=False),
    sa.Column("function_hash", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("traceback", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_service_errors"),
    sa.Index("ix_service_errors_service_time", "project", "service", "time"),
)

RUN_FIELDS: tuple[str, ...] = tuple(c.name for c in runs.columns if c.name != "project")
ARTIFACT_FIELDS: tuple[str, ...] = tuple(c.name for c in artifacts.columns if c.name != "project")
SCALING_FIELDS: tuple[str, ...] = tuple(c.name for c in scaling_events.columns if c.name not in ("id", "project"))
