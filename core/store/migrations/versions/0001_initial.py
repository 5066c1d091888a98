"""Initial schema: function versions, tags, runs.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "functions",
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "name", "hash", name="pk_functions"),
    )
    op.create_table(
        "function_tags",
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "name", "tag", name="pk_function_tags"),
    )
    op.create_table(
        "runs",
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("function", sa.String(255), nullable=False),
        sa.Column("function_hash", sa.String(64), nullable=False),
        sa.Column("parent", sa.String(32), nullable=True),
        sa.Column("iteration", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("logs", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid", name="pk_runs"),
    )
    op.create_index("ix_runs_parent", "runs", ["parent"])
    op.create_index("ix_runs_project_created", "runs", ["project", "created_at"])
    op.create_index("ix_runs_project_function_created", "runs", ["project", "function", "created_at"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("function_tags")
    op.drop_table("functions")
