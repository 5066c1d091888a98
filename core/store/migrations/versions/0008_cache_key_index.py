"""The cache-key index of ``runs`` holds only runs that have a cache key.

Most runs have none (caching is opt-in), yet every one of them paid an entry in this index when it
was recorded and another when its outcome was written (an UPDATE that cannot be HOT inserts into
every index). Lookups always name a key (``cache_key = ...`` or ``IN (...)``), which both databases
prove implies ``cache_key IS NOT NULL``, so they keep using the index.

Revision ID: 0008_cache_key_index
Revises: 0007_services
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_cache_key_index"
down_revision = "0007_services"
branch_labels = None
depends_on = None

HAS_KEY = sa.text("cache_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_runs_project_cache_key", table_name="runs")
    op.create_index(
        "ix_runs_project_cache_key", "runs", ["project", "cache_key"], postgresql_where=HAS_KEY, sqlite_where=HAS_KEY
    )


def downgrade() -> None:
    op.drop_index("ix_runs_project_cache_key", table_name="runs")
    op.create_index("ix_runs_project_cache_key", "runs", ["project", "cache_key"])
