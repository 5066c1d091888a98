"""Alembic migration scripts of the store (``env.py`` plus ``versions/``); run them through
:mod:`shoal.store.migrate`, never by importing these modules."""
