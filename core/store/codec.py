"""JSON encoding for the store's JSON columns, identical on SQLite and PostgreSQL.

Handlers log NumPy scalars and NaN losses all the time. PostgreSQL's ``json`` type rejects the
``NaN`` token that Python's ``json`` writes, so non-finite floats are stored as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` on every database (``float()`` reads them back), and
NumPy values become plain Python numbers and lists.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import PurePath
from typing import Any

from ..json_values import finite_floats


def _default(value: Any) -> Any:
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy scalars and arrays
        return finite_floats(value.tolist())
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return finite_floats(sorted(value, key=repr))
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be stored as JSON")


_STRICT = json.JSONEncoder(default=_default, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Serialise ``value`` as strict JSON (see the module docstring for what is converted)."""
    if not value and isinstance(value, dict):
        return "{}"  # most maps of a run are empty: the batched bookkeeping writes thousands
    try:
        return _STRICT.encode(value)  # fast path: no non-finite float anywhere
    except ValueError:
        return _STRICT.encode(finite_floats(value))


def loads(text: str | bytes) -> Any:
    """Parse JSON written by :func:`dumps` (or by anyone else)."""
    return json.loads(text)
