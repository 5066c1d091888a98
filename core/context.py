"""``shoal.Context``: what a running handler sees and logs through."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any, Callable, Mapping

from .artifacts import Artifact, ArtifactStore
from .errors import ArtifactError

_logger: logging.Logger | None = None


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time, so run capture sees it."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _user_logger() -> logging.Logger:
    global _logger
    if _logger is None:
        logger = logging.getLogger("shoal.run")
        if not logger.handlers:
            handler = _CurrentStdoutHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _logger = logger
    return _logger


def finite_or_text(value: float) -> float | str:
    """A float as the store keeps it: non-finite values become "NaN", "Infinity" or "-Infinity"
    (the store's JSON convention, which PostgreSQL accepts and ``float()`` reads back)."""
    value = float(value)
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def to_json_value(value: Any) -> tuple[bool, Any]:
    """(True, value as plain JSON) when ``value`` can be recorded as a result, else (False, None).

    The converted value is exactly what the database gives back (plain bool/int/float/str, lists,
    string keys), so a returned Run and the stored one agree.
    """
    if value is None:
        return True, None
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


class Context:
    """Passed to handlers that ask for it (first parameter named ``ctx`` or typed ``shoal.Context``).

    Everything logged here is recorded with the run, also when the handler fails afterwards.
    """

    def __init__(
        self,
        *,
        uid: str = "",
        function: str = "",
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Artifact] | None = None,
        artifact_store: ArtifactStore | None = None,
        artifact_prefix: str = "",
        reporter: Callable[[float, int | None], None] | None = None,
        trial: Any = None,
        attempt: int = 1,
    ):
        self.uid = uid
        self.function = function
        self.params: dict[str, Any] = dict(params or {})
        self.inputs: dict[str, Artifact] = dict(inputs or {})
        self.attempt = attempt
        self._trial = trial
        self._trial_factory: Callable[[], Any] | None = None
        self._params_chosen = False  # set_params was called: the record takes the params from the worker
        self.results: dict[str, Any] = {}
        self.metrics: dict[str, list[list[float]]] = {}
        self.artifacts: dict[str, Artifact] = {}
        self._store = artifact_store
        self._prefix = artifact_prefix
        self._reporter = reporter

    def set_params(self, values: Mapping[str, Any]) -> None:
        """Add parameters chosen on the worker before the handler runs (a tuning trial's sampled
        values); the run's record then holds them."""
        self.params.update(values)
        self._params_chosen = True

    @property
    def trial(self) -> Any:
        """The Optuna trial of a tuning run (None outside tuning), built on first use: most
        objectives only read their parameters and never need it."""
        if self._trial is None and self._trial_factory is not None:
            self._trial = self._trial_factory()
        return self._trial

    @trial.setter
    def trial(self, value: Any) -> None:
        self._trial = value

    @property
    def logger(self) -> logging.Logger:
        """A logger whose lines land in the run's captured logs."""
        return _user_logger()

    def get_param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def log_result(self, key: str, value: Any) -> None:
        """Record a JSON value as a result; other values are stored as an artifact under ``key``."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"result keys must be non-empty strings, got {key!r}")
        ok, converted = to_json_value(value)
        if ok:
            self.results[key] = converted
            return
        self.log_artifact(key, value)
        self.logger.info("result %r (%s) is not JSON; stored as artifact %r", key, type(value).__name__, key)

    def log_results(self, results: Mapping[str, Any]) -> None:
        for key, value in results.items():
            self.log_result(str(key), value)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        """Append ``value`` at ``step`` (default: the next step) to the metric series ``key``
        (NaN and infinities are kept as "NaN"/"Infinity", as the store keeps them)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
        series = self.metrics.setdefault(key, [])
        step = len(series) if step is None else int(step)
        series.append([step, finite_or_text(value)])

    def log_artifact(self, key: str, value: Any, *, kind: str | None = None) -> Artifact:
        """Store a value (array, frame, bytes, text, JSON, object) or a local file/folder path.

        A ``str`` naming an existing file or folder is stored as that file or folder; any other
        string as text. Pass ``pathlib.Path`` to be explicit.
        """
        if self._store is None:
            raise ArtifactError("this context has no artifact store (it is not inside a run)")
        artifact = self._store.put(f"{self._prefix}/{key}", value, key=key, kind=kind)
        self.artifacts[key] = artifact
        return artifact

    def report(self, value: float, step: int | None = None) -> None:
        """Report an intermediate objective value; a tuning pruner may stop the trial here.

        Outside tuning this only records the value as the metric ``objective``.
        """
        self.log_metric("objective", value, step)
        if self._reporter is not None:
            self._reporter(float(value), step)

    def __repr__(self) -> str:
        return f"<shoal.Context run={self.uid} function={self.function}>"
