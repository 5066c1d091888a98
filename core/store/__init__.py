"""The store: every function version (by content hash) with movable tags, runs (with the process
that drives each, so runs of a driver that died can be ended: see :mod:`.drivers`), artifact
records, and the scaling events of backends.

SQLite by default (WAL, safe under many concurrent writer processes), PostgreSQL by URL; the schema
is versioned with alembic and migrated when a :class:`Store` opens. Importing this package pulls in
SQLAlchemy but not alembic, which loads only when a database actually needs migrating.
"""

from __future__ import annotations

from .engine import open_engine
from .records import ArtifactRecord, FunctionRecord, RunRecord, ScalingEventRecord
from .store import Store

__all__ = ["ArtifactRecord", "FunctionRecord", "RunRecord", "ScalingEventRecord", "Store", "open_engine"]
