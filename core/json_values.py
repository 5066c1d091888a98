"""Values as the run store records them: plain JSON, with non-finite floats as text.

Used on both sides: the worker's ``Context`` converts results with it, the driver checks
parameters and tuning values with it (re-exported from ``shoal.context``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def finite_or_text(value: float) -> float | str:
    """A float as the store keeps it: non-finite values become "NaN", "Infinity" or "-Infinity"
    (the store's JSON convention, which PostgreSQL accepts and ``float()`` reads back)."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def finite_floats(value: Any) -> Any:
    """``value`` with every non-finite float inside dicts, lists and tuples as text (tuples become
    lists), so strict JSON (``allow_nan=False``) can encode it; nothing else is converted."""
    if isinstance(value, float):
        return finite_or_text(value)
    if isinstance(value, dict):
        return {key: finite_floats(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_floats(item) for item in value]
    return value


def to_json_value(value: Any) -> tuple[bool, Any]:
    """(True, value as plain JSON) when ``value`` can be recorded as a result, else (False, None).

    The converted value is exactly what the database gives back (plain bool/int/float/str, lists,
    string keys), so a returned Run and the stored one agree.
    """
    if value is None:
        return True, None
    kind = type(value)
    if kind is int or kind is str or kind is bool:  # most results: already plain
        return True, value
    if isinstance(value, bool):
        return True, bool(value)
    if isinstance(value, int):
        return True, int(value)
    if isinstance(value, float):
        return True, finite_or_text(value)
    if isinstance(value, str):
        return True, str.__str__(value)  # the text itself, also for str enums
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == () and type(value).__module__ == "numpy":
        return to_json_value(item())
    if isinstance(value, (list, tuple)):
        out = []
        for element in value:
            ok, converted = to_json_value(element)
            if not ok:
                return False, None
            out.append(converted)
        return True, out
    if isinstance(value, Mapping):
        out_map = {}
        for key, element in value.items():
            ok, converted = to_json_value(element)
            if not ok or not isinstance(key, (str, int, float, bool)):
                return False, None
            out_map[str(key)] = converted
        return True, out_map
    return False, None
