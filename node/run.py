"""A serving node, assembled: listen, join the DHT, publish offers, serve jobs until a signal.

`hubnode serve` parses its options and files and hands the result to `run_node`, so the
pieces (the job server, its DHT peer, the LAN beacon, signal handling) are put together
here, in the layer they belong to, and the CLI stays a parser.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.transport import UdpTransport
from hubnet.identity.errors import HubnetError
from hubnet.identity.keys import Identity
from hubnet.node.discovery import Discovery, seeds_from
from hubnet.node.naming import Target
from hubnet.node.offers import Load
from hubnet.node.server import Node
from hubnet.node.services import NodeConfig

log = logging.getLogger("hubnet.node")


class ListenError(HubnetError):
    """The node's port cannot be bound: in use, privileged, or not an address of this host."""


def run_node(
    config: NodeConfig, identity: Identity, *, bootstrap: Sequence[Target] = (), lan: bool = True
) -> None:
    """Serve `config`'s services as `identity` until SIGTERM or SIGINT.

    Joins the DHT through `bootstrap` and `config.bootstrap` (and, with `lan`, the nodes
    heard on the LAN), and prints the address to give callers on stderr once listening.
    Raises ListenError if the port cannot be bound; no other error is relabelled as one.
    """
    node = Node(config, identity)
    discovery = Discovery(
        identity,
        config,
        lambda: Load(node.running, node.queued, config.max_jobs),
        seeds=seeds_from([*bootstrap, *config.bootstrap]),
        lan=lan,
    )
    node.peers = discovery.peers
    try:
        trio.run(_serve, config, identity, node, discovery)
    except* ListenError as group:
        # Nothing but the listener had started, so this is the only error: report it alone.
        error = group.exceptions[0]
        raise error from error.__cause__


async def _serve(config: NodeConfig, identity: Identity, node: Node, discovery: Discovery) -> None:
    # SIGTERM and SIGINT cancel everything, so every job's process group is killed on the way out.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            addresses, udp = await _listen(nursery, node, config)
            stack.callback(udp.close)  # after the nursery, once nothing uses the socket
            await nursery.start(discovery.run, udp)
            for host, port in addresses:
                where = f"{identity.peer_id}@{DirectAddress(host, port)}"
                print(f"hubnode: serving {len(config.services)} service(s) on {where}", file=sys.stderr)
            sys.stderr.flush()
            async for signum in signals:
                log.info("stopping on signal %d", signum)
                nursery.cancel_scope.cancel()
                break


async def _listen(
    nursery: trio.Nursery, node: Node, config: NodeConfig
) -> tuple[list[tuple[str, int]], UdpTransport]:
    """Bind the job port (TCP) and the DHT's (UDP, the same number): the one step whose
    OSError means "cannot listen". Port 0 asks for any free TCP port; UDP then takes its number."""
    try:
        addresses = await nursery.start(node.serve)
        udp = await UdpTransport.bind(config.listen_host or "0.0.0.0", addresses[0][1])
    except OSError as exc:
        reason = exc.strerror or exc
        raise ListenError(f"cannot listen on {config.listen_host}:{config.listen_port}: {reason}") from exc
    return addresses, udp
