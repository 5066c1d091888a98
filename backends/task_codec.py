"""The one task codec of the engine backends: a ``RunTask``/``RunBatch`` (or what a worker sends back)
crosses Dask and Ray as one opaque ``bytes`` value.

Why bytes rather than the objects: Ray serialises each argument separately and Dask walks every
nested field of a dataclass argument looking for collections, in the scheduler, at each submission
(measured: ~9 ms of the driver's CPU per tuning trial whose task carries a search space). Why the
standard pickler first: it is C, while cloudpickle's per-class lookups cost more than a whole task
submission. Anything the standard pickler can only name by reference in ``__main__`` (classes and
functions of the user's script, which a worker cannot import) or cannot pickle at all (lambdas,
local functions) goes by cloudpickle, which ships it by value; so do values of the modules registered
with cloudpickle to travel by value (shoal registers the files the driver ran as function code).
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

PROTOCOL = 5
# How a pickle names the module ``__main__`` (a short unicode string exactly "__main__"): the mark of
# a global that only the driver's process can resolve.
_MAIN_GLOBAL = b"\x8c\x08__main__"


def encode(task: Any) -> bytes:
    """``task`` (a RunTask, a RunBatch, or outcomes coming back) as bytes ``decode`` restores."""
    try:
        data = pickle.dumps(task, protocol=PROTOCOL)
        if not _names_driver_only_module(data):
            return data
    except Exception:  # noqa: BLE001 - not picklable by reference: cloudpickle ships it by value
        pass
    import cloudpickle

    return cloudpickle.dumps(task, protocol=PROTOCOL)


def encode_outcome(outcome: Any) -> bytes:
    """An outcome (or a batch's list of them) going back to the driver, as ``encode`` makes it. The
    driver holds every module registered by value (it registered them), so only a reference to the
    worker's own ``__main__`` needs cloudpickle: the registry's scan is skipped (outcomes are plain
    data: JSON results, error texts, artifact records)."""
    data = pickle.dumps(outcome, protocol=PROTOCOL)
    return data if _MAIN_GLOBAL not in data else encode(outcome)


def _names_driver_only_module(data: bytes) -> bool:
    """Whether the pickle may name a module workers lack: ``__main__``, or one registered with
    ``cloudpickle.register_pickle_by_value`` (as ``shoal.by_value`` registers the files the driver
    ran as function code). A plain substring test: a false match only costs cloudpickle's time."""
    if _MAIN_GLOBAL in data:
        return True
    cloudpickle = sys.modules.get("cloudpickle")
    if cloudpickle is None:  # nothing can be registered by value before cloudpickle is imported
        return False
    return any(name.encode() in data for name in cloudpickle.list_registry_pickle_by_value())


def decode(data: bytes) -> Any:
    """The value ``encode`` made (cloudpickle's output is read by the standard unpickler)."""
    return pickle.loads(data)


__all__ = ["decode", "encode", "encode_outcome"]
