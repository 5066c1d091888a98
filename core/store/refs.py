"""Parse and check the names users type: function refs, tags, hash and uid prefixes.

Kept apart from the SQL so the rules (and their error messages) live in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError

TAG_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
HEX_PATTERN = re.compile(r"[0-9a-f]+")
MIN_PREFIX = 4
LATEST = "latest"


@dataclass(frozen=True)
class FunctionRef:
    """A parsed ``name``, ``name:tag`` or ``name@hash-prefix``; exactly one of tag/hash is set."""

    name: str
    tag: str | None = None
    hash_prefix: str | None = None


def check_name(name: str) -> str:
    """A function name usable in refs: non-empty, no ``:``/``@``/whitespace, at most 255 chars."""
    if not isinstance(name, str) or not name or len(name) > 255 or re.search(r"[:@\s]", name):
        raise SpecError(f"invalid function name {name!r}: use 1-255 characters without ':', '@' or spaces")
    return name


def check_tag(tag: str) -> str:
    """A tag name: letters, digits, ``_``, ``.`` and ``-`` (1-128 characters)."""
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
        raise SpecError(f"invalid tag {tag!r}: use 1-128 letters, digits, '_', '.' or '-'")
    return tag


def check_hash(value: str) -> str:
    """A full function hash: 64 lowercase hex digits (SHA-256)."""
    if not isinstance(value, str) or not HASH_PATTERN.fullmatch(value):
        raise SpecError(f"invalid function hash {value!r}: expected 64 lowercase hex digits (SHA-256)")
    return value


def check_prefix(prefix: str, what: str, *, hex_only: bool) -> str:
    """A prefix of a hash (lower-cased hex) or of a uid, at least 4 characters."""
    value = prefix.strip() if isinstance(prefix, str) else ""
    if hex_only:
        value = value.lower()
    if len(value) < MIN_PREFIX or (hex_only and not HEX_PATTERN.fullmatch(value)):
        kind = "hex digits" if hex_only else "characters"
        raise SpecError(f"invalid {what} {prefix!r}: give at least {MIN_PREFIX} {kind}")
    return value


def parse_function_ref(ref: str) -> FunctionRef:
    """Split ``name``, ``name:tag`` or ``name@hash`` (a bare name means the ``latest`` tag)."""
    if not isinstance(ref, str) or not ref.strip():
        raise SpecError(f"invalid function reference {ref!r}: use name, name:tag or name@hash")
    ref = ref.strip()
    if "@" in ref:
        name, _, prefix = ref.partition("@")
        return FunctionRef(check_name(name), hash_prefix=check_prefix(prefix, "hash in " + repr(ref), hex_only=True))
    if ":" in ref:
        name, _, tag = ref.partition(":")
        return FunctionRef(check_name(name), tag=check_tag(tag))
    return FunctionRef(check_name(ref), tag=LATEST)
