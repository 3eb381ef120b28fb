"""What the node and its ecash helper process say over the helper's stdin and stdout.

The node never imports the Cashu library (it rewrites the importing process's environment,
logging and tracebacks, and takes over a second to import): a helper process,
`python -m hubnet.node.ecash_worker`, owns the node's Cashu wallet and does the swaps at the
mints. This module is the pipe's sans-IO codec, used by both ends: each message is a 4-byte
big-endian length and a msgpack array `[kind, ...fields]`, at most MAX_FRAME bytes. The node
sends one request and reads its one reply before sending the next; a reply that breaks the
codec is a RemoteProtocolError, after which the node restarts the helper.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from hubnet.identity.errors import HubnetError, LocalProtocolError, RemoteProtocolError
from hubnet.node.protocol import MAX_TOKEN

MAX_MINTS = 64
MAX_URL = 512
MAX_TEXT = 1024
MAX_FRAME = MAX_TOKEN + MAX_MINTS * MAX_URL + 1024
_LENGTH_BYTES = 4


class EcashErrorCode(enum.StrEnum):
    """Why the helper could not do what it was asked; on the pipe as the text."""

    BAD_TOKEN = "bad-token"  # not a Cashu token this wallet can read
    UNTRUSTED_MINT = "untrusted-mint"  # from a mint the node does not trust: nothing was redeemed
    WRONG_UNIT = "wrong-unit"  # not in sat
    SPENT = "spent"  # the mint says it was already spent
    MINT_UNAVAILABLE = "mint-unavailable"  # the mint could not be reached: the token is unspent
    INSUFFICIENT = "insufficient"  # the node's wallet holds less than asked for
    FAILED = "failed"  # anything else the mint or the wallet refused


class EcashError(HubnetError):
    """The ecash helper refused or failed a request; `code` says how (an EcashErrorCode)."""

    def __init__(self, code: EcashErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Redeem:
    """Swap `token` for fresh proofs in the node's wallet, if it is in sat from one of `mints`."""

    token: str
    mints: tuple[str, ...]


@dataclass(frozen=True)
class Send:
    """A fresh token of `amount` sat from the node's wallet, from the first of `mints` that holds enough."""

    amount: int
    mints: tuple[str, ...]


@dataclass(frozen=True)
class CheckToken:
    """Whether the mint has seen `token`'s proofs spent (to settle a deposit a crash interrupted)."""

    token: str


@dataclass(frozen=True)
class GetBalance:
    """What the node's wallet holds at each of `mints`."""

    mints: tuple[str, ...]


@dataclass(frozen=True)
class Redeemed:
    amount: int  # sat now in the node's wallet
    mint: str


@dataclass(frozen=True)
class Token:
    token: str
    amount: int
    mint: str


@dataclass(frozen=True)
class TokenState:
    spent: bool  # every proof of it is spent at its mint
    amount: int  # sat
    mint: str


@dataclass(frozen=True)
class WalletBalance:
    per_mint: tuple[tuple[str, int], ...]  # (mint URL, sat)

    @property
    def total(self) -> int:
        return sum(amount for _, amount in self.per_mint)


@dataclass(frozen=True)
class Failed:
    code: str
    message: str


Request = Redeem | Send | CheckToken | GetBalance
Reply = Redeemed | Token | TokenState | WalletBalance | Failed
# Which reply answers which request (a Failed answers any).
REPLY_TO: dict[type[Request], type[Reply]] = {
    Redeem: Redeemed,
    Send: Token,
    CheckToken: TokenState,
    GetBalance: WalletBalance,
}


def _text(v: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise RemoteProtocolError(f"expected a string of at most {limit} characters")
    return v


def _amount(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 53:
        raise RemoteProtocolError("expected an amount in sat")
    return v


def _mints(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > MAX_MINTS:
        raise RemoteProtocolError(f"expected a list of at most {MAX_MINTS} mints")
    return tuple(_text(m, MAX_URL) for m in v)


def _decode_balance(f: list[Any]) -> WalletBalance:
    (items,) = f
    if not isinstance(items, list) or len(items) > MAX_MINTS:
        raise RemoteProtocolError(f"at most {MAX_MINTS} mints")
    pairs = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2:
            raise RemoteProtocolError("a balance is [mint, sat]")
        pairs.append((_text(item[0], MAX_URL), _amount(item[1])))
    return WalletBalance(tuple(pairs))


def _decode_state(f: list[Any]) -> TokenState:
    if not isinstance(f[0], bool):
        raise RemoteProtocolError("expected true or false")
    return TokenState(f[0], _amount(f[1]), _text(f[2], MAX_URL))


# kind -> (class, field count, fields of a message, message of fields)
_CODECS: dict[str, tuple[type[Any], int, Any, Any]] = {
    "redeem": (
        Redeem,
        2,
        lambda m: [m.token, list(m.mints)],
        lambda f: Redeem(_text(f[0], MAX_TOKEN), _mints(f[1])),
    ),
    "send": (Send, 2, lambda m: [m.amount, list(m.mints)], lambda f: Send(_amount(f[0]), _mints(f[1]))),
    "check": (CheckToken, 1, lambda m: [m.token], lambda f: CheckToken(_text(f[0], MAX_TOKEN))),
    "balance": (GetBalance, 1, lambda m: [list(m.mints)], lambda f: GetBalance(_mints(f[0]))),
    "redeemed": (
        Redeemed,
        2,
        lambda m: [m.amount, m.mint],
        lambda f: Redeemed(_amount(f[0]), _text(f[1], MAX_URL)),
    ),
    "token": (
        Token,
        3,
        lambda m: [m.token, m.amount, m.mint],
        lambda f: Token(_text(f[0], MAX_TOKEN), _amount(f[1]), _text(f[2], MAX_URL)),
    ),
    "state": (TokenState, 3, lambda m: [m.spent, m.amount, m.mint], _decode_state),
    "wallet": (WalletBalance, 1, lambda m: [[list(p) for p in m.per_mint]], _decode_balance),
    "failed": (Failed, 2, lambda m: [m.code, m.message], lambda f: Failed(_text(f[0]), _text(f[1]))),
}
_KIND_OF = {spec[0]: kind for kind, spec in _CODECS.items()}


def encode(message: Request | Reply) -> bytes:
    """One framed message; LocalProtocolError if the other end would refuse it."""
    kind = _KIND_OF[type(message)]
    body = bytes(msgpack.packb([kind, *_CODECS[kind][2](message)]))
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"a {kind} message of {len(body)} bytes exceeds {MAX_FRAME}")
    try:
        decode_body(body)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"{kind} breaks the pipe's limits: {exc}") from None
    return len(body).to_bytes(_LENGTH_BYTES, "big") + body


def decode_body(body: bytes) -> Request | Reply:
    """The message in one frame's body."""
    try:
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=True, max_bin_len=0, max_map_len=0, max_ext_len=0
        )
    except Exception as exc:  # msgpack raises many types for malformed input
        raise RemoteProtocolError(f"malformed message: {exc}") from None
    if not (isinstance(obj, list) and obj and isinstance(obj[0], str)):
        raise RemoteProtocolError("a message is [kind, ...fields]")
    spec = _CODECS.get(obj[0])
    if spec is None:
        raise RemoteProtocolError(f"unknown message kind {obj[0][:40]!r}")
    cls, arity, _, decoder = spec
    if len(obj) != arity + 1:
        raise RemoteProtocolError(f"{obj[0]} has {arity} fields")
    message = decoder(obj[1:])
    assert isinstance(message, cls)
    return message  # type: ignore[no-any-return]


class FrameDecoder:
    """Incremental: feed bytes, take whole messages; a frame above MAX_FRAME is refused at its length."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> Request | Reply | None:
        if len(self._buffer) < _LENGTH_BYTES:
            return None
        size = int.from_bytes(self._buffer[:_LENGTH_BYTES], "big")
        if size > MAX_FRAME:
            raise RemoteProtocolError(f"a frame of {size} bytes exceeds {MAX_FRAME}")
        if len(self._buffer) < _LENGTH_BYTES + size:
            return None
        body = bytes(self._buffer[_LENGTH_BYTES : _LENGTH_BYTES + size])
        del self._buffer[: _LENGTH_BYTES + size]
        return decode_body(body)

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def reply_or_raise(request: Request, reply: Request | Reply) -> Reply:
    """`reply` if it answers `request`; an EcashError if it is a Failed; else RemoteProtocolError."""
    if isinstance(reply, Failed):
        try:
            code = EcashErrorCode(reply.code)
        except ValueError:
            code = EcashErrorCode.FAILED
        raise EcashError(code, reply.message)
    if type(reply) is not REPLY_TO[type(request)]:
        raise RemoteProtocolError(
            f"the ecash helper answered {type(request).__name__} with {type(reply).__name__}"
        )
    return reply
