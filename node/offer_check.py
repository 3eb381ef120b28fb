"""What a serving node lets its DHT store: offers that aim clients only at their publisher.

The DHT checks a record's signature, its times, the sender's return-routability token and
its quotas (`dht.protocol`, `dht.store`); it cannot know what an offer means. This is the
node's `accept_record` hook (`DhtNode(accept_record=...)`): an offer, or a node record,
whose direct address names a host other than the one the DHT saw it come from is refused,
so that nobody can publish offers that send clients to dial a third party.

What the DHT sees is the source IP of the datagram that stores the record (its UDP port
says nothing of the TCP port a node listens on behind a NAT, so ports are not compared).
A direct address passes if its host is:

- that source IP (IPv4-mapped IPv6 and plain IPv4 alike); or
- anything at all when the source is loopback: the publisher is on this machine, as
  trusted as this node's own publisher, and a node with a public address may well
  publish through a DHT node on 127.0.0.1;
- a private IP or a host name when the source is a private address: a sender inside this
  LAN can aim only at what is inside the LAN (a LAN's names resolve there), never at the
  internet, and a LAN of several nodes keeps working whatever each one advertises.

From a public source, then, an offer must name its publisher's own IP: a private address
(a node behind a NAT advertising its LAN address) or a host name (which the DHT cannot
resolve in its loop, and which could name anyone) is refused. A node reachable on the
internet advertises its public IP (`advertise` in services.toml), or a relay.

A relayed address (`RELAY@HOST:PORT/circuit/TARGET`, a private node's) sends clients to the
relay, which splices them to the target, so it must aim at the publisher through a relay
that is somewhere else:

- its target is the record's publisher (nobody publishes circuits to someone else), and its
  relay is another peer than the publisher;
- the relay's address is an IP in public space (the internet's, not a private, loopback or
  link-local one, nor a name: a relay is dialled directly from anywhere), except, as for a
  direct address, from a loopback source (anything) or from a private one (inside the LAN:
  a private IP or a name, never loopback).

Whether the relay really relays, and for that target, is the relay's to say: a relayed
address naming a node that is no relay costs a client one refused connection.

A provider record whose payload is not an offer (an organisation's revocation list or
profile, `node.org_records`) is not this hook's business: readers parse those strictly.
"""

from __future__ import annotations

import ipaddress

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress
from hubnet.dht.records import Address as SourceAddress
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.dht.sources import is_local, same_host
from hubnet.dht.store import RecordRefused
from hubnet.node.offers import InvalidOffer, offer_from_record


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_allowed(address: Address, source_host: str, publisher: bytes) -> bool:
    """Whether a record of `publisher` that came from `source_host` may name `address`
    (module docstring)."""
    if isinstance(address, RelayAddress):
        return (
            address.target == publisher
            and address.relay_peer != publisher
            and _relay_allowed(address.relay, source_host)
        )
    source = _ip(source_host)
    if source is not None and source.is_loopback:
        return True
    if same_host(address.host, source_host):
        return True
    return _inside_the_lan(address, source_host)


def _relay_allowed(relay: DirectAddress, source_host: str) -> bool:
    source = _ip(source_host)
    if source is not None and source.is_loopback:
        return True
    host = _ip(relay.host)
    if host is not None and not (is_local(relay.host) or host.is_unspecified or host.is_multicast):
        return True  # an IP in public space
    return _inside_the_lan(relay, source_host)


def _inside_the_lan(address: DirectAddress, source_host: str) -> bool:
    """From a private source, an address inside the LAN (a private IP or a name), never
    loopback, the client's own machine; nothing from a public source."""
    if not is_local(source_host):
        return False
    host = _ip(address.host)
    # A private source: a private IP or a name, never loopback (the client's own machine).
    return host is None or (is_local(address.host) and not host.is_loopback)


def accept_record(record: ProviderRecord | NodeRecord, source: SourceAddress) -> bool:
    """The `accept_record` hook: True, or raise RecordRefused saying which address is not the
    publisher's."""
    if isinstance(record, NodeRecord):
        addresses, publisher = record.addresses, record.publisher
        what = "node record"
    else:
        try:
            offer = offer_from_record(record)
        except InvalidOffer:
            return True
        addresses, publisher = offer.addresses, offer.publisher
        what = "offer"
    for address in addresses:
        if not address_allowed(address, source[0], publisher):
            why = (
                "which does not lead to its publisher through another peer at a public address"
                if isinstance(address, RelayAddress)
                else f"not the address it came from ({source[0]})"
            )
            raise RecordRefused(f"{what} names {address}, {why}")
    return True
