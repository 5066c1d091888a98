"""Step cache keys and options: which earlier run a call may reuse instead of running again.

A key is the SHA-256 of canonical JSON (sorted keys, no whitespace) of the function's hash, its
parameters after conversion (defaults included), each input's content SHA-256 and an optional
``cache_version``. Values are encoded by what they are, never by a pickle (whose bytes differ between
processes): plain JSON values as themselves, NumPy values by dtype, shape and the SHA-256 of their
bytes, stored artifacts and data items by their content SHA-256. A value with none of these forms
(an arbitrary object) makes the call uncacheable: :class:`~shoal.errors.UncacheableError` names it.

No database here: the lookup and the claim are ``shoal.cached_runs`` and ``shoal.store.cache``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, ClassVar

from .errors import ParamError, UncacheableError

KEY_FORMAT = 1  # bump when the canonical form changes: old keys then simply stop matching
_HEX = frozenset("0123456789abcdef")


@dataclasses.dataclass(frozen=True)
class ContentDigest:
    """A value known only by the SHA-256 of its content (hex): a stored input, or a step output a
    pipeline has not produced yet (``ContentDigest.of("ref", producer_key, "model")``)."""

    sha256: str

    def __post_init__(self) -> None:
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64 and set(self.sha256) <= _HEX):
            raise ValueError(f"ContentDigest takes a SHA-256 as 64 lowercase hex digits, got {self.sha256!r}")

    @classmethod
    def of(cls, *parts: str) -> ContentDigest:
        """The digest of some strings (joined unambiguously): a stable name for a value to come."""
        return cls(hashlib.sha256(json.dumps(list(parts)).encode("utf-8")).hexdigest())


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    """How one call uses the step cache (see ``from_call`` for the keyword arguments)."""

    enabled: bool = False
    refresh: bool = False
    ignore: frozenset[str] = frozenset()
    expires: timedelta | None = None
    version: str | None = None

    OFF: ClassVar[CacheOptions]

    @classmethod
    def from_call(
        cls,
        cache: bool | None = None,
        refresh: bool = False,
        cache_ignore: Iterable[str] | None = None,
        cache_expires: float | timedelta | None = None,
        cache_version: str | int | None = None,
        *,
        default: bool = False,
    ) -> CacheOptions:
        """The options of ``fn.run/submit/map(cache=..., refresh=..., cache_ignore=...,
        cache_expires=..., cache_version=...)``; ``default`` is ``cache`` when not given (on in
        pipelines, off elsewhere). Bad values are a ParamError naming the argument."""
        if cache is not None and not isinstance(cache, bool):
            raise ParamError(f"cache must be True or False, got {cache!r}")
        if not isinstance(refresh, bool):
            raise ParamError(f"refresh must be True or False, got {refresh!r}")
        enabled = default if cache is None else cache
        ignore = _ignore_names(cache_ignore)
        expires = _expiry(cache_expires)
        if cache_version is not None and (isinstance(cache_version, bool) or not isinstance(cache_version, (str, int))):
            raise ParamError(f"cache_version must be a string or an integer, got {type(cache_version).__name__}")
        if not enabled:
            given = [name for name, value in (("refresh", refresh), ("cache_ignore", ignore),
                     ("cache_expires", expires), ("cache_version", cache_version)) if value]  # fmt: skip
            if given:
                raise ParamError(f"{', '.join(given)} has no effect with caching off; pass cache=True as well")
            return cls.OFF
        version = None if cache_version is None else str(cache_version)
        return cls(True, refresh, ignore, expires, version)


CacheOptions.OFF = CacheOptions()


def _ignore_names(names: Iterable[str] | None) -> frozenset[str]:
    if names is None:
        return frozenset()
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ParamError(f"cache_ignore takes a list of parameter names, e.g. ['verbose'], got {names!r}")
    names = list(names)
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise ParamError(f"cache_ignore takes parameter names (strings), got {bad[0]!r}")
    return frozenset(names)


def _expiry(value: float | timedelta | None) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ParamError(f"cache_expires takes seconds or a timedelta, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ParamError(f"cache_expires must be a finite number of seconds >= 0, got {value!r}")
    return timedelta(seconds=seconds)


def cache_key(
    function_hash: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    version: str | None = None,
) -> str:
    """The cache key of a call of the function ``function_hash`` (SHA-256, 64 hex digits).

    ``params`` are the converted parameters, defaults included; ``inputs`` map names to stored
    ``Artifact``s, ``DataItem``s or ``ContentDigest``s. Names in ``ignore`` are left out; one that is
    neither a parameter nor an input is a ParamError (a typo would silently key on it). Raises
    UncacheableError for a value with no stable content form.
    """
    ignored = set(ignore)
    unknown = sorted(ignored - set(params) - set(inputs))
    if unknown:
        known = ", ".join(sorted({*params, *inputs})) or "none"
        raise ParamError(
            f"cache_ignore names {', '.join(map(repr, unknown))}, not a parameter or input (they are: {known})"
        )
    document = {
        "v": KEY_FORMAT,
        "function": function_hash,
        "params": {name: _canonical(value, name) for name, value in params.items() if name not in ignored},
        "inputs": {name: _content(value, name) for name, value in inputs.items() if name not in ignored},
        "version": version,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_defaults(handler: Callable | None, params: Mapping[str, Any], inputs: Iterable[str] = ()) -> dict[str, Any]:
    """``params`` plus the handler's own defaults for parameters not given, converted as ``fn.run``
    converts values, so an explicit default and an omitted one make the same key. A default with no
    stable content form is left out: the function hash covers the code that sets it. Without a
    handler (its code needs a package this process lacks) the parameters stay as given."""
    if handler is None:
        return dict(params)
    from .params import convert, signature_of

    sig = signature_of(handler)
    skip = {*params, *inputs}
    out = {}
    for name, parameter in inspect.signature(handler).parameters.items():
        if name in skip or name not in sig.names or parameter.default is parameter.empty:
            continue
        try:
            value = convert(name, parameter.default, sig.hints.get(name, parameter.empty), from_text=False)
            _canonical(value, name)
        except (UncacheableError, ParamError):
            continue
        out[name] = value
    out.update(params)
    return out


def _content(value: Any, where: str) -> str:
    """The content SHA-256 of an input: a stored artifact, a data item, or a digest."""
    sha = _stored_sha(value)
    if sha is None:
        raise UncacheableError(f"input {where!r} ({type(value).__name__}) has no content hash")
    if not sha:
        raise UncacheableError(f"input {where!r} is an artifact recorded without a SHA-256 ({value.url})")
    return sha


def _stored_sha(value: Any) -> str | None:
    """The content SHA-256 a stored value carries ("" if it lacks one), or None for other values."""
    from .artifacts import Artifact
    from .data_item import DataItem

    if isinstance(value, ContentDigest):
        return value.sha256
    if isinstance(value, DataItem):
        value = value.artifact
    if isinstance(value, Artifact):
        return value.sha256
    return None


def _canonical(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as JSON that depends on its content only; UncacheableError if it has no such form."""
    if value is None or isinstance(value, (bool, str)):
        return str.__str__(value) if isinstance(value, str) else value  # str enums: their text
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"$float": repr(value)}
    if depth > 100:
        raise UncacheableError(f"parameter {where!r} nests more than 100 levels deep")
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UncacheableError(f"parameter {where!r} has a key of type {type(key).__name__} (not a string)")
            out[key] = _canonical(item, f"{where}[{key!r}]", depth + 1)
        return out
    sha = _stored_sha(value)
    if sha:
        return {"$content": sha}
    if type(value).__module__ == "numpy":
        return _numpy(value, where, depth)
    raise UncacheableError(f"parameter {where!r} is a {type(value).__qualname__}, which has no stable content hash")


def _numpy(value: Any, where: str, depth: int) -> Any:
    """A NumPy array by dtype, shape and the SHA-256 of its bytes; a NumPy scalar as its Python value."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UncacheableError(f"parameter {where!r} is a NumPy array of Python objects (no stable bytes)")
        data = np.ascontiguousarray(value)
        return {"$ndarray": [data.dtype.str, list(data.shape), hashlib.sha256(data.tobytes()).hexdigest()]}
    if isinstance(value, np.generic):
        if isinstance(value, np.datetime64):
            return {"$datetime64": str(value)}
        item = value.item()
        if type(item).__module__ != "numpy":
            return _canonical(item, where, depth + 1)
    raise UncacheableError(f"parameter {where!r} is a NumPy {type(value).__name__}, which has no stable content hash")
