"""NumPy and pandas values as run parameters: recorded as JSON, handed to the handler as given.

A Dask or Ray user maps a function over ``df.values`` and expects each row to arrive as the NumPy
array it was. A run record holds JSON, so a small array is recorded as a JSON list (a NumPy scalar
as a number, a Timestamp or datetime64 as ISO text, ``pd.NA``/``NaT`` as null), while the task that
runs the handler carries the value itself: the handler gets the same type, dtype and shape on every
backend (a copy, so a handler never changes the caller's array). A run started again from its
record (``fn.run(run.params)``, ``shoal run``) has only the JSON: a parameter annotated
``np.ndarray`` or ``numpy.typing.NDArray[...]`` turns it back into an array, any other gets the list.

Bigger arrays and tables (DataFrame, Series) do not belong in a record: they go through
``inputs=``, stored once as artifacts. NumPy and pandas are never imported here: a value is
recognised by its type's module, so ``import shoal`` and runs without them load neither.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from .errors import ParamError

#: Largest NumPy array a parameter may hold (elements); past it, as JSON in every run record, it
#: would weigh on the store (about 200 kB of text for 10,000 floats): pass it through ``inputs=``.
MAX_ARRAY_ELEMENTS = 10_000

_TABLES = ("DataFrame", "Series", "Index")


def _package(value: Any) -> str:
    return type(value).__module__.split(".", 1)[0]


def is_numpy_or_pandas(value: Any) -> bool:
    """A value of a NumPy or pandas type (arrays, scalars, Timestamps, tables)."""
    return _package(value) in ("numpy", "pandas")


def is_array(value: Any) -> bool:
    return _package(value) == "numpy" and type(value).__name__ == "ndarray"


def _inputs_hint(name: str) -> str:
    return f"pass it through inputs={{{name!r}: value}} instead (stored once as an artifact, loaded on the worker)"


def _table_error(name: str, value: Any) -> ParamError:
    kind = type(value).__name__
    return ParamError(f"parameter {name!r} is a pandas {kind}, which a run record does not hold; {_inputs_hint(name)}")


def json_form(value: Any) -> tuple[bool, Any]:
    """(True, the JSON the run record holds) for a NumPy/pandas value that has one, else (False, None)."""
    from .context import to_json_value

    package, kind = _package(value), type(value).__name__
    if package == "numpy":
        import numpy as np

        if kind == "ndarray":
            if value.dtype.kind == "c":  # complex: no JSON number
                return False, None
            data = np.datetime_as_string(value).tolist() if value.dtype.kind == "M" else value.tolist()
            return to_json_value(data)
        if isinstance(value, np.datetime64):
            return (True, None) if np.isnat(value) else (True, str(np.datetime_as_string(value)))
        if isinstance(value, np.generic):
            return to_json_value(value.item())
        return False, None
    if package == "pandas":
        if kind in ("NAType", "NaTType"):
            return True, None
        if kind in ("Timestamp", "Timedelta"):
            return True, value.isoformat()
        return False, None
    return False, None


def param_value(name: str, value: Any) -> Any:
    """What the handler of a run gets for a NumPy/pandas parameter (a copy of an array, a scalar
    as it is), after checking the record can hold it; ParamError naming ``inputs=`` otherwise."""
    kind = type(value).__name__
    if _package(value) == "pandas" and kind in _TABLES:
        raise _table_error(name, value)
    if is_array(value) and value.size > MAX_ARRAY_ELEMENTS:
        raise ParamError(
            f"parameter {name!r} is a NumPy array of {value.size:,} elements (shape {value.shape}), more than the "
            f"{MAX_ARRAY_ELEMENTS:,} a run record holds as JSON; {_inputs_hint(name)}"
        )
    ok, _ = json_form(value)
    if not ok:
        dtype = f" of dtype {value.dtype}" if is_array(value) else ""
        raise ParamError(
            f"parameter {name!r} ({kind}{dtype}) has no JSON form for the run record; {_inputs_hint(name)}"
        )
    return value.copy() if is_array(value) else value


def _array_hint(hint: Any) -> Any:
    """The ``np.ndarray``/``NDArray[...]`` in ``hint`` (also inside ``Optional[...]``), else None;
    found without importing NumPy (a handler annotated with it has imported it)."""
    if "numpy" not in sys.modules or hint is None:
        return None
    import numpy as np

    if hint is np.ndarray or typing.get_origin(hint) is np.ndarray:
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            return _array_hint(members[0])
    return None


def is_array_hint(hint: Any) -> bool:
    """``np.ndarray``, ``numpy.typing.NDArray[...]``, or either made Optional."""
    return _array_hint(hint) is not None


def _hint_dtype(hint: Any) -> Any:
    """The dtype ``NDArray[np.float32]`` names (None for ``np.ndarray`` or ``NDArray[Any]``)."""
    args = typing.get_args(_array_hint(hint))
    if len(args) == 2:  # ndarray[shape, dtype[scalar]]
        scalars = getattr(args[1], "__args__", ())
        if scalars and isinstance(scalars[0], type):
            return scalars[0]
    return None


def as_array(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the array an ``np.ndarray``/``NDArray[...]`` parameter wants (a recorded JSON
    list becomes an array again); None stays None."""
    if value is None:
        return None
    import numpy as np

    dtype = _hint_dtype(hint)
    if is_array(value) and (dtype is None or value.dtype == dtype):
        return value
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ParamError(
            f"parameter {name!r} expects a NumPy array, got {value!r} ({exc}); pass a list of numbers"
        ) from None


def refuse_table_items(items: Any) -> None:
    """``fn.map(df)`` would iterate a DataFrame's column names: say which rows the user meant."""
    if _package(items) == "pandas" and type(items).__name__ == "DataFrame":
        raise ParamError(
            "map over a DataFrame iterates its column names; map df.values (each row as a NumPy array) "
            "or df.to_dict('records') (each row as a parameter set by column name)"
        )
