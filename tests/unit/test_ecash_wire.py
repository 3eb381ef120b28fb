"""The node <-> ecash helper pipe codec: round trips, limits, and hostile bytes."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.identity.errors import LocalProtocolError, RemoteProtocolError
from hubnet.node.ecash_wire import (
    MAX_FRAME,
    MAX_MINTS,
    MAX_TOKEN,
    CheckToken,
    EcashError,
    EcashErrorCode,
    Failed,
    FrameDecoder,
    GetBalance,
    Redeem,
    Redeemed,
    Send,
    Token,
    TokenState,
    WalletBalance,
    encode,
    reply_or_raise,
)
from tests.strategies import msgpack_values

urls = st.text(max_size=60)
mints = st.lists(urls, max_size=4).map(tuple)
sats = st.integers(0, 2**53 - 1)
tokens = st.text(max_size=200)
messages = st.one_of(
    st.builds(Redeem, tokens, mints),
    st.builds(Send, sats, mints),
    st.builds(CheckToken, tokens),
    st.builds(GetBalance, mints),
    st.builds(Redeemed, sats, urls),
    st.builds(Token, tokens, sats, urls),
    st.builds(TokenState, st.booleans(), sats, urls),
    st.builds(WalletBalance, st.lists(st.tuples(urls, sats), max_size=4).map(tuple)),
    st.builds(Failed, st.sampled_from(list(EcashErrorCode)), st.text(max_size=80)),
)


@given(st.lists(messages, max_size=6), st.integers(1, 50))
def test_messages_survive_any_split_into_chunks(sent: list[object], chunk: int) -> None:
    wire = b"".join(encode(m) for m in sent)  # type: ignore[arg-type]
    decoder = FrameDecoder()
    received = []
    for i in range(0, len(wire), chunk):
        decoder.feed(wire[i : i + chunk])
        while (message := decoder.next_message()) is not None:
            received.append(message)
    assert received == sent
    assert decoder.buffered == 0


@given(st.binary(max_size=300))
def test_garbage_raises_only_remote_errors(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    with contextlib.suppress(RemoteProtocolError):
        while decoder.next_message() is not None:
            pass


@given(msgpack_values)
def test_any_msgpack_body_is_a_message_or_a_remote_error(value: object) -> None:
    body = msgpack.packb(value)
    decoder = FrameDecoder()
    decoder.feed(len(body).to_bytes(4, "big") + body)
    with contextlib.suppress(RemoteProtocolError):
        decoder.next_message()


def test_a_frame_above_the_limit_is_refused_by_its_length_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_message()


def test_what_the_other_end_would_refuse_is_never_sent() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Redeem("cashuB" + "x" * MAX_TOKEN, ()))
    with pytest.raises(LocalProtocolError):
        encode(GetBalance(("http://mint",) * (MAX_MINTS + 1)))
    with pytest.raises(LocalProtocolError):
        encode(Send(-1, ()))


def test_a_failure_is_a_typed_error_and_a_wrong_answer_a_protocol_error() -> None:
    with pytest.raises(EcashError) as spent:
        reply_or_raise(Redeem("t", ()), Failed("spent", "already spent"))
    assert spent.value.code is EcashErrorCode.SPENT
    with pytest.raises(EcashError) as unknown:
        reply_or_raise(Redeem("t", ()), Failed("from-the-future", "?"))
    assert unknown.value.code is EcashErrorCode.FAILED
    with pytest.raises(RemoteProtocolError):
        reply_or_raise(Redeem("t", ()), TokenState(True, 1, "m"))
    assert reply_or_raise(CheckToken("t"), TokenState(False, 1, "m")) == TokenState(False, 1, "m")


def test_only_the_helper_process_imports_the_cashu_library() -> None:
    # Importing cashu rewrites os.environ from ./.env, sys.tracebacklimit and the logging of
    # whatever process imports it: the node, `hubnode call` and `hubnode deposit` must not.
    modules = "hubnet.node.run, hubnet.node.cashier, hubnet.cli, hubnet.wallet_cli, hubnet.pay, hubnet.wallet"
    probe = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'cashu'))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
