"""Artifact records, run labels, and the index behind "runs in state X".

Revision ID: 0002_artifacts
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_artifacts"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on SQLite too: allowed for NOT NULL because of the constant default,
    # which also fills the rows that already exist.
    op.add_column("runs", sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    op.create_index("ix_runs_project_state", "runs", ["project", "state"])
    op.create_table(
        "artifacts",
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("run_uid", sa.String(32), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("format", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_uid", "key", name="pk_artifacts"),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_index("ix_runs_project_state", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("labels")
