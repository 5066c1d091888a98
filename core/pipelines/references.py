"""References to what a pipeline step will produce, and how a consumer's task gets their values.

``handle.output("model")`` is an ``OutputRef``: it may stand anywhere in a later step's ``params`` or
``inputs``, also inside lists and dicts. The driver ships the consumer's task with the references in
place; where the engine runs it, after its producers, ``resolve_references`` swaps each reference
for the producer's result, or for its artifact (by URL: an input gets the artifact's record, a value
inside a parameter the loaded value). Both sides run this module: it imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

from shoal.error_records import error_dict
from shoal.errors import MissingOutputError
from shoal.execution import RunOutcome, RunTask, never_started

#: The states of a producer whose outputs a consumer may use.
USABLE_STATES = ("completed", "cached")


@dataclasses.dataclass(frozen=True)
class OutputRef:
    """A result or artifact ``key`` that step ``producer`` (a run uid) of pipeline run ``pipeline``
    will produce; ``step`` is the producer's name in messages (``prep#0``)."""

    producer: str
    key: str
    step: str
    pipeline: str

    def __repr__(self) -> str:
        return f"<shoal output {self.step}.{self.key}>"


def find_refs(value: Any) -> list[OutputRef]:
    """Every reference inside ``value`` (itself, or nested in lists, tuples and dict values)."""
    found: list[OutputRef] = []
    _walk(value, found.append)
    return found


#: Types that never hold a reference: checked first, as most parameters are one of them.
_LEAVES = frozenset({int, float, str, bool, bytes, type(None)})


def _walk(value: Any, visit: Callable[[OutputRef], None]) -> None:
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is OutputRef:
        visit(value)
    elif kind is dict:  # before the Mapping check, which is an ABC's (slow) and most containers are dicts
        for item in value.values():
            _walk(item, visit)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk(item, visit)
    elif isinstance(value, Mapping):
        for item in value.values():
            _walk(item, visit)


def replace_refs(value: Any, swap: Callable[[OutputRef], Any]) -> Any:
    """``value`` with each reference replaced by ``swap(ref)`` (containers rebuilt, others as is)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is OutputRef:
        return swap(value)
    if kind is dict:  # as in ``_walk``
        return {key: replace_refs(item, swap) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(replace_refs(item, swap) for item in value)
    if isinstance(value, Mapping):
        return {key: replace_refs(item, swap) for key, item in value.items()}
    return value


def describe_refs(value: Any) -> Any:
    """The JSON form a run records for a value holding references (``"step:prep#0.dataset"``)."""
    return replace_refs(value, lambda ref: f"step:{ref.step}.{ref.key}")


def keyed_form(value: Any, key_of: Callable[[OutputRef], str]) -> str:
    """A stable text for a value holding references, each named by its producer's cache key:
    what a consumer's cache key uses before the producer has run."""
    return json.dumps(replace_refs(value, lambda ref: ["ref", key_of(ref), ref.key]), sort_keys=True, default=repr)


class UnusableOutputs(Exception):
    """A consumer cannot start: its producers did not all complete (``upstream_failed``), or one
    lacks a referenced output (``failed``); ``state`` and ``kind`` say which."""

    def __init__(self, state: str, kind: str, message: str):
        super().__init__(message)
        self.state, self.kind = state, kind


def resolve_values(
    params: Mapping[str, Any], inputs: Mapping[str, Any], outcomes: list[RunOutcome | None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` and ``inputs`` with their references swapped for the producers' outputs
    (``outcomes``; None where the engine lost one): an artifact given as an input stays an input
    (its record, by URL), any other reference becomes a parameter's value. Raises UnusableOutputs."""
    by_uid = {outcome.uid: outcome for outcome in outcomes if outcome is not None}
    refs = find_refs(params) + find_refs(inputs)
    unusable = sorted(
        {ref.step: ref for ref in refs if ref.producer not in by_uid or by_uid[ref.producer].state not in USABLE_STATES}
    )
    if unusable:
        states = ", ".join(
            f"{step} {by_uid[ref.producer].state if ref.producer in by_uid else 'was lost'}"
            for step, ref in ((s, next(r for r in refs if r.step == s)) for s in unusable)
        )
        raise UnusableOutputs(
            "upstream_failed", "UpstreamFailed", f"not started: a step it depends on failed ({states})"
        )
    try:
        resolved = {key: replace_refs(value, lambda ref: _value(ref, by_uid)) for key, value in params.items()}
        staged: dict[str, Any] = {}
        for key, value in inputs.items():
            if isinstance(value, OutputRef) and value.key in _artifacts(by_uid[value.producer]):
                staged[key] = _artifacts(by_uid[value.producer])[value.key]  # travels by URL
            elif find_refs(value):  # a result, or references inside a list or dict: a value
                resolved[key] = replace_refs(value, lambda ref: _value(ref, by_uid))
            else:
                staged[key] = value
    except MissingOutputError as exc:
        raise UnusableOutputs("failed", type(exc).__name__, str(exc)) from None
    return resolved, staged


def resolve_references(task: RunTask, outcomes: list[RunOutcome | None]) -> RunTask | RunOutcome:
    """The consumer's task with its references swapped for its producers' outputs (``outcomes``,
    one per producer; None where the engine lost it), or the outcome it ends with unrun: its
    producers did not all complete (``upstream_failed``), or one lacks a referenced output (failed).
    The ``prepare`` of ``Backend.submit_after``: runs where the engine runs the task."""
    if not outcomes:  # a step that uses no other step's outputs: nothing to swap
        return task
    try:
        params, inputs = resolve_values(task.params, task.inputs, outcomes)
    except UnusableOutputs as exc:
        return ended_unrun(task, exc.state, exc.kind, str(exc))
    resolved = object.__new__(RunTask)  # a plain copy of the fields: ``dataclasses.replace`` re-runs __init__
    resolved.__dict__.update(task.__dict__, params=params, inputs=inputs)
    return resolved


def _artifacts(outcome: RunOutcome) -> dict[str, dict]:
    return {record["key"]: record for record in outcome.artifacts}


def _value(ref: OutputRef, by_uid: dict[str, RunOutcome]) -> Any:
    outcome = by_uid[ref.producer]
    if ref.key in outcome.results:
        return outcome.results[ref.key]
    artifacts = _artifacts(outcome)
    if ref.key in artifacts:
        from shoal.artifacts import Artifact

        return Artifact.from_record(artifacts[ref.key]).load()
    logged = sorted(set(outcome.results) | set(artifacts))
    raise MissingOutputError(
        f"step {ref.step} logged no output {ref.key!r} (it logged: {', '.join(logged) or 'nothing'}); "
        f"log it in the step (ctx.log_result / ctx.log_artifact) or reference one of those keys"
    )


def ended_unrun(task: RunTask, state: str, kind: str, message: str) -> RunOutcome:
    """The outcome of a task that ends before its handler starts (as one cancelled before it
    started, in another state, with its own error)."""
    return dataclasses.replace(never_started(task), state=state, attempt=task.attempt, error=error_dict(kind, message))
