"""NATed nodes in a DHT of real nodes: they find they are private, keep out of the way, still search.

The in-memory network (tests/dht_sim.py) gets home routers: a NATed node's address takes a
datagram only from an address it has sent to (a port-restricted cone NAT that keeps the
port), and a dial-back's TCP connection, unsolicited, never reaches it. Every node runs
`node.reach.Reach` as `hubnode serve` does, with a dial-back over this network. Then:

- every public node concludes `public`, every NATed one `private` at its own address, in
  client mode, and none of them is in a public node's routing table;
- every node publishes a record under a key of its own: no NATed node holds any record
  (libp2p users' complaint: NATed nodes that hold keys lose them), each NATed node's own
  record is held by public nodes, and every NATed node finds every record.
"""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from hubnet.dht.messages import Contact
from hubnet.dht.node import DhtNode, DialBack
from hubnet.dht.reachability import RETRY_INTERVAL, Reachability
from hubnet.dht.records import Address
from hubnet.dht.transport import MemoryNetwork
from hubnet.identity.keys import Identity
from hubnet.node.reach import Reach, ReachState
from tests.dht_sim import PORT, SimNetwork, SimNode, Simulation, simulation

PUBLIC = 40
NATTED = 12
KEYS_PER_SEARCHER = 12


def public_address(index: int) -> Address:
    """Node i on a /24 of its own, outside every private range (the DHT counts it as public)."""
    return (f"20.{index}.0.1", PORT)


class NatNetwork(SimNetwork):
    """A `SimNetwork` where the addresses in `natted` sit behind port-restricted cone NATs."""

    def __init__(self) -> None:
        super().__init__()
        self.natted: set[Address] = set()
        self._mappings: set[tuple[Address, Address]] = set()  # (inside, remote) the inside sent to
        self._ports = itertools.count(40_000)

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        if source in self.natted:
            self._mappings.add((source, destination))
        if destination in self.natted and (destination, source) not in self._mappings:
            self.lost += 1
            return
        super().deliver(data, source, destination)

    def dial_back(self, host: str) -> DialBack:
        """The dial-back of the node at `host`: the probe from a fresh port; TCP reaches only
        a node that no NAT guards (an unsolicited SYN is dropped)."""

        async def dial(requester: Contact, tcp_port: int, probe: bytes) -> bool:
            self.deliver(probe, (host, next(self._ports)), requester.address)
            await trio.lowlevel.checkpoint()
            return requester.address not in self.natted

        return dial


async def add(sim: Simulation, network: NatNetwork, reaches: dict[int, Reach], *, natted: bool) -> SimNode:
    """The next node, behind a NAT or not, joined through a random public node, running `Reach`."""
    index = len(sim.nodes)
    if natted:
        network.natted.add(public_address(index))
    seed = sim.rng.choice([n for n in sim.live if n.contact.address not in network.natted] or [None])
    dial_back = network.dial_back(public_address(index)[0])
    node = await sim.add_node(seeds=[seed] if seed else [], dial_back=dial_back)
    reaches[index] = Reach()
    sim.nursery.start_soon(reaches[index].run, node, PORT)
    return node


async def test_natted_nodes_go_private_hold_no_keys_and_still_find_every_record(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = NatNetwork()
    reaches: dict[int, Reach] = {}
    async with simulation(k=8, seed=3, network=network, address=public_address) as sim:
        public = [await add(sim, network, reaches, natted=False) for _ in range(PUBLIC)]
        natted = [await add(sim, network, reaches, natted=True) for _ in range(NATTED)]
        first = reaches[natted[0].index]
        watched: list[ReachState] = []

        async def watch() -> None:  # as the relay client does: wait for the next state
            watched.append(await first.changed(ReachState(Reachability.UNKNOWN, None, False, False)))

        sim.nursery.start_soon(watch)
        await sim.settle()
        await trio.sleep(2 * RETRY_INTERVAL)  # every node has had its rounds

        states = {node.index: reaches[node.index].state for node in sim.nodes}
        assert {states[n.index].reachability for n in public} == {Reachability.PUBLIC}
        for node in natted:
            state = states[node.index]
            assert (state.reachability, state.observed, state.client_mode) == (
                Reachability.PRIVATE,
                node.contact.address,
                True,
            )
        assert [w.reachability for w in watched] == [Reachability.PRIVATE]
        private_keys = {n.identity.public_key for n in natted}
        for node in public:
            assert not {c.public_key for c in node.protocol.table.contacts()} & private_keys
        assert all(len(n.protocol.table) >= sim.k for n in natted)  # they keep tables of their own

        records = [sim.provider_record(node, node.protocol.table.node.id, b"mine") for node in sim.nodes]
        stored = [
            await node.publish_provider(record) for node, record in zip(sim.nodes, records, strict=True)
        ]
        assert all(count >= sim.k // 2 for count in stored), stored
        for node in natted:
            assert len(node.protocol.store) == 0  # not even its own: nobody could ask it for it
        stride = len(records) // KEYS_PER_SEARCHER
        for position, node in enumerate(natted):
            for record in records[position % stride :: stride]:  # its own among them, now and then
                found = await node.find_providers(record.key)
                assert [r.raw for r in found] == [record.raw]
        sim.nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("setting", "expected"), [("public", Reachability.PUBLIC), ("private", Reachability.PRIVATE)]
)
async def test_an_operators_setting_fixes_the_answer_and_asks_nobody(
    setting: str, expected: Reachability
) -> None:
    network = MemoryNetwork()
    dht = DhtNode(Identity.from_seed(b"o" * 32), network.transport(public_address(0)))
    reach = Reach(setting)
    await reach.run(dht, PORT)  # returns at once: nothing to find out
    private = expected is Reachability.PRIVATE
    assert reach.state == ReachState(expected, None, private, True)
    assert dht.protocol.client_mode is private
    assert network.delivered == network.lost == 0
