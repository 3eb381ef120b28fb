"""dht.sources: how the DHT's quotas count a sender (host and network; local ip:port apart)."""

from __future__ import annotations

import pytest

from hubnet.dht.sources import Source, classify, is_local, same_host


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (("203.0.113.5", 7070), Source("203.0.113.5", "203.0.113.0/24", False)),
        (("203.0.113.5", 1), Source("203.0.113.5", "203.0.113.0/24", False)),  # any port: one host
        (("8.8.8.8", 53), Source("8.8.8.8", "8.8.8.0/24", False)),
        (("::ffff:203.0.113.5", 7070), Source("203.0.113.5", "203.0.113.0/24", False)),
        (("2001:db8:1:2:3:4:5:6", 7070), Source("2001:db8:1:2::/64", "2001:db8:1::/48", False)),
        (("127.0.0.1", 7070), Source("127.0.0.1:7070", "127.0.0.1:7070", True)),
        (("127.0.0.1", 7071), Source("127.0.0.1:7071", "127.0.0.1:7071", True)),
        (("10.1.2.3", 7070), Source("10.1.2.3:7070", "10.1.2.3:7070", True)),
        (("172.16.0.1", 1), Source("172.16.0.1:1", "172.16.0.1:1", True)),
        (("192.168.1.20", 7070), Source("192.168.1.20:7070", "192.168.1.20:7070", True)),
        (("169.254.1.1", 7070), Source("169.254.1.1:7070", "169.254.1.1:7070", True)),
        (("100.64.0.1", 7070), Source("100.64.0.1:7070", "100.64.0.1:7070", True)),
        (("::1", 7070), Source("[::1]:7070", "[::1]:7070", True)),
        (("fd00::1", 7070), Source("[fd00::1]:7070", "[fd00::1]:7070", True)),
        (("fe80::1%eth0", 7070), Source("[fe80::1%eth0]:7070", "[fe80::1%eth0]:7070", True)),
        (("node-a", 7070), Source("node-a:7070", "node-a:7070", True)),  # test networks only
    ],
)
def test_classify(address: tuple[str, int], expected: Source) -> None:
    assert classify(address) == expected


def test_local_and_same_host() -> None:
    assert is_local("127.8.9.10") and is_local("::ffff:192.168.0.1") and not is_local("172.32.0.1")
    assert same_host("203.0.113.5", "::ffff:203.0.113.5")
    assert not same_host("203.0.113.5", "203.0.113.6")
    assert same_host("example.org", "example.org") and not same_host("example.org", "203.0.113.5")
