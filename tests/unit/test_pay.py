"""Pay-per-call's decisions (hubnet.pay), which the blocking and the Trio callers share."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubnet.client import PaymentRequired
from hubnet.commands import Context
from hubnet.dht.addresses import DirectAddress
from hubnet.identity.errors import ConfigError, HandshakeError, Rejected, TransportError
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.node.naming import Target
from hubnet.node.protocol import RejectCode
from hubnet.pay import UNSPENT, no_token, token_size, token_still_ours
from hubnet.trio_api import asked_for_money
from hubnet.trust import PinnedKeys

NODE = Identity.generate().public_key
WHERE = DirectAddress("127.0.0.1", 7070)


def asked(needed: int) -> PaymentRequired:
    return PaymentRequired("no account here", needed, Target(WHERE, NODE))


@pytest.mark.parametrize(("needed", "sat"), [(1, 1), (1000, 1), (1001, 2), (3000, 3), (2_500_500, 2501)])
def test_the_token_covers_the_hold_in_whole_sats(needed: int, sat: int) -> None:
    assert token_size(asked(needed), None) == sat
    assert token_size(asked(needed), needed) == sat  # a ceiling at the hold pays it


def test_a_node_that_asks_more_than_the_ceiling_gets_no_token() -> None:
    with pytest.raises(Rejected) as refused:
        token_size(asked(3001), 3000)
    assert refused.value.code == RejectCode.TOO_EXPENSIVE
    assert "3001 msat" in str(refused.value) and "3000 msat" in str(refused.value)


def test_an_empty_wallet_names_the_amount_the_node_and_both_fixes() -> None:
    refusal = no_token("'priced'", asked(3000))
    assert (refusal.code, refusal.needed) == (RejectCode.PAYMENT_REQUIRED, 3000)
    said = str(refusal)
    provider = f"{encode_peer_id(NODE)}@{WHERE}"
    for part in (
        "'priced' needs 3000 msat",
        provider,
        "3 sat",
        "hubnode wallet add",
        "hubnode deposit --server",
    ):
        assert part in said, said


@pytest.mark.parametrize("code", sorted(UNSPENT))
def test_a_refusal_before_redeeming_leaves_the_token_ours(code: str) -> None:
    assert token_still_ours(Rejected(code, "no"), accepted=False)


@pytest.mark.parametrize(
    "code",
    [RejectCode.TOKEN_SPENT, RejectCode.DEPOSIT_FAILED, RejectCode.PAYMENT_REQUIRED, RejectCode.CANCELLED],
)
def test_a_refusal_after_redeeming_spent_it(code: str) -> None:
    assert not token_still_ours(Rejected(code, "no"), accepted=False)


@pytest.mark.parametrize(
    "failure",
    [
        TransportError("reset"),
        HandshakeError("garbage"),
        KeyboardInterrupt(),
        BaseExceptionGroup("x", [KeyboardInterrupt()]),
    ],
)
def test_no_answer_puts_the_token_back_unless_the_node_had_accepted(failure: BaseException) -> None:
    assert token_still_ours(failure, accepted=False)
    assert not token_still_ours(failure, accepted=True)


def test_a_refusal_after_the_accept_never_puts_it_back() -> None:
    assert not token_still_ours(Rejected(RejectCode.TOO_EXPENSIVE, "over budget"), accepted=True)


class _Remembered:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def lookup(self, address: str) -> bytes | None:
        return self.key

    def add(self, address: str, peer: bytes) -> None:
        raise AssertionError("nothing is learned here")


def test_a_trio_refusal_for_money_is_pinned_to_the_key_that_asked() -> None:
    money = Rejected(RejectCode.PAYMENT_REQUIRED, "no account", 3000)
    pinned = asked_for_money(money, Target(WHERE, NODE), PinnedKeys())
    assert pinned is not None and (pinned.needed, pinned.target) == (3000, Target(WHERE, NODE))
    # A server named by HOST:PORT: the key trust on first use remembered at that very call.
    remembered = asked_for_money(money, Target(WHERE), _Remembered(NODE))
    assert remembered is not None and remembered.target == Target(WHERE, NODE)
    assert asked_for_money(Rejected(RejectCode.BUSY, "full"), Target(WHERE, NODE), PinnedKeys()) is None
    no_amount = Rejected(RejectCode.PAYMENT_REQUIRED, "no account")
    assert asked_for_money(no_amount, Target(WHERE, NODE), PinnedKeys()) is None


def test_pay_is_the_one_given_else_client_toml_s(tmp_path: Path) -> None:
    ctx = Context(str(tmp_path))
    assert ctx.pay(None) == "never"
    (tmp_path / "client.toml").write_text('pay = "auto"\n', encoding="utf-8")
    ctx = Context(str(tmp_path))
    assert (ctx.pay(None), ctx.pay("never"), ctx.pay("auto")) == ("auto", "never", "auto")
    with pytest.raises(ConfigError, match="sometimes"):
        ctx.pay("sometimes")
