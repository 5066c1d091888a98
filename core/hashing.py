"""Canonical serialisation and content hashing of function versions.

What is hashed (format version 1), as canonical JSON (sorted keys, no whitespace, UTF-8):

* ``handler`` — the handler name;
* ``code`` — SHA-256 of the shipped source text after annotations (or, for functions shipped by
  value, a digest of their bytecode and constants);
* ``spec`` — every spec field that differs from its default: requirements, image, env, resources
  (quantities normalised, so "1000m" == "1"), replicas, placement, volumes, backend, timeout,
  retries and default parameters.

Not hashed: the function name, description, labels, tags, timestamps, and the code's origin path.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_FORMAT = 1


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def function_hash(handler: str, code_fingerprint: str, canonical_spec: dict[str, Any]) -> str:
    document = {"format": HASH_FORMAT, "handler": handler, "code": code_fingerprint, "spec": canonical_spec}
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()
