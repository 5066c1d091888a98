"""One module per schema revision, oldest first; alembic loads them by file path."""
