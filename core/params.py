"""Checking run parameters against the handler's signature and type hints before anything runs."""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

from .errors import ParamError


@dataclass(frozen=True)
class Signature:
    """What a handler accepts: its context parameter, named parameters and their hints."""

    context_param: str | None
    names: tuple[str, ...]
    required: frozenset[str]
    hints: Mapping[str, Any]
    accepts_any: bool  # **kwargs


def _is_context_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.split(".")[-1] == "Context"
    return getattr(annotation, "__name__", None) == "Context" and getattr(annotation, "__module__", "").startswith(
        "shoal"
    )


@lru_cache(maxsize=256)
def signature_of(func: Callable) -> Signature:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return Signature(None, (), frozenset(), {}, True)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolved forward references: convert nothing
        hints = {}
    params = list(sig.parameters.values())
    context_param = None
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        first = params[0]
        if first.name == "ctx" or _is_context_annotation(hints.get(first.name, first.annotation)):
            context_param = first.name
            params = params[1:]
    names, required, accepts_any = [], set(), False
    for param in params:
        if param.kind == param.VAR_KEYWORD:
            accepts_any = True
        elif param.kind == param.VAR_POSITIONAL:
            continue
        else:
            names.append(param.name)
            if param.default is param.empty:
                required.add(param.name)
    hints = {k: v for k, v in hints.items() if k in names}
    return Signature(context_param, tuple(names), frozenset(required), hints, accepts_any)


@lru_cache(maxsize=512)
def _adapter(hint: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def convert(name: str, value: Any, hint: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to ``hint`` (pydantic's lax rules); CLI text is also tried as JSON/YAML."""
    if hint is Any or hint is inspect.Parameter.empty:
        return _parse_text(value) if from_text else value
    try:
        adapter = _adapter(hint)
    except Exception:  # noqa: BLE001 - an annotation pydantic cannot handle: pass the value through
        return _parse_text(value) if from_text else value
    from pydantic import ValidationError

    try:
        return adapter.validate_python(value)
    except ValidationError as first:
        if from_text and isinstance(value, str):
            try:
                return adapter.validate_python(_parse_text(value))
            except (ValidationError, ValueError):
                pass
        reason = first.errors()[0]["msg"]
        raise ParamError(
            f"parameter {name!r} expects {_type_name(hint)}, got {value!r} ({reason}); pass a value of that type"
        ) from None


def _parse_text(value: Any) -> Any:
    """CLI values without a hint: YAML scalars and flow collections (0.1 -> float, [1,2] -> list)."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def function_label(name: str, handler: str) -> str:
    """How errors name a function: ``train``, or ``trainer (handler train)`` when the two differ."""
    return name if name == handler else f"{name} (handler {handler})"


def bind(
    func: Callable,
    params: Mapping[str, Any] | None,
    *,
    defaults: Mapping[str, Any] | None = None,
    input_names: tuple[str, ...] = (),
    from_text: bool = False,
    handler: str = "handler",
) -> dict[str, Any]:
    """Validate and convert ``params`` for ``func``; return the parameters the run records.

    Unknown names, missing required parameters, unconvertible values and values that cannot be
    recorded as JSON are ``ParamError``s raised before the run is created.
    """
    sig = signature_of(func)
    given = dict(defaults or {})
    given.update(params or {})
    for key in given:
        if not isinstance(key, str):
            raise ParamError(f"parameter names must be strings, got {key!r}")
    if not sig.accepts_any:
        unknown = sorted(set(given) - set(sig.names))
        if unknown:
            valid = ", ".join(n for n in sig.names if n not in input_names) or "none"
            raise ParamError(f"unknown parameter {unknown[0]!r} for {handler}; it accepts: {valid}")
    if sig.context_param is None and not sig.accepts_any:
        stray = sorted(set(input_names) - set(sig.names))
        if stray:  # it could reach the handler neither as an argument nor through ctx.inputs
            raise ParamError(
                f"input {stray[0]!r} matches no parameter of {handler}; name it after a parameter "
                f"({', '.join(sig.names) or 'none'}) or add a ctx parameter and read ctx.inputs"
            )
    missing = sorted(sig.required - set(given) - set(input_names))
    if missing:
        raise ParamError(f"missing required parameter {missing[0]!r} for {handler}; pass it with params= or --param")
    out = {}
    for key, value in given.items():
        hint = sig.hints.get(key, inspect.Parameter.empty)
        converted = convert(key, value, hint, from_text=from_text and key in (params or {}))
        out[key] = _recordable(key, converted, hint)
    return out


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, default=_json_default)
    except (TypeError, ValueError):
        return False
    return True


def _recordable(name: str, value: Any, hint: Any) -> Any:
    """``value`` in a form the run record holds: itself when it is JSON, else the JSON form its
    hint gives it (a Path as text, an Enum as its value, a date in ISO form); the worker turns it
    back with ``handler_params``."""
    if _is_json(value):
        return value
    if hint is not Any and hint is not inspect.Parameter.empty:
        try:
            dumped = _adapter(hint).dump_python(value, mode="json")
        except Exception:  # noqa: BLE001 - no JSON form: reported below
            dumped = None
        if dumped is not None and _is_json(dumped):
            return dumped
    raise ParamError(
        f"parameter {name!r} ({type(value).__name__}) cannot be recorded as JSON; "
        f"pass large or binary data through inputs= instead"
    )


def handler_params(func: Callable, params: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded parameters as the handler's hints want them (on the worker, after ``bind``)."""
    hints = signature_of(func).hints
    return {key: convert(key, value, hints[key], from_text=False) if key in hints else value for key, value in params.items()}


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(type(value).__name__)
