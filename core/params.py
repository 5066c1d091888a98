"""Checking run parameters against the handler's signature and type hints before anything runs."""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import ParamError
from .numpy_params import as_array, is_array, is_array_hint, is_numpy_or_pandas, param_value


@dataclass(frozen=True)
class Signature:
    """What a handler accepts: its context parameter, named parameters and their hints."""

    context_param: str | None
    names: tuple[str, ...]
    required: frozenset[str]
    hints: Mapping[str, Any]
    accepts_any: bool  # **kwargs
    #: the first parameter when it takes an Optuna trial (named ``trial`` or typed ``optuna.Trial``):
    #: Optuna's objective form; the run's other parameters are that trial's values
    trial_param: str | None = None
    #: the parameters whose hint wants a NumPy array (found once here: ``handler_params`` runs per run)
    array_params: frozenset[str] = frozenset()


#: first-parameter names that receive the run's context: shoal's ``ctx`` and MLRun's ``context``
CONTEXT_NAMES = ("ctx", "context")


def _is_context_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.split(".")[-1] == "Context"
    return getattr(annotation, "__name__", None) == "Context" and getattr(annotation, "__module__", "").startswith(
        "shoal"
    )


#: what Optuna's trial classes are called (``optuna.Trial``, ``optuna.trial.Trial``, ``FixedTrial``...)
_TRIAL_CLASSES = ("Trial", "BaseTrial", "FixedTrial", "FrozenTrial")


def _is_trial_annotation(annotation: Any) -> bool:
    """An Optuna trial type, by name only (no Optuna import): ``optuna.Trial``, or its text."""
    if isinstance(annotation, str):
        *module, name = annotation.split(".")
        return name in _TRIAL_CLASSES and (not module or module[0] == "optuna")
    return getattr(annotation, "__name__", None) in _TRIAL_CLASSES and getattr(annotation, "__module__", "").startswith(
        "optuna"
    )


def _takes_trial(param: inspect.Parameter, annotation: Any) -> bool:
    """A first parameter named ``trial`` (unannotated or typed as a trial), or typed as a trial."""
    if _is_trial_annotation(annotation):
        return True
    return param.name == "trial" and annotation is inspect.Parameter.empty


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
    context_param = trial_param = None
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        first = params[0]
        if first.name in CONTEXT_NAMES or _is_context_annotation(hints.get(first.name, first.annotation)):
            context_param = first.name
            params = params[1:]
        elif _takes_trial(first, hints.get(first.name, first.annotation)):
            trial_param = first.name
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
    arrays = frozenset(k for k, v in hints.items() if is_array_hint(v))
    return Signature(context_param, tuple(names), frozenset(required), hints, accepts_any, trial_param, arrays)


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
    if type(value) is hint and hint in (int, float, str, bool):  # pydantic would return it unchanged
        return value
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
    """Validate and convert ``params`` for ``func``; return the parameters the run records (a
    NumPy or pandas value as the handler gets it: the record takes its JSON form, see
    ``shoal.numpy_params``).

    Unknown names, missing required parameters, unconvertible values and values that cannot be
    recorded as JSON are ``ParamError``s raised before the run is created.
    """
    sig = signature_of(func)
    given = dict(defaults or {})
    given.update(params or {})
    for key in given:
        if not isinstance(key, str):
            raise ParamError(f"parameter names must be strings, got {key!r}")
    if not sig.accepts_any and sig.trial_param is None:  # a trial objective's other values are its trial's
        unknown = sorted(set(given) - set(sig.names))
        if unknown and sig.context_param in unknown:  # e.g. MLRun's ``context``: never a parameter
            raise ParamError(
                f"unknown parameter {sig.context_param!r} for {handler}: its first parameter receives the run's "
                f"context (shoal.Context), never a value; drop {sig.context_param!r} from the parameters"
            )
        if unknown:
            valid = ", ".join(n for n in sig.names if n not in input_names) or "none"
            raise ParamError(
                f"unknown parameter {unknown[0]!r} for {handler}; it accepts: {valid}"
                + ("" if from_text else _wrap_hint(func, input_names))
            )
    if sig.context_param is None and not sig.accepts_any:
        stray = sorted(set(input_names) - set(sig.names))
        if stray:  # it could reach the handler neither as an argument nor through ctx.inputs
            raise ParamError(
                f"input {stray[0]!r} matches no parameter of {handler}; name it after a parameter "
                f"({', '.join(sig.names) or 'none'}) or add a first parameter ctx (or context) and read "
                f"ctx.inputs[key] (or context.get_input(key))"
            )
    missing = sorted(sig.required - set(given) - set(input_names))
    if missing:
        raise ParamError(f"missing required parameter {missing[0]!r} for {handler}; pass it with params= or --param")
    out = {}
    for key, value in given.items():
        hint = sig.hints.get(key, inspect.Parameter.empty)
        text = from_text and key in (params or {})
        if is_array_hint(hint):  # checked here, made an array here and again on the worker
            converted = as_array(key, _parse_text(value) if text else value, hint)
        else:
            if is_array(value) and hint is not Any and hint is not inspect.Parameter.empty:
                value = value.tolist()  # e.g. a list[float] parameter: the hint decides, not the dtype
            converted = convert(key, value, hint, from_text=text)
        out[key] = _recordable(key, converted, hint)
    return out


_JSON_SCALARS = frozenset({int, str, bool, float, type(None)})


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, default=_json_default)
    except (TypeError, ValueError):
        return False
    return True


def _recordable(name: str, value: Any, hint: Any) -> Any:
    """``value`` in a form the run record holds: itself when it is JSON, else the JSON form its
    hint gives it (a Path as text, an Enum as its value, a date in ISO form); the worker turns it
    back with ``handler_params``. A NumPy or pandas value is checked and kept as it is (see
    ``shoal.numpy_params``): the record holds its JSON form, the handler gets the value."""
    if type(value) in _JSON_SCALARS:
        return value  # most parameters: no JSON round trip needed to know
    if is_numpy_or_pandas(value):
        return param_value(name, value)
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
    """Recorded parameters as the handler's hints want them (on the worker, after ``bind``): a
    JSON list for an ``np.ndarray`` parameter becomes an array again."""
    return params_for(signature_of(func), params)


def params_for(sig: Signature, params: Mapping[str, Any]) -> dict[str, Any]:
    """``handler_params`` for a handler whose signature the caller has at hand (``execute``)."""
    hints, arrays = sig.hints, sig.array_params
    if not hints:
        return dict(params)
    out = {}
    for key, value in params.items():
        hint = hints.get(key)
        if hint is None:
            out[key] = value
        elif type(value) is hint and hint in _PLAIN:  # most parameters: nothing to convert
            out[key] = value
        elif key in arrays:  # a recorded JSON list (a re-run) becomes an array again
            out[key] = as_array(key, value, hint)
        else:
            out[key] = convert(key, value, hint, from_text=False)
    return out


_PLAIN = frozenset({int, float, str, bool})


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(type(value).__name__)


@lru_cache(maxsize=256)
def positional_names(func: Callable) -> tuple[str, ...]:
    """The parameters positional arguments fill, in order, after the context (or trial)
    parameter: where ``f(x, y)`` would put ``x`` and ``y``."""
    sig = signature_of(func)
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return ()
    if sig.context_param is not None or sig.trial_param is not None:
        params = params[1:]
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def values_as_params(
    func: Callable,
    values: tuple[Any, ...],
    *,
    input_names: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
    handler: str = "handler",
    call: str = "fn.map",
) -> dict[str, Any]:
    """Plain values as the parameter set they stand for, as Dask's ``client.map(f, xs, ys)`` and
    Ray's ``f.remote(x)`` call ``f(x, y)``: in order onto the handler's positional parameters after
    its context, skipping those ``inputs=`` gives. One value thus goes to the handler's single
    parameter, or to its first required one (Python puts required parameters first)."""
    free = [name for name in positional_names(func) if name not in input_names]
    if len(values) > len(free):
        if not free:
            raise ParamError(
                f"{call} got a plain value ({_short(values[0])}) but {handler} has no positional parameter to "
                "give it to; pass parameters as a mapping of name -> value, e.g. {'name': value}"
            )
        raise ParamError(
            f"{call} gives {len(values)} values per run but {handler} takes {len(free)} positional "
            f"parameter{'s' if len(free) > 1 else ''} ({', '.join(free)}); give one iterable per parameter"
        )
    params = dict(zip(free, values))
    missing = [n for n in free if n in signature_of(func).required and n not in params and n not in (defaults or {})]
    if missing:
        filled = ", ".join(repr(n) for n in params)
        example = f"{{{free[0]!r}: x, {missing[0]!r}: y}}"
        fix = (
            f"one iterable per parameter (fn.map(xs, ys), as Dask's client.map), a default (defaults=), "
            f"or parameter sets ({example})"
            if call == "fn.map"
            else f"a mapping of name -> value ({example})"
        )
        raise ParamError(f"{call} gives {handler} {filled} only, and it also requires {missing[0]!r}; pass {fix}")
    return params


def _wrap_hint(func: Callable, input_names: tuple[str, ...]) -> str:
    """For a one-parameter handler given a mapping that is not a parameter set: how to pass the
    mapping itself (a mapping is always read as a parameter set)."""
    free = [name for name in positional_names(func) if name not in input_names]
    names = [name for name in signature_of(func).names if name not in input_names]
    if len(free) != 1 or names != free:
        return ""
    return (
        f". A mapping is read as a parameter set; to pass a mapping as the value of {free[0]!r}, "
        f"wrap it: {{{free[0]!r}: value}}, or fn.map([{{{free[0]!r}: d}} for d in items])"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
