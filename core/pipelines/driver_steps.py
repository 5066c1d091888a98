"""Steps whose work runs on the driver, such as a search (``shoal.tune`` in a pipeline's body): the
search asks Optuna and sends its trials to the backend itself, so the step is a thread here, not an
engine task.

Such a step is a step like any other for the rest of the pipeline: its run record is a child of
the pipeline run (created by the session, cached by its key), it starts once its producers are
done (their references resolved as for an engine task), a producer that failed makes it
``upstream_failed``, and its handle and future feed the steps that use its outputs (on Dask and Ray
those wait on the driver for it). ``work`` gets a ``DriverStepCall`` and returns the step's
recorded Run; it records the run's end itself (a search ends its own parent run).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shoal.backends.base import BackendFuture, SettledFuture
from shoal.cached_runs import run_from_row
from shoal.error_records import error_dict, error_record
from shoal.execution import RunOutcome
from shoal.runs import Run, RunHandle

from .references import UnusableOutputs, resolve_values

if TYPE_CHECKING:  # pragma: no cover
    from shoal.project import Project

    from .session import PipelineRun

log = logging.getLogger("shoal.pipelines")


@dataclasses.dataclass
class DriverStepCall:
    """What a driver step's work gets once its producers are done."""

    record: dict[str, Any]  # its run record (recorded pending)
    params: dict[str, Any]  # the step's params, references resolved
    inputs: dict[str, Any]  # staged Artifacts (a referenced artifact too), by input name
    key: str | None  # its cache key (None: uncacheable, or caching off)
    refresh: bool  # run again even where a completed run of the key exists
    backend: Any  # the Backend its function's steps run on (resolved)
    step: str  # its name in the pipeline (``tune:train``)
    pipeline: str  # the pipeline run's uid
    project: Project
    stop: threading.Event  # set when the step is cancelled (the pipeline's Ctrl-C, ``shoal runs cancel``)


Work = Callable[[DriverStepCall], Run]


class DriverStepHandle(RunHandle):
    """The handle of a driver step's run: cancelling sets its stop event."""

    def __init__(self, uid: str, function: str, stop: threading.Event):
        super().__init__(uid, function, self._request_stop)
        self.stop = stop

    def _request_stop(self, _: RunHandle) -> bool:
        self.stop.set()
        return True

    def settle(self, run: Run) -> None:
        """The step's run has ended as recorded: wake whoever waits for it."""
        self.set_run(run)


class DriverStepFuture(SettledFuture):
    """What the steps using a driver step wait on: settled with its run's outcome."""

    def __init__(self, handle: DriverStepHandle):
        super().__init__(handle.uid)
        self._handle = handle

    def settle(self, outcome: RunOutcome) -> None:
        self.resolve(outcome)

    def cancel(self) -> bool:
        return self._handle.cancel()


class DriverStepLauncher:
    """``Step.driver`` of a driver step: ``save_function`` and ``launch`` as the session calls them."""

    def __init__(self, session: PipelineRun, driver: Any, work: Work):
        self.session = session
        self.driver = driver  # the function's step driver: saves the function version
        self.work = work

    def save_function(self) -> None:
        self.driver.save_function()

    def launch(self, record: dict[str, Any], staged: dict[str, Any], *, params: dict[str, Any]) -> None:
        """Give the step its handle and future now; its work starts in a thread once its
        producers are done (at once without producers)."""
        step = self.session.steps[record["uid"]]
        handle = DriverStepHandle(record["uid"], record["function"], threading.Event())
        future = DriverStepFuture(handle)
        step.handle, step.future = handle, future
        upstream = [self.session.launched(uid).future for uid in step.producers]
        remaining = [len(upstream)]
        lock = threading.Lock()

        def start() -> None:
            thread = threading.Thread(
                target=self._run,
                args=(record, staged, params, step.ref_inputs, upstream, step.key, step.name, handle, future),
                name=f"shoal-step-{step.name}",
                daemon=True,
            )
            thread.start()

        def one_done(_: BackendFuture) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                start()

        if not upstream:
            start()
        for producer in upstream:
            producer.add_done_callback(one_done)

    def _run(
        self,
        record: dict[str, Any],
        staged: dict[str, Any],
        params: dict[str, Any],
        ref_inputs: dict[str, Any],
        upstream: list[BackendFuture],
        key: str | None,
        name: str,
        handle: DriverStepHandle,
        future: DriverStepFuture,
    ) -> None:
        from shoal.artifacts import Artifact
        from shoal.backends.dependencies import outcome_or_none

        project = self.session.project
        try:
            if handle.stop.is_set():
                run = _end(
                    project, record["uid"], "cancelled", error_dict("CancelledError", "cancelled before it started")
                )
            else:
                resolved, inputs = resolve_values(params, ref_inputs, [outcome_or_none(f) for f in upstream])
                inputs = {k: Artifact.from_record(v) if isinstance(v, dict) else v for k, v in inputs.items()}
                call = DriverStepCall(
                    record=record,
                    params=resolved,
                    inputs={**staged, **inputs},
                    key=key,
                    refresh=self.session.steps[record["uid"]].cache.refresh,
                    backend=self.driver.backend,
                    step=name,
                    pipeline=self.session.uid,
                    project=project,
                    stop=handle.stop,
                )
                run = self.work(call)
        except UnusableOutputs as exc:
            run = _end(project, record["uid"], exc.state, error_dict(exc.kind, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - the step fails with its error, never hangs the pipeline
            log.debug("step %s failed", name, exc_info=True)
            try:
                run = _end(project, record["uid"], "failed", error_record(exc), only_if_open=True)
            except Exception:  # noqa: BLE001 - the store is unreachable: still end the step here
                log.exception("step %s: its failure could not be recorded", name)
                run = run_from_row({**record, "state": "failed", "error": error_record(exc)})
        handle.settle(run)
        future.settle(_outcome(run))


def _end(project: Project, uid: str, state: str, error: dict[str, Any] | None, only_if_open: bool = False) -> Run:
    """Record the step's end (unless ``only_if_open`` and its work ended it already); its Run."""
    if only_if_open:
        current = Run.from_record(project.store.get_run(uid))
        if current.state not in ("pending", "running"):
            return current
    project.store.finish_run(uid, {"state": state, "error": error, "ended_at": datetime.now(timezone.utc)})
    return Run.from_record(project.store.get_run(uid))


def _outcome(run: Run) -> RunOutcome:
    """The outcome the steps using this one resolve their references from."""
    return RunOutcome(
        uid=run.uid,
        state=run.state,
        attempt=1,
        started_at=run.started_at.timestamp() if run.started_at is not None else None,
        ended_at=time.time(),
        results=dict(run.results),
        artifacts=[artifact.to_record() for artifact in run.artifacts.values()],
        error=run.error,
    )
