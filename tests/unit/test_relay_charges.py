"""Tests of node.relay_charges: what a relay holds of a reservation holder's account for
each circuit, and what a circuit costs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hubnet.node.relay_charges import MIB, circuit_cost, circuit_hold
from hubnet.node.relay_protocol import RefusalCode, Refused
from hubnet.node.services import RelayConfig

PRICED = RelayConfig(max_circuit_bytes=8 * MIB, price_per_mib=3)


def test_a_free_relay_holds_and_charges_nothing_even_from_no_account() -> None:
    free = RelayConfig()
    assert circuit_hold(free, 0) == 0
    assert circuit_cost(free, 5 * MIB, 0) == 0


def test_a_circuit_holds_the_price_of_its_whole_byte_limit() -> None:
    assert circuit_hold(PRICED, 24) == 24
    assert circuit_hold(PRICED, 1000) == 24
    # A limit that is not whole MiB holds the MiB it starts.
    assert circuit_hold(RelayConfig(max_circuit_bytes=MIB + 1, price_per_mib=3), 6) == 6


def test_an_account_that_cannot_cover_one_circuit_is_refused_with_the_amount() -> None:
    refused = circuit_hold(PRICED, 23)
    assert isinstance(refused, Refused)
    assert refused.code == RefusalCode.PAYMENT_REQUIRED and refused.needed == 24
    assert "23 msat" in refused.reason and "hubnode ledger credit" in refused.reason
    refused = circuit_hold(PRICED, 0)
    assert isinstance(refused, Refused) and "no balance" in refused.reason


def test_a_circuit_costs_its_bytes_at_the_price_rounded_up_to_the_msat() -> None:
    assert circuit_cost(PRICED, 0, 24) == 0  # carried nothing
    assert circuit_cost(PRICED, 1, 24) == 1  # a started msat
    assert circuit_cost(PRICED, MIB, 24) == 3
    assert circuit_cost(PRICED, 2 * MIB + MIB // 2, 24) == 8  # 7.5 -> 8


@given(
    st.integers(0, 1000),
    st.integers(1, 1 << 34),
    st.integers(0, 1 << 40),
)
def test_a_circuit_never_costs_more_than_it_held_nor_less_for_more_bytes(
    price: int, limit: int, carried: int
) -> None:
    config = RelayConfig(max_circuit_bytes=limit, price_per_mib=price)
    held = circuit_hold(config, 1 << 62)
    assert isinstance(held, int)
    cost = circuit_cost(config, min(carried, limit), held)
    assert 0 <= cost <= held
    assert cost >= circuit_cost(config, min(carried, limit) // 2, held)
    # Within the limit (where the relay cuts a circuit) the hold never caps the price.
    assert cost == -(-price * min(carried, limit) // MIB)
