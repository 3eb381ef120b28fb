"""The text form of an attestation, and the file of them a member keeps.

Kept apart from `hubnet.identity.orgs` (which parses and checks attestations) because
`hubnode call` sends its home's attestations with every call without looking inside them
(the node checks them): on a Pi, reading a few lines must not cost the import of the
record parsers.

One attestation is one line: `hubnet-attest1:` and the encoded record in unpadded
URL-safe base64. The member's file holds one per line; blank lines and `#` comments are
ignored.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from hubnet.identity.errors import ConfigError

PREFIX = "hubnet-attest1:"
# Here, not in `hubnet.identity.orgs`, because offers (`hubnet.node.offers`) bound what they
# carry by it, and a discovered call must not import the record parsers to read offers.
MAX_ATTESTATION_LEN = 300  # an attestation encodes to 171..237 bytes (bench/org_sizes.py)


def to_text(record: bytes) -> str:
    return PREFIX + base64.urlsafe_b64encode(record).decode("ascii").rstrip("=")


def from_text(text: str) -> bytes:
    """The encoded record in `text`; ConfigError if it is not an attestation's text form."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise ConfigError(f"not an attestation (it starts with {PREFIX!r}): {text[:40]!r}")
    encoded = text[len(PREFIX) :]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, binascii.Error):
        raise ConfigError("the attestation text is damaged (not base64)") from None


def read_file(path: Path) -> list[tuple[int, bytes]]:
    """(line number, encoded record) for every attestation in `path`; none if it is missing."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                records.append((number, from_text(line)))
            except ConfigError as exc:
                raise ConfigError(f"{path}:{number}: {exc}; delete that line") from None
    return records
