"""Hypothesis strategies shared by the codec tests."""

from __future__ import annotations

from hypothesis import strategies as st

from hubnet.dht.addresses import DirectAddress, RelayAddress

# Any value msgpack can carry, nested: what a hostile peer can put where a field belongs.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=25,
)

# Typed addresses (dht.addresses), direct and via a relay, as offers and node records carry them.
hosts = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True),
    st.ip_addresses(v=6).map(str),
)
ports = st.integers(1, 65535)
peer_keys = st.binary(min_size=32, max_size=32)
direct_addresses = st.builds(DirectAddress, hosts, ports)
addresses = st.one_of(direct_addresses, st.builds(RelayAddress, peer_keys, direct_addresses, peer_keys))
