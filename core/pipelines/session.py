"""One run of a pipeline on the driver: its body's step submissions, their cache lookups, records and
launches, waiting for them, and the parent run that ends with the graph.

Steps submitted in the body are checked at once (parameters against the handler, references to this
run's steps only) and launched together when the body returns or first awaits a step
(``handle.result()``), so a step with bad parameters fails the pipeline before any step starts, and
all the launches go out in one pass.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shoal.cached_runs import Busy, CacheCall, Cached, Claim, finished_handle, record_cached, resolve_many
from shoal.error_records import error_dict, error_record
from shoal.errors import ParamError, PipelineError
from shoal.execution import RunOutcome
from shoal.runner import resolve_backend
from shoal.runs import Run, RunHandle
from shoal.step_cache import CacheOptions, ContentDigest

from .handles import LaunchedStep, Step, StepHandle
from .references import describe_refs, find_refs, keyed_form
from .steps import StepDriver

if TYPE_CHECKING:  # pragma: no cover
    from shoal.backends.base import BackendFuture
    from shoal.function import Function
    from shoal.project import Project

    from .driver_steps import Work

_active: contextvars.ContextVar[PipelineRun | None] = contextvars.ContextVar("shoal_pipeline", default=None)


def active_pipeline() -> PipelineRun | None:
    """The pipeline run whose body is running here, if any: ``fn.submit`` then makes a step."""
    return _active.get()


#: Steps recorded and launched before the rest of a launch are recorded: the engine starts on them
#: while the driver records the others (one insert for them all made the engine wait for it).
LAUNCH_FIRST = 32


class PipelineRun:
    """The driver side of one pipeline run (see the module docstring)."""

    def __init__(self, record: dict[str, Any], project: Project, backend: Any, cache: CacheOptions):
        self.record = record
        self.project = project
        self.backend = backend
        self.cache = cache
        self.steps: dict[str, Step] = {}
        self._pending: list[Step] = []
        self._drivers: dict[tuple[str, int], StepDriver] = {}
        self._names: dict[str, int] = {}
        self._lock = threading.RLock()

    @property
    def uid(self) -> str:
        return self.record["uid"]

    def launched(self, uid: str) -> LaunchedStep:
        """Step ``uid``, which has its handle and future: producers launch before their consumers."""
        step = self.steps[uid]
        assert step.handle is not None and step.future is not None, f"step {step.name} used before its launch"
        return step  # type: ignore[return-value]

    # -- the body -------------------------------------------------------------------------------
    def run_body(self, body: Any, params: Mapping[str, Any]) -> Any:
        token = _active.set(self)
        try:
            value = body(**params)
        finally:
            _active.reset(token)
        self.launch_pending()
        return value

    def submit(
        self,
        fn: Function,
        params: Mapping[str, Any] | Any,
        inputs: Mapping[str, Any] | None,
        *,
        backend: Any = None,
        cache: tuple[Any, ...] = (None, False, None, None, None),
    ) -> StepHandle:
        """Check a step now (ParamError, PipelineError), launch it with the others later."""
        driver = self._driver(fn, backend)
        if params is not None and not isinstance(params, Mapping):
            params = driver.plain_params((params,), inputs, "fn.submit")
        params = dict(params or {})
        inputs = dict(inputs or {})
        ref_params = {k: v for k, v in params.items() if self._refs_in(fn, "params", k, v)}
        ref_inputs = {k: v for k, v in inputs.items() if self._refs_in(fn, "inputs", k, v)}
        plain_inputs = {k: v for k, v in inputs.items() if k not in ref_inputs}
        # Names that will hold references are checked as names only (their values come later).
        checked = driver.check({k: v for k, v in params.items() if k not in ref_params}, {**inputs, **ref_params})
        staged = driver.stage_inputs(plain_inputs)
        with self._lock:
            index, name = self._next_name(fn.name)
            record = driver.new_record(
                {**checked, **describe_refs(ref_params)} if ref_params else checked,
                staged,
                parent=self.uid,
                iteration=index,
                labels={"shoal.step": name},
            )
            if ref_inputs:
                record["inputs"].update(describe_refs(ref_inputs))
            refs = find_refs(ref_params) + find_refs(ref_inputs) if ref_params or ref_inputs else []
            options = self._cache_options(*cache)
            step = Step(
                index=index,
                name=name,
                fn=fn,
                driver=driver,
                record=record,
                params={**checked, **ref_params},
                staged=staged,
                ref_inputs=ref_inputs,
                producers=list(dict.fromkeys(ref.producer for ref in refs)),
                edges=[(ref.producer, ref.key) for ref in refs],
                cache=options,
            )
            self.steps[step.uid] = step
            self._pending.append(step)
        return StepHandle(self, step, step.uid, name, self.uid)

    def submit_on_driver(
        self,
        fn: Function,
        work: Work,
        *,
        kind: str,
        params: Mapping[str, Any],
        record_params: Mapping[str, Any],
        inputs: Mapping[str, Any] | None = None,
        backend: Any = None,
        cache: tuple[Any, ...] = (None, False, None, None, None),
        labels: Mapping[str, str] | None = None,
        handle_type: type[StepHandle] = StepHandle,
        check: Mapping[str, Any] | None = None,
    ) -> StepHandle:
        """A step whose ``work`` runs on the driver (``driver_steps``; a search of ``fn``), named
        ``kind:fn``. ``params`` (references allowed) make its cache key with ``fn``'s hash and its
        inputs' contents, and reach ``work`` resolved; ``record_params`` are what its run records.
        References are checked here (PipelineError); ``check``: parameters the handler must take
        (ParamError), the names of ``params`` holding references and of ``inputs`` taken as given."""
        from .driver_steps import DriverStepLauncher

        driver = self._driver(fn, backend)
        params, inputs = dict(params), dict(inputs or {})
        ref_params = {k: v for k, v in params.items() if self._refs_in(fn, "params", k, v)}
        ref_inputs = {k: v for k, v in inputs.items() if self._refs_in(fn, "inputs", k, v)}
        if check is not None:
            driver.check({k: v for k, v in check.items() if k not in ref_params}, {**inputs, **ref_params})
        staged = driver.stage_inputs({k: v for k, v in inputs.items() if k not in ref_inputs})
        with self._lock:
            index, name = self._next_name(f"{kind}:{fn.name}")
            record = driver.new_record(
                describe_refs(dict(record_params)),
                staged,
                parent=self.uid,
                iteration=index,
                labels={**(labels or {}), "shoal.step": name},
            )
            record["inputs"].update(describe_refs(ref_inputs))
            refs = find_refs(ref_params) + find_refs(ref_inputs)
            step = Step(
                index=index,
                name=name,
                fn=fn,
                driver=DriverStepLauncher(self, driver, work),
                record=record,
                params=params,
                staged=staged,
                ref_inputs=ref_inputs,
                producers=list(dict.fromkeys(ref.producer for ref in refs)),
                edges=[(ref.producer, ref.key) for ref in refs],
                cache=self._cache_options(*cache),
            )
            self.steps[step.uid] = step
            self._pending.append(step)
        return handle_type(self, step, step.uid, name, self.uid)

    def _next_name(self, base: str) -> tuple[int, str]:
        """The next step's index, and its name: ``base``, then ``base#2``, ``base#3``..."""
        count = self._names[base] = self._names.get(base, 0) + 1
        return len(self.steps), base if count == 1 else f"{base}#{count}"

    def _refs_in(self, fn: Function, where: str, key: str, value: Any) -> bool:
        """True if ``value`` holds references, all to steps of this run (else PipelineError)."""
        if isinstance(value, StepHandle):
            raise PipelineError(
                f"{fn.name}: {where}[{key!r}] is a step handle; pass one of its outputs, e.g. {value.name}.output('model')"
            )
        refs = find_refs(value)
        for ref in refs:
            if ref.pipeline != self.uid or ref.producer not in self.steps:
                raise PipelineError(
                    f"{fn.name}: {where}[{key!r}] references step {ref.step} of another pipeline run "
                    f"({ref.pipeline[:12]}); a step can only use the outputs of steps of its own run"
                )
        return bool(refs)

    def map(
        self,
        fn: Function,
        items: Any,
        iterables: tuple[Any, ...],
        inputs: Mapping[str, Any] | None,
        *,
        backend: Any = None,
        cache: tuple[Any, ...] = (None, False, None, None, None),
    ) -> list[StepHandle]:
        """``fn.map`` in a body: one step per item (a parameter set, or the value ``f(x)`` takes)."""
        if iterables:
            raise PipelineError(f"{fn.name}.map in a pipeline takes one iterable; zip them into parameter sets")
        return [self.submit(fn, item, inputs, backend=backend, cache=cache) for item in items]

    def _cache_options(
        self, cache: bool | None, refresh: bool, ignore: Any, expires: Any, version: Any
    ) -> CacheOptions:
        """A step's cache options: the pipeline's, with what the step sets on top."""
        if (cache, refresh, ignore, expires, version) == (None, False, None, None, None):
            return self.cache
        base = self.cache
        return CacheOptions.from_call(
            base.enabled if cache is None else cache,
            refresh or base.refresh,
            ignore if ignore is not None else base.ignore,
            expires if expires is not None else base.expires,
            version if version is not None else base.version,
        )

    def _driver(self, fn: Function, backend: Any = None) -> StepDriver:
        backend = backend if backend is not None else self.backend
        found = self._drivers.get((fn.hash, id(backend)))
        if found is None:
            found = StepDriver(fn, self.project, resolve_backend(fn, backend, self.project), pipeline=self)
            self._drivers[(fn.hash, id(backend))] = found
        return found

    # -- launching ------------------------------------------------------------------------------
    def launch_pending(self) -> None:
        """Look each waiting step up in the cache, record them, and hand them to the engines. A step
        whose key another run holds (another driver's, or a step of this very pipeline with the same
        key) is waited for after everything that does not depend on it has been launched, so the
        holder can run meanwhile; the steps that use it are launched once its outcome is known."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            for step in pending:
                step.driver.save_function()
            cached: list[tuple[Step, Cached]] = []
            to_run: list[Step] = []
            busy: list[tuple[Step, Busy]] = []
            for step, found in self._look_up(pending):
                if isinstance(found, Busy):
                    busy.append((step, found))
                    continue
                if isinstance(found, Cached):
                    cached.append((step, found))
                    continue
                if isinstance(found, Claim):
                    found.stamp(step.record)
                to_run.append(step)
            self._record_cached(cached)
            blocked = self._downstream_of({step.uid for step, _ in busy})
            first, rest = to_run[:LAUNCH_FIRST], to_run[LAUNCH_FIRST:]
            self.project.store.create_runs([step.record for step in first] + [step.record for step, _ in busy])
            self._launch_unblocked(first, blocked)
            if rest:  # the engine runs the first steps while the others are recorded
                self.project.store.create_runs([step.record for step in rest])
                self._launch_unblocked(rest, blocked)
            for step, found in busy:  # in dependency order: a busy step's producers are launched by now
                outcome = found.wait()
                if isinstance(outcome, Cached):
                    self._record_cached([(step, outcome)], new=False)
                    continue
                assert isinstance(outcome, Claim)  # wait() without a stop event ends Cached or Claim
                outcome.stamp(step.record)  # the holder did not complete: this driver runs the key
                self.project.store.update_run(step.uid, cache_key=outcome.key)
                step.driver.launch(step.record, step.staged, params=step.params)
            for step in to_run:
                if step.uid in blocked:
                    step.driver.launch(step.record, step.staged, params=step.params)

    @staticmethod
    def _launch_unblocked(steps: list[Step], blocked: set[str]) -> None:
        """Launch the recorded ``steps`` (in order: producers first) that wait for no busy step."""
        for step in steps:
            if step.uid not in blocked:
                step.driver.launch(step.record, step.staged, params=step.params)

    def _record_cached(self, cached: list[tuple[Step, Cached]], *, new: bool = True) -> None:
        """Record steps the cache answers (not ``new``: their pending records exist already)."""
        if not cached:
            return
        runs = record_cached(self.project, [s.record for s, _ in cached], [c for _, c in cached], new=new)
        for (step, _), run in zip(cached, runs):
            step.handle = finished_handle(run)
            step.future = _settled(step.uid, run)

    def _downstream_of(self, uids: set[str]) -> set[str]:
        """Every step that uses one of ``uids``, directly or through other steps."""
        found: set[str] = set()
        frontier = set(uids)
        while frontier:
            frontier = {s.uid for s in self.steps.values() if frontier.intersection(s.producers)} - found
            found |= frontier
        return found

    def _look_up(self, pending: list[Step]) -> list[tuple[Step, Cached | Claim | Busy | None]]:
        """Each step's cache outcome, a layer of steps per store transaction: a reference counts by
        its producer's key (known before the producer runs), so the steps using a step are looked up
        after it, and a step after an uncacheable one is uncacheable too."""
        outcomes: list[tuple[Step, Cached | Claim | Busy | None]] = []
        waiting = {step.uid for step in pending}
        remaining = list(pending)
        while remaining:
            layer = [step for step in remaining if not waiting.intersection(step.producers)]
            if not layer:  # handles exist only once submitted, so this would be a bug, never a hang
                names = ", ".join(step.name for step in remaining)
                raise PipelineError(f"the steps {names} reference each other in a cycle")
            calls = [(step, self._cache_call(step)) for step in layer]
            keyed = [(step, call) for step, call in calls if call is not None]
            found = resolve_many(self.project, [call for _, call in keyed]) if keyed else []
            results = dict(zip((step.uid for step, _ in keyed), found))
            for step in layer:
                outcome = results.get(step.uid)
                step.key = outcome.key if outcome is not None else None
                outcomes.append((step, outcome))
            waiting.difference_update(step.uid for step in layer)
            remaining = [step for step in remaining if step.uid in waiting]
        return outcomes

    def _cache_call(self, step: Step) -> CacheCall | None:
        if not step.cache.enabled:
            return None
        producer_keys = {uid: self.steps[uid].key for uid in step.producers}
        if any(key is None for key in producer_keys.values()):
            return None

        def stand_in(value: Any) -> Any:
            if not find_refs(value):
                return value
            return ContentDigest.of("ref", keyed_form(value, lambda ref: producer_keys[ref.producer] or ""))

        params = {key: stand_in(value) for key, value in step.params.items()}
        inputs: dict[str, Any] = {**step.staged, **{key: stand_in(v) for key, v in step.ref_inputs.items()}}
        return CacheCall(step.fn, params, inputs, step.cache, step.uid)

    # -- waiting and ending ---------------------------------------------------------------------
    def _handles(self) -> list[RunHandle]:
        return [step.handle for step in self.steps.values() if step.handle is not None]

    def wait(self) -> list[Run]:
        """Every launched step's run, once all are recorded."""
        return [handle.result() for handle in self._handles()]

    def cancel_all(self) -> None:
        """Ctrl-C: cancel the unfinished steps (pending ones first) and let them be recorded."""
        handles = self._handles()
        for handle in sorted(handles, key=lambda h: h.state == "running"):
            handle.cancel()
        for handle in handles:
            handle.wait(30)

    def finished_runs(self) -> list[Run]:
        return [handle.result(0) for handle in self._handles() if handle.done()]

    def finish(
        self, runs: list[Run], *, value: Any = None, error: BaseException | None = None, interrupted: bool = False
    ) -> Run:
        """Record the parent run's end: its graph, the count of steps by state, failed steps."""
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.state] = counts.get(run.state, 0) + 1
        failed = [run for run in runs if not run.ok]
        by_uid = {step.uid: step for step in self.steps.values()}
        results: dict[str, Any] = {"steps": counts, "graph": self.graph()}
        if value is not None:
            results["return"] = _describe_return(value)
        fields: dict[str, Any] = {"results": results, "ended_at": datetime.now(timezone.utc)}
        if interrupted:
            fields["state"] = "cancelled"
            fields["error"] = error_dict("CancelledError", "pipeline was interrupted (Ctrl-C)")
        elif error is not None:
            fields["state"] = "failed"
            fields["error"] = error_record(
                error, str(error) if isinstance(error, (ParamError, PipelineError)) else None
            )
        elif failed:
            listed = ", ".join(f"{by_uid[r.uid].name} {r.state}" for r in failed if r.uid in by_uid)
            fields["state"] = "failed"
            fields["error"] = error_dict(
                "PipelineFailed", f"{len(failed)} of {len(runs)} steps did not complete: {listed}"
            )
            results["failed_steps"] = [by_uid[r.uid].name for r in failed if r.uid in by_uid]
        else:
            fields["state"] = "completed"
        self.project.store.finish_run(self.uid, fields)
        return Run.from_record(self.project.store.get_run(self.uid))

    def graph(self) -> dict[str, Any]:
        """The steps and the references between them, as the parent run records them."""
        steps = list(self.steps.values())
        return {
            "steps": [
                {
                    "uid": s.uid,
                    "name": s.name,
                    "function": s.fn.name,
                    "state": s.handle.state if s.handle else "pending",
                }
                for s in steps
            ],
            "edges": [{"from": producer, "to": s.uid, "key": key} for s in steps for producer, key in s.edges],
        }


def _settled(uid: str, run: Run) -> BackendFuture:
    """A future already settled with a cached run's outputs, for the steps that use them."""
    from shoal.backends.dependencies import ReadyFuture

    outcome = RunOutcome(
        uid=uid,
        state="cached",
        attempt=0,
        started_at=None,
        ended_at=0.0,
        results=dict(run.results),
        artifacts=[artifact.to_record() for artifact in run.artifacts.values()],
    )
    return ReadyFuture(outcome)


def _describe_return(value: Any) -> Any:
    """What the body returned, as JSON: handles as the steps they name."""
    if isinstance(value, StepHandle):
        return f"step:{value.name}"
    if isinstance(value, (list, tuple)):
        return [_describe_return(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _describe_return(item) for key, item in value.items()}
    return describe_refs(value) if find_refs(value) else value
