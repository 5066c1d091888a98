"""Step caching: a run's cache key and the run a ``cached`` run reuses, and the claims that keep two
drivers from running the same key at once (``shoal.store.cache``).

A claim is one row per (project, key): the primary key is the unique constraint that decides which
driver runs a key, on SQLite and PostgreSQL alike.

Revision ID: 0006_step_cache
Revises: 0005_pruned_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_step_cache"
down_revision = "0005_pruned_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("cache_key", sa.String(64), nullable=True))
    op.add_column("runs", sa.Column("cached_from", sa.String(32), nullable=True))
    op.create_index("ix_runs_project_cache_key", "runs", ["project", "cache_key"])
    op.create_table(
        "cache_claims",
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("run_uid", sa.String(32), nullable=False),
        sa.Column("driver", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "key", name="pk_cache_claims"),
    )
    op.create_index("ix_cache_claims_driver", "cache_claims", ["driver"])


def downgrade() -> None:
    op.drop_index("ix_cache_claims_driver", table_name="cache_claims")
    op.drop_table("cache_claims")
    op.drop_index("ix_runs_project_cache_key", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cached_from")
        batch.drop_column("cache_key")
