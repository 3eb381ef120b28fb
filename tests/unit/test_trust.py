"""Tests of hubnet.trust (trust on first use: which key a node must present) and of the
targets it decides for (node.naming.Target)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubnet.dht.addresses import DirectAddress, RelayAddress
from hubnet.identity.errors import ConfigError, HostKeyMismatch
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.known_hosts import KnownHosts
from hubnet.node.naming import Target
from hubnet.trust import KnownHostsStore, PinnedKeys, expected_key, explain_failure, remember

OLD = Identity.from_seed(bytes(range(32))).public_key  # the node's key when first met
NEW = Identity.from_seed(bytes(range(32, 64))).public_key  # the key it presents later
RELAY = Identity.from_seed(bytes(range(64, 96))).public_key


class MemoryHosts:
    """An in-memory known_hosts that records every add."""

    def __init__(self, entries: dict[str, bytes] | None = None) -> None:
        self.entries = dict(entries or {})
        self.added: list[tuple[str, bytes]] = []

    def lookup(self, address: str) -> bytes | None:
        return self.entries.get(address)

    def add(self, address: str, peer: bytes) -> None:
        self.added.append((address, peer))
        self.entries[address] = peer


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> KnownHostsStore:
    """An empty known-hosts store: in memory, or the real file-backed one."""
    if request.param == "memory":
        return MemoryHosts()
    return KnownHosts(tmp_path / "home" / "known_hosts")


# ---- Target ---------------------------------------------------------------------------------------


def test_a_bare_address_trusts_on_first_use() -> None:
    target = Target.parse("127.0.0.1:7070")
    assert target.address == DirectAddress("127.0.0.1", 7070)
    assert target.peer is None
    assert target.direct == DirectAddress("127.0.0.1", 7070)
    assert target.trust_key == "127.0.0.1:7070"


def test_a_peer_id_pins_the_key() -> None:
    target = Target.parse(f"{encode_peer_id(OLD)}@node.example:9000")
    assert target.address == DirectAddress("node.example", 9000)
    assert target.peer == OLD
    assert target.direct == target.address
    # Pinned or not, a node is remembered under its address alone, so the two can be compared.
    assert target.trust_key == Target.parse("node.example:9000").trust_key == "node.example:9000"


def test_a_hex_peer_id_pins_the_same_key() -> None:
    assert Target.parse(f"{OLD.hex()}@node.example:9000").peer == OLD


def test_ipv6_keeps_its_brackets_in_the_trust_key() -> None:
    target = Target.parse("[::1]:7070")
    assert target.address == DirectAddress("::1", 7070)
    assert target.trust_key == "[::1]:7070"


def test_a_relayed_address_names_its_nodes_key() -> None:
    text = f"{encode_peer_id(RELAY)}@relay.example:7071/circuit/{encode_peer_id(NEW)}"
    target = Target.parse(text)
    assert target.address == RelayAddress(RELAY, DirectAddress("relay.example", 7071), NEW)
    assert target.peer == NEW
    assert target.trust_key == text
    with pytest.raises(ConfigError, match="relayed"):
        _ = target.direct


@pytest.mark.parametrize(
    "text",
    [
        "not-a-peer@127.0.0.1:7070",
        "127.0.0.1:0",
        ":7070",
        "::1:7070",
        f"{encode_peer_id(RELAY)}@relay.example:7071/circuit/short",
        "relay.example:7071/circuit/" + encode_peer_id(NEW),
    ],
)
def test_malformed_targets_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        Target.parse(text)


# ---- expected_key ---------------------------------------------------------------------------------


def test_an_unknown_node_is_met_with_xx(store: KnownHostsStore) -> None:
    assert expected_key(Target.parse("127.0.0.1:7070"), store) is None


def test_a_pinned_key_is_expected(store: KnownHostsStore) -> None:
    assert expected_key(Target.parse(f"{encode_peer_id(OLD)}@127.0.0.1:7070"), store) == OLD


def test_a_remembered_key_is_expected(store: KnownHostsStore) -> None:
    store.add("127.0.0.1:7070", OLD)
    assert expected_key(Target.parse("127.0.0.1:7070"), store) == OLD
    assert expected_key(Target.parse("127.0.0.1:7071"), store) is None
    # The same pinned key agrees with it.
    assert expected_key(Target.parse(f"{encode_peer_id(OLD)}@127.0.0.1:7070"), store) == OLD


def test_a_pinned_key_that_contradicts_the_remembered_one_is_refused(store: KnownHostsStore) -> None:
    store.add("127.0.0.1:7070", OLD)
    with pytest.raises(HostKeyMismatch) as caught:
        expected_key(Target.parse(f"{encode_peer_id(NEW)}@127.0.0.1:7070"), store)
    message = str(caught.value)
    assert f"127.0.0.1:7070 is remembered as {encode_peer_id(OLD)}" in message
    assert f"not the pinned {encode_peer_id(NEW)}" in message
    # Most likely a mistyped id, and nothing was asked of the node: no talk of a changed key.
    assert "the pinned id does not match the node's key; check the id you typed" in message
    assert "REMOTE KEY CHANGED" not in message and "intercept" not in message


def test_the_pinned_mismatch_message_names_the_known_hosts_file(tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "known_hosts")
    hosts.add("127.0.0.1:7070", OLD)
    with pytest.raises(HostKeyMismatch, match="check the id you typed") as caught:
        expected_key(Target.parse(f"{encode_peer_id(NEW)}@127.0.0.1:7070"), hosts)
    assert f"remove its line from {tmp_path / 'known_hosts'}" in str(caught.value)


def test_the_changed_key_message_names_the_known_hosts_file(tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "known_hosts")
    hosts.add("127.0.0.1:7070", OLD)
    with pytest.raises(HostKeyMismatch, match="REMOTE KEY CHANGED") as caught:
        explain_failure(Target.parse("127.0.0.1:7070"), OLD, NEW, hosts)
    assert f"remove its line from {tmp_path / 'known_hosts'}" in str(caught.value)


def test_a_relayed_target_needs_no_store() -> None:
    target = Target.parse(f"{encode_peer_id(RELAY)}@relay.example:7071/circuit/{encode_peer_id(NEW)}")
    assert expected_key(target, PinnedKeys()) == NEW


# ---- explain_failure ------------------------------------------------------------------------------


def test_a_failure_with_the_expected_key_is_not_a_key_change(store: KnownHostsStore) -> None:
    store.add("127.0.0.1:7070", OLD)
    explain_failure(Target.parse("127.0.0.1:7070"), OLD, OLD, store)  # nothing raised: something else failed


def test_a_remembered_key_that_changed_is_refused_loudly(store: KnownHostsStore) -> None:
    store.add("127.0.0.1:7070", OLD)
    with pytest.raises(HostKeyMismatch, match="REMOTE KEY CHANGED") as caught:
        explain_failure(Target.parse("127.0.0.1:7070"), OLD, NEW, store)
    message = str(caught.value)
    assert f"remembered {encode_peer_id(OLD)}" in message
    assert f"now {encode_peer_id(NEW)}" in message


def test_a_pinned_key_the_node_does_not_have_is_refused(store: KnownHostsStore) -> None:
    target = Target.parse(f"{encode_peer_id(OLD)}@127.0.0.1:7070")
    with pytest.raises(HostKeyMismatch) as caught:
        explain_failure(target, OLD, NEW, store)
    message = str(caught.value)
    assert f"127.0.0.1:7070 is {encode_peer_id(NEW)}, not the pinned {encode_peer_id(OLD)}" in message
    assert "the pinned id does not match the node's key; check the id you typed" in message
    assert "REMOTE KEY CHANGED" not in message and "intercept" not in message


# ---- remember -------------------------------------------------------------------------------------


def test_remember_pins_a_new_key_once_and_says_so(store: KnownHostsStore) -> None:
    said: list[str] = []
    target = Target.parse("127.0.0.1:7070")
    remember(target, OLD, store, said.append)
    assert store.lookup("127.0.0.1:7070") == OLD
    assert len(said) == 1
    assert "127.0.0.1:7070" in said[0] and encode_peer_id(OLD) in said[0]
    assert "trust on first use" in said[0]
    # A second XX handshake (another client raced this one) changes nothing and says nothing.
    remember(target, NEW, store, said.append)
    assert store.lookup("127.0.0.1:7070") == OLD
    assert len(said) == 1


def test_remember_adds_exactly_one_entry() -> None:
    hosts = MemoryHosts()
    target = Target.parse("127.0.0.1:7070")
    for _ in range(3):
        remember(target, OLD, hosts, lambda line: None)
    assert hosts.added == [("127.0.0.1:7070", OLD)]


def test_remember_writes_a_known_hosts_line(tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "new" / "known_hosts")
    remember(Target.parse("[::1]:7070"), OLD, hosts, lambda line: None)
    remember(Target.parse("[::1]:7070"), OLD, hosts, lambda line: None)
    assert hosts.path.read_text() == f"[::1]:7070 {encode_peer_id(OLD)}\n"
    # What was written is what the next client expects.
    assert expected_key(Target.parse("[::1]:7070"), KnownHosts(hosts.path)) == OLD


# ---- PinnedKeys -----------------------------------------------------------------------------------


def test_pinned_keys_remember_nothing() -> None:
    keys = PinnedKeys()
    assert keys.lookup("127.0.0.1:7070") is None
    assert expected_key(Target.parse(f"{encode_peer_id(OLD)}@127.0.0.1:7070"), keys) == OLD
    with pytest.raises(AssertionError):
        keys.add("127.0.0.1:7070", OLD)


def test_a_target_without_a_key_is_refused_before_dialling_when_only_pinned_keys_count() -> None:
    with pytest.raises(ConfigError, match=r"no key to check 127\.0\.0\.1:7070 by: give it as PEER_ID@"):
        expected_key(Target.parse("127.0.0.1:7070"), PinnedKeys())


# ---- the known_hosts file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("127.0.0.1:7070", "1 fields where a line has 2"),
        (f"127.0.0.1:7070 {encode_peer_id(OLD)} extra", "3 fields where a line has 2"),
        (f"127.0.0.1:7070 {encode_peer_id(OLD)[:-1]}", "not a peer id"),
        (f"127.0.0.1:7070 {encode_peer_id(OLD)[:-1]}z", "ends in 'z'"),
        # Decodes, but is no point of the curve: no node can have it.
        (f"127.0.0.1:7070 {encode_peer_id(bytes([2]) + bytes(31))}", "is not a valid Ed25519 public key"),
    ],
)
def test_a_bad_known_hosts_line_is_named_by_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# remembered keys\n\nother:7070 {encode_peer_id(NEW)}\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        KnownHosts(path).lookup("127.0.0.1:7070")
    message = str(caught.value)
    assert message.startswith(f"{path}:4: ")
    assert problem in message
    assert "fix or delete this line" in message


def test_a_known_hosts_line_no_node_can_have_spoils_only_its_own_address(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"bad:7070 {encode_peer_id(bytes([2]) + bytes(31))}\ngood:7070 {encode_peer_id(OLD)}\n")
    assert KnownHosts(path).lookup("good:7070") == OLD
    assert KnownHosts(path).lookup("new:7070") is None
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}:1: "):
        KnownHosts(path).lookup("bad:7070")
