"""What a Cashu token says about itself: its mint, unit and amount, read without a Cashu library.

A client carries tokens whole, as opaque strings, and never swaps them (the node does); it
only reads their envelope to show and choose them: `cashuA` + base64url(JSON) (NUT-00 V3) or
`cashuB` + base64url(CBOR) (V4), for which a small CBOR reader of the types V4 uses is enough.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from hubnet.identity.errors import ConfigError

MAX_TOKEN_TEXT = 32 * 1024  # hubnet.node.protocol.MAX_TOKEN, which the node refuses beyond
_MAX_DEPTH = 8


class BadToken(ConfigError):
    """The text is not a Cashu token this reader understands."""


@dataclass(frozen=True)
class TokenInfo:
    mint: str
    unit: str
    amount: int  # in `unit`


def read_token(text: str) -> TokenInfo:
    """The mint, unit and amount of a `cashuA...` or `cashuB...` token; BadToken otherwise."""
    text = text.strip()
    if len(text) > MAX_TOKEN_TEXT:
        raise BadToken(f"a token is at most {MAX_TOKEN_TEXT} characters")
    prefix, body = text[:6], text[6:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("a Cashu token's body is base64") from None
    try:
        if prefix == "cashuA":
            return _v3(json.loads(raw))
        if prefix == "cashuB":
            value, end = _cbor(raw, 0, 0)
            if end != len(raw):
                raise BadToken("bytes after the token")
            return _v4(value)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise BadToken(f"not a readable Cashu token ({type(exc).__name__})") from None
    raise BadToken("a Cashu token starts with cashuA or cashuB")


def _amounts(proofs: Any, key: str) -> int:
    if not isinstance(proofs, list) or not proofs:
        raise BadToken("a token holds proofs")
    total = 0
    for proof in proofs:
        amount = proof[key]
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise BadToken("a proof's amount is a positive integer")
        total += amount
    return total


def _v3(value: Any) -> TokenInfo:
    entries = value["token"]
    if not isinstance(entries, list) or len(entries) != 1:
        raise BadToken("a token from one mint")
    mint = entries[0]["mint"]
    unit = value.get("unit") or "sat"
    if not isinstance(mint, str) or not isinstance(unit, str):
        raise BadToken("mint and unit are text")
    return TokenInfo(mint, unit, _amounts(entries[0]["proofs"], "amount"))


def _v4(value: Any) -> TokenInfo:
    mint, unit, keysets = value["m"], value["u"], value["t"]
    if not isinstance(mint, str) or not isinstance(unit, str) or not isinstance(keysets, list):
        raise BadToken("a V4 token has m, u and t")
    return TokenInfo(mint, unit, sum(_amounts(k["p"], "a") for k in keysets))


def _cbor(data: bytes, at: int, depth: int) -> tuple[Any, int]:
    """One CBOR item from `data` at `at` (RFC 8949, definite lengths): (value, end)."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    head = data[at]
    major, info = head >> 5, head & 0x1F
    at += 1
    if info < 24:
        arg = info
    elif info <= 27:
        size = 1 << (info - 24)
        if at + size > len(data):
            raise ValueError("truncated")
        arg = int.from_bytes(data[at : at + size], "big")
        at += size
    else:
        raise ValueError("indefinite lengths are not used by tokens")
    if major == 0:
        return arg, at
    if major == 1:
        return -1 - arg, at
    if major in (2, 3):
        if at + arg > len(data):
            raise ValueError("truncated")
        chunk = data[at : at + arg]
        return (bytes(chunk) if major == 2 else chunk.decode()), at + arg
    if major in (4, 5):
        if arg > len(data):  # every item takes a byte at least
            raise ValueError("truncated")
        items = []
        for _ in range(arg * (2 if major == 5 else 1)):
            item, at = _cbor(data, at, depth + 1)
            items.append(item)
        if major == 4:
            return items, at
        keys = items[::2]
        if not all(isinstance(k, str | int) for k in keys):
            raise ValueError("map keys are text or integers")
        return dict(zip(keys, items[1::2], strict=True)), at
    if major == 7 and info in (20, 21, 22):
        return {20: False, 21: True, 22: None}[info], at
    raise ValueError(f"CBOR type {major}/{info} is not used by tokens")
