"""JSON encoding for the store's JSON columns, identical on SQLite and PostgreSQL.

Handlers log NumPy scalars and NaN losses all the time. PostgreSQL's ``json`` type rejects the
``NaN`` token that Python's ``json`` writes, so non-finite floats are stored as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` on every database (``float()`` reads them back), and
NumPy values become plain Python numbers and lists.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from pathlib import PurePath
from typing import Any


def _finite(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy scalars and arrays
        return _clean(value.tolist())
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return _clean(sorted(value, key=repr))
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be stored as JSON")


_STRICT = json.JSONEncoder(default=_default, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Serialise ``value`` as strict JSON (see the module docstring for what is converted)."""
    if not value and isinstance(value, dict):
        return "{}"  # most maps of a run are empty: the batched bookkeeping writes thousands
    try:
        return _STRICT.encode(value)  # fast path: no non-finite float anywhere
    except ValueError:
        return _STRICT.encode(_clean(value))


def loads(text: str | bytes) -> Any:
    """Parse JSON written by :func:`dumps` (or by anyone else)."""
    return json.loads(text)
