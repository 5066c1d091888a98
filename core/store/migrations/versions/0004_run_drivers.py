"""Run drivers: which process drives each run, so runs of a driver that died can be ended.

Revision ID: 0004_run_drivers
Revises: 0003_scaling_events
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_drivers"
down_revision = "0003_scaling_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drivers",
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("machine", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_start", sa.Float(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "id", name="pk_drivers"),
    )
    op.create_index("ix_drivers_project_heartbeat", "drivers", ["project", "heartbeat_at"])
    # Runs recorded before this revision have no driver (NULL): they are never ended as lost.
    op.add_column("runs", sa.Column("driver", sa.String(32), nullable=True))
    op.create_index("ix_runs_driver_state", "runs", ["driver", "state"])


def downgrade() -> None:
    op.drop_index("ix_runs_driver_state", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("driver")
    op.drop_table("drivers")
