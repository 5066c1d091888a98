"""Canonical serialisation and content hashing of function versions.

What is hashed (format version 1), as canonical JSON (sorted keys, no whitespace, UTF-8):

* ``handler`` — the handler name;
* ``code`` — SHA-256 of the shipped source text after annotations, line endings normalised to
  ``\\n`` (the text of ignored lines and of lines outside the start-code/end-code region does not
  count); for functions shipped by value, ``shoal.code.bytecode_digest`` instead: bytecode,
  constants, defaults, closure values and the globals the code reads (Python major.minor included);
* ``spec`` — every spec field that differs from its default, as ``shoal.spec.canonical_spec`` gives
  it: requirements, image, env (values and secret references; secret values are never in a spec),
  resources (quantities normalised, so "1000m" == "1"), replicas, placement, volumes (with their
  type), backend, timeout, retries and default parameters. Unset replicas (every slot of the
  backend) are absent, so specs that never set them kept their hash when that default changed from
  (1, 1); any replicas set, (1, 1) included, are hashed.

Not hashed: the function name, description, labels, tags, timestamps, the code's origin path and
the line the shipped region starts at.
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
