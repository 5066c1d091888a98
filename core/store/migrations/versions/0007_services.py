"""Services: functions deployed as HTTP endpoints (``shoal.services``), their request metrics per
interval and their recent failed requests.

Revision ID: 0007_services
Revises: 0006_step_cache
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_services"
down_revision = "0006_step_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("function", sa.String(255), nullable=False),
        sa.Column("function_hash", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("process_start", sa.Float(), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "name", name="pk_services"),
    )
    op.create_table(
        "service_metrics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("replica", sa.String(128), nullable=False),
        sa.Column("function_hash", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("max_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_service_metrics"),
    )
    op.create_index("ix_service_metrics_service_time", "service_metrics", ["project", "service", "started_at"])
    op.create_table(
        "service_errors",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("replica", sa.String(128), nullable=False),
        sa.Column("function_hash", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_service_errors"),
    )
    op.create_index("ix_service_errors_service_time", "service_errors", ["project", "service", "time"])


def downgrade() -> None:
    op.drop_index("ix_service_errors_service_time", table_name="service_errors")
    op.drop_table("service_errors")
    op.drop_index("ix_service_metrics_service_time", table_name="service_metrics")
    op.drop_table("service_metrics")
    op.drop_table("services")
