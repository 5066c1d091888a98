"""A hub version's files <-> a Function: ``function.yaml`` (read with ``yaml.safe_load`` only) and
the source file it names.

``function.yaml`` is shoal's function document, whose ``code`` may name a file of the same folder
(``code: {file: describe.py}``) instead of holding the text, so the source stays readable in the hub.
Building a Function runs none of its code.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from ..errors import CodeError, HubVerificationError, SpecError

if TYPE_CHECKING:  # pragma: no cover
    from ..function import Function

DOCUMENT = "function.yaml"
REF_LABEL = "hub"  # the resolved hub://source/name:version@hash, recorded with the function


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_document(raw: bytes, where: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise HubVerificationError(f"{where}: {DOCUMENT} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HubVerificationError(
            f"{where}: {DOCUMENT} must be a function document (a mapping with name, handler, code)"
        )
    return data


def code_file(document: dict[str, Any]) -> str | None:
    """The source file ``function.yaml`` names, if its code is not inline."""
    code = document.get("code")
    if isinstance(code, dict) and "file" in code:
        name = code["file"]
        return name if isinstance(name, str) else None
    return None


def build_function(raw: bytes, files: dict[str, bytes], where: str, ref: str | None = None) -> Function:
    """The Function that ``function.yaml`` (``raw``) and the folder's ``files`` describe, labelled with ``ref``.

    ``where`` names the version in messages and is the code's origin in tracebacks.
    """
    from ..function import Function
    from ..source_files import apply_annotations, check_defined, parse

    document = read_document(raw, where)
    code = document.get("code")
    if isinstance(code, dict) and "file" in code:
        name = code_file(document)
        if name is None or name not in files:
            listed = ", ".join(sorted(files)) or "none"
            raise HubVerificationError(
                f"{where}: code file {code.get('file')!r} is not in the version's files ({listed})"
            )
        extra = sorted(set(code) - {"file", "first_line"})
        if extra:
            raise HubVerificationError(f"{where}: unknown code field {extra[0]!r}; use code: {{file: NAME.py}}")
        try:
            text, first = apply_annotations(files[name].decode("utf-8"))
        except UnicodeDecodeError:
            raise HubVerificationError(f"{where}: {name} is not UTF-8 text") from None
        first = code.get("first_line", first)
        origin = f"{where}/{name}"
        try:
            check_defined(parse(text, origin, first), str(document.get("handler", "")), origin)
        except CodeError as exc:
            raise HubVerificationError(f"{where}: {exc}") from None
        document["code"] = {"kind": "source", "text": text, "origin": origin, "first_line": first}
    elif isinstance(code, dict):
        document["code"] = {**code, "origin": f"{where}/{DOCUMENT}"}
    if ref is not None:
        metadata = dict(document.get("metadata") or {})
        labels = metadata.get("labels") or {}
        if not isinstance(labels, dict):
            raise HubVerificationError(f"{where}: metadata.labels must be a mapping of strings")
        metadata["labels"] = {**labels, REF_LABEL: ref}
        document["metadata"] = metadata
    try:
        return Function.from_dict(document, verify=True)
    except (SpecError, CodeError) as exc:
        raise HubVerificationError(f"{where}: {DOCUMENT} is not a valid function document: {exc}") from None


def source_file_name(fn: Function) -> str:
    """The file name a published function's source gets: its own file's name, else ``<name>.py``."""
    origin = fn.code.origin or ""
    base = re.split(r"[\\/]", origin)[-1]
    if base.endswith(".py") and re.match(r"^[A-Za-z_][A-Za-z0-9_]*\.py$", base):
        return base
    return re.sub(r"[^A-Za-z0-9_]", "_", fn.name) + ".py"


def function_files(fn: Function) -> dict[str, bytes]:
    """The files of a published version: ``function.yaml`` and, for source code, the source file."""
    import yaml

    document = fn.to_dict()
    metadata = document.get("metadata") or {}
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k != REF_LABEL}
    if "labels" in metadata:
        metadata = {**metadata, "labels": labels} if labels else {k: v for k, v in metadata.items() if k != "labels"}
        if metadata:
            document["metadata"] = metadata
        else:
            document.pop("metadata")
    files: dict[str, bytes] = {}
    code = fn.code
    if code.kind == "source":
        name = source_file_name(fn)
        files[name] = code.text.encode("utf-8")
        document["code"] = {"file": name} if code.first_line == 1 else {"file": name, "first_line": code.first_line}
    else:
        document["code"] = {k: v for k, v in code.to_dict().items() if k != "origin"}
    files[DOCUMENT] = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode("utf-8")
    return files
