"""Tests of node.relay.RelayBook: what a relay holds and carries, against its limits."""

from __future__ import annotations

import pytest

from hubnet.identity.errors import ConfigError
from hubnet.node.relay import RelayBook, linked_pair
from hubnet.node.relay_protocol import CircuitLimits, Linked, RefusalCode
from hubnet.node.services import RelayConfig, parse_services

A, B, C = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32


def test_reservations_are_bounded_per_peer_and_in_all() -> None:
    book = RelayBook(RelayConfig(max_reservations=3, max_reservations_per_peer=2))
    assert book.reserve(A) is None and book.reserve(A) is None
    refused = book.reserve(A)
    assert refused is not None and refused.code == RefusalCode.PEER_RESERVATIONS_FULL
    assert book.reserve(B) is None
    refused = book.reserve(C)
    assert refused is not None and refused.code == RefusalCode.RESERVATIONS_FULL
    book.release(A)
    assert book.reserve(C) is None
    book.release(A)
    book.release(B)
    book.release(C)
    assert not book.reservations


def test_circuits_need_a_reservation_and_are_bounded_per_target_and_per_caller() -> None:
    book = RelayBook(RelayConfig(max_circuits_per_peer=2))
    refused = book.open_circuit(A, "198.51.100.1")
    assert refused is not None and refused.code == RefusalCode.NO_RESERVATION
    book.reserve(A)
    book.reserve(B)
    assert book.open_circuit(A, "198.51.100.1") is None
    assert book.open_circuit(A, "198.51.100.2") is None
    refused = book.open_circuit(A, "198.51.100.3")
    assert refused is not None and refused.code == RefusalCode.CIRCUITS_FULL and "target" in refused.reason
    assert book.open_circuit(B, "198.51.100.1") is None
    refused = book.open_circuit(B, "198.51.100.1")
    assert refused is not None and refused.code == RefusalCode.CIRCUITS_FULL and "address" in refused.reason
    book.close_circuit(A, "198.51.100.1")
    assert book.open_circuit(B, "198.51.100.1") is None
    for target, source in ((A, "198.51.100.2"), (B, "198.51.100.1"), (B, "198.51.100.1")):
        book.close_circuit(target, source)
    assert not book.circuits_to and not book.circuits_from


def test_the_defaults_carry_real_jobs_and_the_table_sets_every_limit() -> None:
    default = RelayBook(RelayConfig()).limits
    assert default.max_bytes >= 1 << 30 and default.max_seconds >= 3600  # not libp2p's 128 KiB, 2 min
    config = parse_services(
        "[relay]\nmax_reservations = 9\nmax_reservations_per_peer = 3\nmax_circuits_per_peer = 5\n"
        'max_circuit_bytes = "2G"\nmax_circuit_seconds = 600\nreservation_seconds = 60\nprice_per_mib = 7\n'
    )
    assert config.relay == RelayConfig(9, 3, 5, 2 << 30, 600, 60, 7)
    assert RelayBook(config.relay).limits == CircuitLimits(2 << 30, 600)
    assert parse_services("[relay]\nenabled = false\n").relay is None
    assert parse_services("").relay is None


def test_pinned_relays_need_their_peer_id() -> None:
    with pytest.raises(ConfigError, match="PEER_ID@HOST:PORT"):
        parse_services('relays = ["127.0.0.1:7070"]\n')
    with pytest.raises(ConfigError, match="unknown key"):
        parse_services("[relay]\nmax_circuits = 3\n")


@pytest.mark.parametrize(
    ("caller_ip", "target_ip"),
    [("", ""), ("198.18.12.1", ""), ("", "198.18.11.1"), ("198.18.11.1", "198.18.11.1")],
)
def test_no_punch_and_no_addresses_unless_both_ends_asked_and_can_be_dialled_apart(
    caller_ip: str, target_ip: str
) -> None:
    limits = CircuitLimits(1 << 30, 3600)
    assert linked_pair(limits, caller_ip, target_ip) == (Linked(limits), Linked(limits))


def test_when_both_punch_each_learns_where_the_relay_sees_it_and_the_other() -> None:
    limits = CircuitLimits(1 << 30, 3600)
    to_caller, to_target = linked_pair(limits, "198.18.12.1", "198.18.11.1")
    assert to_caller == Linked(limits, True, observed="198.18.12.1", peer="198.18.11.1")
    assert to_target == Linked(limits, True, observed="198.18.11.1", peer="198.18.12.1")
