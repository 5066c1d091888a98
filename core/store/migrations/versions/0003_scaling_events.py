"""Scaling events: when a backend's workers went up or down, by how many, and why.

Revision ID: 0003_scaling_events
Revises: 0002_artifacts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_scaling_events"
down_revision = "0002_artifacts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scaling_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("backend", sa.String(255), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("workers_before", sa.Integer(), nullable=True),
        sa.Column("workers_after", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scaling_events"),
        sa.UniqueConstraint("project", "backend", "time", "direction", "reason", name="uq_scaling_events_event"),
    )
    op.create_index("ix_scaling_events_project_time", "scaling_events", ["project", "time"])


def downgrade() -> None:
    op.drop_table("scaling_events")
