"""Alembic environment for the store, driven programmatically by :mod:`shoal.store.migrate`.

That module passes an open connection (already inside a transaction, holding the migration lock)
in ``config.attributes["connection"]``; without one, ``sqlalchemy.url`` is opened here so that the
alembic command line can still be pointed at a database for inspection (``--sql`` works too).
"""

from __future__ import annotations

from typing import Any

from alembic import context

from shoal.store.migrate import VERSION_TABLE


def _configure(**kwargs: Any) -> None:
    context.configure(version_table=VERSION_TABLE, target_metadata=None, **kwargs)


def run_offline() -> None:
    _configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from shoal.store.engine import open_engine

    engine = open_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _configure(connection=connection, transactional_ddl=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
