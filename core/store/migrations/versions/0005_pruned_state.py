"""The ``pruned`` run state: a trial its search stopped early was recorded ``completed`` with
``results={"pruned": true, ...}``; it becomes ``pruned`` and loses that marker (the state says it).

Only a JSON ``true`` under ``pruned`` counts: a search's parent run counts its pruned trials there
as a number and stays as it is. The other results keep their order. Done in SQL on both databases
(SQLite's JSON1 functions, PostgreSQL's ``json`` functions), so no row passes through Python.

Revision ID: 0005_pruned_state
Revises: 0004_run_drivers
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shoal.errors import StoreError

revision = "0005_pruned_state"
down_revision = "0004_run_drivers"
branch_labels = None
depends_on = None

# SQLite ------------------------------------------------------------------------------------------
# json_type is 'true' for a JSON true only (an integer count is 'integer'); json_valid guards rows
# whose text is not JSON, which json_type would refuse. LIKE skips most rows without parsing them.
_SQLITE_UP = """
UPDATE runs SET state = 'pruned', results = json_remove(results, '$.pruned')
WHERE state = 'completed' AND results LIKE '%pruned%'
  AND CASE WHEN json_valid(results) THEN json_type(results, '$.pruned') END = 'true'
"""
_SQLITE_DOWN = """
UPDATE runs SET state = 'completed',
  results = json_set(CASE WHEN json_valid(results) THEN results ELSE '{}' END, '$.pruned', json('true'))
WHERE state = 'pruned'
"""

# PostgreSQL --------------------------------------------------------------------------------------
# The column is ``json`` (text kept as written): rebuilding the object from json_each in ordinal
# order keeps the other keys where they were (a jsonb round trip would sort them).
_PG_UP = """
UPDATE runs SET state = 'pruned', results = COALESCE(
  (SELECT json_object_agg(e.key, e.value ORDER BY e.ord)
     FROM json_each(runs.results) WITH ORDINALITY AS e(key, value, ord)
    WHERE e.key <> 'pruned'),
  '{}'::json)
WHERE state = 'completed' AND CAST(results AS text) LIKE '%pruned%'
  AND json_typeof(results) = 'object'
  AND json_typeof(results -> 'pruned') = 'boolean' AND (results ->> 'pruned') = 'true'
"""
_PG_DOWN = """
UPDATE runs SET state = 'completed', results = (
  SELECT json_object_agg(e.key, e.value ORDER BY e.ord)
    FROM (SELECT k.key, k.value, k.ord
            FROM json_each(CASE WHEN json_typeof(runs.results) = 'object' THEN runs.results ELSE '{}'::json END)
                 WITH ORDINALITY AS k(key, value, ord)
           WHERE k.key <> 'pruned'
          UNION ALL
          SELECT 'pruned', 'true'::json, 9223372036854775807) AS e)
WHERE state = 'pruned'
"""


def _run(sqlite: str, postgresql: str) -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(sa.text(sqlite))
    elif dialect == "postgresql":
        op.execute(sa.text(postgresql))
    else:
        raise StoreError(f"shoal's store supports SQLite and PostgreSQL, not {dialect}")


def upgrade() -> None:
    _run(_SQLITE_UP, _PG_UP)


def downgrade() -> None:
    _run(_SQLITE_DOWN, _PG_DOWN)
