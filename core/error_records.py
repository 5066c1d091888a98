"""The error a run records: ``{"type", "message", "traceback"}``, built in one place.

Worker side (``execute``) and driver side (runner, recorder, tuning, engines' futures) all record
errors through these two helpers, so every recorded error has the same keys. Re-exported from
``shoal.execution``, where callers import them.
"""

from __future__ import annotations

import os
import sys
import traceback


def _shoal_folders() -> tuple[str, ...]:
    """The folders of shoal's own packages that are loaded (a frame can only come from those)."""
    files = (getattr(sys.modules.get(name), "__file__", None) for name in ("shoal", "shoal.backends", "shoal.tuning"))
    return tuple(os.path.dirname(os.path.abspath(file)) + os.sep for file in files if file)


def error_record(exc: BaseException, message: str | None = None) -> dict[str, str]:
    """The recorded error: ``traceback`` starts at the user's code (shoal's own frames that called it
    are dropped, as pytest drops its internals); ``traceback_full``, kept when they differ, has them
    too (``shoal --debug`` shows it)."""
    kind = type(exc)
    name = (
        kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    )
    full = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    record = {"type": name, "message": message if message is not None else str(exc), "traceback": full}
    user, ours = exc.__traceback__, _shoal_folders()
    while user is not None and user.tb_frame.f_code.co_filename.startswith(ours):
        user = user.tb_next
    if user is not None and user is not exc.__traceback__:  # else: nothing to drop, or no user frame
        record["traceback"] = "".join(traceback.format_exception(kind, exc, user))
        record["traceback_full"] = full
    return record


def error_dict(type: str, message: str, traceback: str = "") -> dict[str, str]:
    """The recorded error of a failure that raised no exception here (a run cancelled before it
    started, a lost driver, a map whose children failed): the same keys as ``error_record``."""
    return {"type": type, "message": message, "traceback": traceback}
