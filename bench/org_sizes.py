#!/usr/bin/env python
"""What an organisation attestation adds to the bytes on the wire: real encodings, no estimates.

Builds, with fresh keys and the project's own codecs, and decodes every one again:

  an attestation (hubnet.identity.orgs.Attestation.encode), the shortest possible one
      (role robot, empty label) and the longest (role member, a label of MAX_LABEL bytes)
  an offer payload (node.offers.Offer.payload) and the signed provider record that
      carries it (dht.records.ProviderRecord), with no, 1 and 2 attestations (an offer
      carries at most MAX_OFFER_ATTESTATIONS)
  a Call message (node.protocol.encode(Call(...)), no arguments), with no and 1 attestation
  the IK first handshake message that carries that Call (identity.session.NoiseSession
      .initiate, as `hubnode call --server` sends it), with its 2-byte frame length

    .venv/bin/python bench/org_sizes.py
"""

from __future__ import annotations

import sys
import time

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import service_key
from hubnet.dht.records import MAX_PROVIDER_RECORD_LEN, ProviderRecord
from hubnet.identity.keys import Identity
from hubnet.identity.orgs import MAX_ATTESTATION_LEN, MAX_LABEL, Attestation, Role
from hubnet.identity.session import HandshakeComplete, NoiseSession
from hubnet.node.naming import service_id_for_name
from hubnet.node.offers import MAX_OFFER_ATTESTATIONS, Load, Offer, Price, offer_from_record
from hubnet.node.protocol import Call, decode, encode

SERVICE = "espeak"
ADDRESS = DirectAddress("192.168.1.20", 4040)
TTL = 300
DAY = 86400


def attestation(org: Identity, member: Identity, role: Role, label: str, now: int) -> bytes:
    """An encoded attestation, checked to decode to what was issued."""
    made = Attestation.issue(org, member.public_key, role, label, now, now + 365 * DAY)
    encoded = made.encode()
    assert Attestation.decode(encoded) == made
    return encoded


def offer_sizes(node: Identity, attestations: tuple[bytes, ...], now: int) -> tuple[int, int]:
    """(payload, provider record) bytes of the offer of SERVICE carrying `attestations`."""
    sid = service_id_for_name(SERVICE)
    offer = Offer(
        publisher=node.public_key,
        service_id=sid,
        name=SERVICE,
        addresses=(ADDRESS,),
        price=Price(),
        load=Load(0, 0, 4),
        sequence=now * 1000,
        issued_at=now,
        expires_at=now + TTL,
        attestations=attestations,
    )
    payload = offer.payload()
    record = ProviderRecord.create(
        node, service_key(sid), payload, sequence=now * 1000, issued_at=now, ttl=TTL
    )
    assert offer_from_record(ProviderRecord.parse(record.raw, now=now)) == offer
    return len(payload), len(record.raw)


def call_sizes(caller: Identity, node: Identity, attestations: tuple[bytes, ...]) -> tuple[int, int]:
    """(Call message, IK first handshake frame) bytes of a call of SERVICE carrying `attestations`."""
    call = Call(service_id_for_name(SERVICE), (), attestations)
    request = encode(call)
    assert decode(request) == call
    initiator = NoiseSession(
        initiator=True,
        identity=caller.public_key,
        static_private=caller.noise_private_key,
        remote_identity=node.public_key,
    )
    frame = initiator.initiate(request)
    assert not initiator.data_to_send(), "the whole Call rides in the first handshake message"
    responder = NoiseSession(initiator=False, identity=node.public_key, static_private=node.noise_private_key)
    responder.receive_data(frame)
    event = responder.next_event()
    assert isinstance(event, HandshakeComplete) and event.first_data == request
    return len(request), len(frame)


def row(name: str, value: int, base: int, width: int = 34) -> str:
    return f"  {name:<{width}} {value:>6} {value - base:>+7}"


def main() -> int:
    now = int(time.time())
    org, node, caller = Identity.generate(), Identity.generate(), Identity.generate()
    short = attestation(org, node, Role.ROBOT, "", now)
    long = attestation(org, node, Role.MEMBER, "x" * MAX_LABEL, now)
    for_caller = {
        "shortest": attestation(org, caller, Role.ROBOT, "", now),
        "longest": attestation(org, caller, Role.MEMBER, "x" * MAX_LABEL, now),
    }

    print("org_sizes: bytes of real encodings, each decoded again (fresh keys, times of now)")
    print(f"attestation (Attestation.encode; bound MAX_ATTESTATION_LEN = {MAX_ATTESTATION_LEN}):")
    print(f"  {'shortest (role robot, label 0 B)':<34} {len(short):>6}")
    print(f"  {f'longest (role member, label {MAX_LABEL} B)':<34} {len(long):>6}")

    print(
        f"offer of {SERVICE!r} at {ADDRESS} (one direct address, price 0), "
        f"provider record bound {MAX_PROVIDER_RECORD_LEN}:"
    )
    cases: list[tuple[str, tuple[bytes, ...]]] = [("no attestation", ())]
    for count in range(1, MAX_OFFER_ATTESTATIONS + 1):
        cases += [(f"{count} shortest", (short,) * count), (f"{count} longest", (long,) * count)]
    sizes = {name: offer_sizes(node, atts, now) for name, atts in cases}
    payload0, record0 = sizes["no attestation"]
    print(f"  {'attestations':<34} {'payload':>6} {'added':>7}   {'record':>6} {'added':>7}")
    for name, (payload, record) in sizes.items():
        print(f"{row(name, payload, payload0)}   {record:>6} {record - record0:>+7}")

    print(f"call of {SERVICE!r}, no arguments: Call message, and the IK first handshake frame carrying it:")
    call0, frame0 = call_sizes(caller, node, ())
    print(f"  {'attestations':<34} {'Call':>6} {'added':>7}   {'IK msg':>6} {'added':>7}")
    print(f"{row('no attestation', call0, call0)}   {frame0:>6} {0:>+7}")
    for name, encoded in for_caller.items():
        call, frame = call_sizes(caller, node, (encoded,))
        print(f"{row(f'1 {name}', call, call0)}   {frame:>6} {frame - frame0:>+7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
