"""``hub://[source/]name[:version][@hash]``: one parser, so every entry point reads references alike."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import HubReferenceError

SCHEME = "hub://"
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_REFERENCE = re.compile(
    rf"^(?:(?P<source>{NAME})/)?(?P<name>(?:{NAME})?)(?::(?P<version>[^@/:]*))?(?:@(?P<hash>[^@/:]*))?$"
)
_HASH = re.compile(r"^[0-9a-f]{8,64}$")
MIN_PIN = 8  # hex characters of a hash prefix


@dataclass(frozen=True)
class HubRef:
    """A parsed hub reference; ``str()`` gives it back in canonical form."""

    name: str
    source: str | None = None
    version: str | None = None
    hash: str | None = None

    def __str__(self) -> str:
        text = SCHEME + (f"{self.source}/" if self.source else "") + self.name
        if self.version:
            text += f":{self.version}"
        if self.hash:
            text += f"@{self.hash}"
        return text

    def matches_hash(self, full_hash: str) -> bool:
        """True when this reference has no pin, or pins ``full_hash`` (or a prefix of it)."""
        return self.hash is None or full_hash.startswith(self.hash)


def is_hub_reference(text: object) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse_ref(text: str, *, scheme_optional: bool = False) -> HubRef:
    """Parse ``hub://[source/]name[:version][@hash]``; ``scheme_optional`` also takes it without ``hub://``."""
    if not isinstance(text, str):
        raise HubReferenceError(f"a hub reference must be a string like hub://describe:1.0.0, got {text!r}")
    body = text
    if body.startswith(SCHEME):
        body = body[len(SCHEME) :]
    elif not scheme_optional:
        raise HubReferenceError(f"{text!r} is not a hub reference; write hub://[source/]name[:version][@hash]")
    match = _REFERENCE.match(body)
    if match is None or not match["name"]:
        raise HubReferenceError(
            f"invalid hub reference {text!r}: expected hub://[source/]name[:version][@hash], where source and "
            "name are letters, digits, '-', '_' or '.' (e.g. hub://describe, hub://team/train:1.2.0@3f2a9c1e)"
        )
    version = match["version"]
    if version is not None:
        from packaging.version import InvalidVersion, Version

        try:
            Version(version)
        except InvalidVersion:
            raise HubReferenceError(
                f"invalid version {version!r} in hub reference {text!r}: use a version number such as 1.2.0"
            ) from None
    pin = match["hash"]
    if pin is not None:
        pin = pin.lower()
        if not _HASH.match(pin):
            raise HubReferenceError(
                f"invalid @hash {match['hash']!r} in hub reference {text!r}: give the function's SHA-256 "
                f"(64 hex characters, or a prefix of at least {MIN_PIN}) as `shoal hub show` prints it"
            )
    return HubRef(name=match["name"], source=match["source"], version=version, hash=pin)
