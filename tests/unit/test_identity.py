"""Tests of identity.keys (peer ids, key files) and identity.records (signed records)."""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import ConfigError, RemoteProtocolError
from hubnet.identity.keys import (
    Identity,
    decode_peer_id,
    encode_peer_id,
    fingerprint,
    load_or_create_identity,
    noise_public_key,
)
from hubnet.identity.noise import public_key as x25519_public_key
from hubnet.identity.records import MAX_RECORD_LEN, InvalidRecord, SignedRecord

FAST = settings(max_examples=100, deadline=None)
ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
OFFER = "hubnet/offer/1"
RECEIPT = "hubnet/receipt/1"

# --- Peer ids --------------------------------------------------------------------------------------------


@FAST
@given(st.binary(min_size=32, max_size=32))
def test_peer_id_round_trips_through_base32_and_hex(key: bytes) -> None:
    text = encode_peer_id(key)
    assert len(text) == 52 and text == text.lower() and "=" not in text
    assert decode_peer_id(text) == key
    assert decode_peer_id(text.upper()) == key
    assert decode_peer_id(f"  {text}\n") == key
    assert decode_peer_id(key.hex()) == key
    assert decode_peer_id(key.hex().upper()) == key


BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


@FAST
@given(st.binary(min_size=32, max_size=32))
def test_exactly_one_spelling_of_the_last_base32_character_decodes(key: bytes) -> None:
    # 52 characters carry 260 bits, a key 256: the last character holds the key's last bit
    # and four unused bits, which must be zero. So of the 32 characters that could end the
    # id exactly one spells this key, and one other ('a' for 'q' and back) the key whose
    # last bit differs; the other 30 are refused.
    text = encode_peer_id(key)
    decoded: dict[str, bytes] = {}
    for last in BASE32_ALPHABET:
        try:
            decoded[last] = decode_peer_id(text[:-1] + last)
        except ConfigError as exc:
            assert "check the id you typed" in str(exc)
            assert repr(last) in str(exc)
    assert sorted(decoded) == ["a", "q"]
    assert [last for last, got in decoded.items() if got == key] == [text[-1]]
    assert set(decoded.values()) == {key, key[:-1] + bytes([key[-1] ^ 1])}


def test_a_non_canonical_last_character_is_refused_with_what_it_must_be() -> None:
    text = ALICE.peer_id
    wrong = text[:-1] + ("b" if text[-1] == "a" else "r")
    with pytest.raises(ConfigError, match=r"ends in '[br]'.*always 'a' or 'q'.*check the id you typed"):
        decode_peer_id(wrong)
    with pytest.raises(ConfigError):
        decode_peer_id(wrong.upper())


def test_identity_peer_id_and_fingerprint() -> None:
    assert ALICE.peer_id == encode_peer_id(ALICE.public_key)
    assert fingerprint(ALICE.public_key) == ALICE.peer_id[:8]
    assert ALICE.peer_id != BOB.peer_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "a" * 51,
        "a" * 53,
        "a" * 63,
        "a" * 65,
        "1" * 52,  # not in the base32 alphabet
        "0" * 52,
        "é" * 52,
        "g" * 64,  # not hex
        "é" * 64,
        "ab " * 21 + "a",  # 64 characters, but spaces make fewer than 32 bytes
    ],
)
def test_bad_peer_ids_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        decode_peer_id(text)


@FAST
@given(st.text(max_size=70))
def test_peer_id_parser_only_raises_config_error(text: str) -> None:
    try:
        key = decode_peer_id(text)
    except ConfigError:
        return
    assert len(key) == 32


def test_encode_peer_id_wants_32_bytes() -> None:
    with pytest.raises(ValueError):
        encode_peer_id(bytes(31))


def test_noise_key_is_the_converted_ed25519_key() -> None:
    assert noise_public_key(ALICE.public_key) == x25519_public_key(ALICE.noise_private_key)
    off_curve = bytes([2]) + bytes(31)
    with pytest.raises(ConfigError, match=f"peer id {encode_peer_id(off_curve)} is not a valid"):
        noise_public_key(off_curve)  # not a curve point


# --- Key files -------------------------------------------------------------------------------------------


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "identity.key"
    first = load_or_create_identity(path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_identity(path)
    assert again.public_key == first.public_key
    assert again.noise_private_key == first.noise_private_key
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]  # no temporary left behind
    assert load_or_create_identity(tmp_path / "other.key").public_key != first.public_key


def test_threads_creating_one_key_file_at_once_share_one_identity(tmp_path: Path) -> None:
    """hubnet.call from many threads of one process may be the first use of a home: every thread
    must end with the one key that won, none with an error (they once shared a temporary name)."""
    path = tmp_path / "identity.key"
    threads = 16
    start = threading.Barrier(threads)

    def create() -> bytes:
        start.wait(timeout=10)
        return load_or_create_identity(path).public_key

    with ThreadPoolExecutor(threads) as pool:
        keys = {f.result(timeout=30) for f in [pool.submit(create) for _ in range(threads)]}
    assert keys == {load_or_create_identity(path).public_key}
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]  # no temporary left behind


def test_key_file_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "identity.key"
        load_or_create_identity(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_readable_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "identity.key"
    load_or_create_identity(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_identity(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"\xff\xfe\x00binary",
        b"hubnet-ed25519-seed:",
        b"hubnet-ed25519-seed:zz" + b"00" * 31,
        b"hubnet-ed25519-seed:" + b"00" * 31,  # a seed one byte short
        b"hubnet-ed25519-seed:" + b"00" * 33,
        b"hubnet-ed25519-seed:\xff" + b"00" * 31,
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
    ],
)
def test_damaged_key_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        load_or_create_identity(path)
    assert path.read_bytes() == content  # never overwritten


def test_key_file_written_by_a_racing_process_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "identity.key"
    real_link = os.link
    winner: list[Identity] = []

    def racing_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Another process creates the key between our read and our link.
        monkeypatch.setattr(os, "link", real_link)
        other = tmp_path / "other-process.key"
        winner.append(load_or_create_identity(other))
        real_link(other, dst)
        other.unlink()
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    mine = load_or_create_identity(path)
    assert winner and mine.public_key == winner[0].public_key
    assert load_or_create_identity(path).public_key == mine.public_key
    assert [p.name for p in tmp_path.iterdir()] == ["identity.key"]


# --- Signed records --------------------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    record = SignedRecord.sign(ALICE, OFFER, b"offer body")
    wire = record.encode()
    decoded = SignedRecord.decode(wire, domain=OFFER)
    assert decoded == record
    assert decoded.public_key == ALICE.public_key and decoded.body == b"offer body"


@FAST
@given(st.binary(max_size=2000), st.text(min_size=1, max_size=30).filter(lambda d: "\x00" not in d))
def test_sign_verify_round_trip(body: bytes, domain: str) -> None:
    record = SignedRecord.sign(BOB, domain, body)
    assert SignedRecord.decode(record.encode(), domain=domain) == record


def test_wrong_domain_is_refused() -> None:
    wire = SignedRecord.sign(ALICE, OFFER, b"body").encode()
    with pytest.raises(InvalidRecord):
        SignedRecord.decode(wire, domain=RECEIPT)


def test_signature_made_for_another_domain_does_not_verify() -> None:
    # Relabel a receipt as an offer: the domain is inside what was signed.
    receipt = SignedRecord.sign(ALICE, RECEIPT, b"body")
    forged = SignedRecord(OFFER, receipt.body, receipt.public_key, receipt.signature)
    with pytest.raises(InvalidRecord, match="signature"):
        SignedRecord.decode(forged.encode(), domain=OFFER)


def test_domain_and_body_boundary_is_unambiguous() -> None:
    # "a" + NUL + "b\x00c" must not verify as "a\x00b" + NUL + "c".
    record = SignedRecord.sign(ALICE, "a", b"b\x00c")
    moved = SignedRecord("a\x00b", b"c", record.public_key, record.signature)
    with pytest.raises(ValueError):
        SignedRecord.decode(moved.encode(), domain="a\x00b")
    with pytest.raises(ValueError):
        SignedRecord.sign(ALICE, "a\x00b", b"c")


def test_tampered_body_key_or_signature_is_refused() -> None:
    record = SignedRecord.sign(ALICE, OFFER, b"price=10")
    bad_sig = bytes([record.signature[0] ^ 1]) + record.signature[1:]
    for forged in (
        SignedRecord(OFFER, b"price=1", record.public_key, record.signature),
        SignedRecord(OFFER, record.body, BOB.public_key, record.signature),
        SignedRecord(OFFER, record.body, record.public_key, bad_sig),
        SignedRecord(OFFER, record.body, record.public_key, record.signature[:-1]),
        SignedRecord(OFFER, record.body, record.public_key[:-1], record.signature),
        SignedRecord(OFFER, record.body, bytes(32), record.signature),
    ):
        with pytest.raises(InvalidRecord):
            SignedRecord.decode(forged.encode(), domain=OFFER)


@FAST
@given(st.data())
def test_any_flipped_bit_in_the_wire_form_is_refused(data: st.DataObject) -> None:
    wire = bytearray(SignedRecord.sign(ALICE, OFFER, b"some offer body").encode())
    position = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    wire[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(InvalidRecord):
        SignedRecord.decode(bytes(wire), domain=OFFER)


def test_oversized_record_is_refused() -> None:
    body = bytes(MAX_RECORD_LEN)
    wire = SignedRecord.sign(ALICE, OFFER, body).encode()
    assert len(wire) > MAX_RECORD_LEN
    with pytest.raises(InvalidRecord, match="too large"):
        SignedRecord.decode(wire, domain=OFFER)
    fits = SignedRecord.sign(ALICE, OFFER, bytes(MAX_RECORD_LEN - 200))
    assert SignedRecord.decode(fits.encode(), domain=OFFER) == fits


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [OFFER, b"body", ALICE.public_key],
        [OFFER, b"body", ALICE.public_key, bytes(64), b"extra"],
        [OFFER, "body as text", ALICE.public_key, bytes(64)],
        [OFFER.encode(), b"body", ALICE.public_key, bytes(64)],
        {"domain": OFFER},
    ],
)
def test_malformed_records_are_refused(obj: object) -> None:
    with pytest.raises(InvalidRecord):
        SignedRecord.decode(msgpack.packb(obj, use_bin_type=True), domain=OFFER)


def test_invalid_record_is_a_remote_protocol_error() -> None:
    assert issubclass(InvalidRecord, RemoteProtocolError)


@FAST
@given(st.binary(max_size=300))
def test_garbage_only_raises_invalid_record(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        SignedRecord.decode(raw, domain=OFFER)


@FAST
@given(
    st.lists(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=70),
        min_size=4,
        max_size=4,
    )
)
def test_well_shaped_garbage_only_raises_invalid_record(fields: list[object]) -> None:
    fields[0] = OFFER
    try:
        raw = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, TypeError):
        return  # integers msgpack cannot represent never reach the wire
    with pytest.raises(InvalidRecord):
        SignedRecord.decode(raw, domain=OFFER)
