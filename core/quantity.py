"""Kubernetes resource quantities ("500m", "2Gi"), parsed by the kubernetes client's own parser.

The client is imported only when a quantity is actually parsed, so `import shoal` stays light.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache


@lru_cache(maxsize=1024)
def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity as a Decimal; raise ValueError for malformed, infinite or negative values."""
    from kubernetes.utils.quantity import parse_quantity as _parse  # lazy: ~0.15 s import

    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    text = str(value).strip()
    try:
        number = _parse(text)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"{value!r} is not a Kubernetes quantity ({exc})") from None
    if not number.is_finite():  # the client accepts "inf"; Kubernetes does not
        raise ValueError(f"{value!r} is not a finite quantity")
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def canonical_quantity(value: str) -> str:
    """One spelling per amount ("1000m" and "1" both give "1"), used for hashing."""
    number = parse_quantity(value).normalize()
    return format(number, "f")
