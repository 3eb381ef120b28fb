"""Who sent a datagram, as the DHT's quotas count senders: by host and by network.

Keys are free, addresses are not: a quota per publisher key stops nobody, so the store and
the routing table also count what each source *address* holds. A public IPv4 address is
one host and its /24 one network; for IPv6 a /64 is one host (a subscriber's LAN gets a
whole /64) and a /48 one network. Those are the groupings libp2p and BitTorrent's DHTs
use: what one machine or one hoster's subnet can hold, whatever keys it makes.

Loopback and private addresses are different: a dozen nodes on one machine (tests, the
demo) or one LAN (a lab, an office) share one IP or one /24, and must not crowd each other
out. A sender there is already inside the machine or the network, so quotas do not defend
against it; each of its sockets (`ip:port`) counts as a host and a network of its own.
"Local" means 127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16,
100.64.0.0/10 (carrier-grade NAT and overlay networks such as Tailscale: not routed on the
internet), ::1, fc00::/7 and fe80::/10; IPv4-mapped IPv6 counts as its IPv4 address. A
host that is not an IP literal (only test networks have those) counts as local too.
"""

from __future__ import annotations

import functools
import ipaddress

from hubnet.dht.records import Address
from hubnet.identity.frozen import frozen

_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


@frozen
class Source:
    """The quota keys of one sender: `host` (one machine) and `network` (its /24 or /48)."""

    host: str
    network: str
    local: bool


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP `host` names, without a v6 zone and with an IPv4-mapped IPv6 address as plain
    IPv4; None if `host` is not an IP (a name)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # a v6 zone id names no other host
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local(host: str) -> bool:
    """Whether `host` is a loopback, private or link-local IP (or not an IP at all)."""
    ip = parse_ip(host)
    return ip is None or any(ip in network for network in _LOCAL_NETWORKS if network.version == ip.version)


def same_host(a: str, b: str) -> bool:
    """Whether two host strings name the same IP (IPv4-mapped and plain IPv4 alike)."""
    ip_a, ip_b = parse_ip(a), parse_ip(b)
    return a == b if ip_a is None or ip_b is None else ip_a == ip_b


@functools.lru_cache(maxsize=8192)
def classify(address: Address) -> Source:
    """The quota keys of the sender at `address` (see the module docstring)."""
    host, port = address
    ip = parse_ip(host)
    if ip is None or is_local(host):
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return Source(key, key, True)
    if ip.version == 4:
        return Source(str(ip), str(ipaddress.ip_network(f"{ip}/24", strict=False)), False)
    return Source(
        str(ipaddress.ip_network(f"{ip}/64", strict=False)),
        str(ipaddress.ip_network(f"{ip}/48", strict=False)),
        False,
    )
