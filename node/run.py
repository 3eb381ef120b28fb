"""A serving node, assembled: listen, join the DHT, publish offers, serve jobs until a signal.

`hubnode serve` parses its options and files and hands the result to `run_node`, so the
pieces (the job server, its DHT peer, the LAN beacon, signal handling) are put together
here, in the layer they belong to, and the CLI stays a parser.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.transport import UdpTransport
from hubnet.identity.errors import HubnetError
from hubnet.identity.keys import Identity
from hubnet.node.cashier import Cashier, EcashFunding
from hubnet.node.discovery import Discovery, seeds_from
from hubnet.node.ecash import EcashWallet
from hubnet.node.ledger import Ledger
from hubnet.node.naming import Target
from hubnet.node.offers import Load
from hubnet.node.org_records import OrgSetup
from hubnet.node.org_watch import OrgWatch, refresh_interval
from hubnet.node.reservations import RelayFinder, RelayListener
from hubnet.node.sandbox import check_services, probe_host
from hubnet.node.server import Node
from hubnet.node.services import NodeConfig
from hubnet.node.spare import Spares

log = logging.getLogger("hubnet.node")
# The line giving the node's address is the command's output, not chatter: whoever sets up
# logging keeps this logger at info whatever the level (`hubnet.logs.configure(always=...)`).
START_LOGGER = "hubnet.node.start"
start_log = logging.getLogger(START_LOGGER)


# Descriptors a node may hold: each connection holds a socket and each job its pipes and a
# pidfd, so a node of a thousand connections and hundreds of jobs needs more than the usual
# soft limit of 1024 (as Go and systemd services do, the soft limit goes up to the hard one).
_OPEN_FILES = 1 << 16


def _raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, _OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class ListenError(HubnetError):
    """The node's port cannot be bound: in use, privileged, or not an address of this host."""


def run_node(
    config: NodeConfig,
    identity: Identity,
    *,
    bootstrap: Sequence[Target] = (),
    lan: bool = True,
    services_file: Path | None = None,
    orgs: OrgSetup | None = None,
    hidden: Sequence[Path] = (),
    data_dir: Path | None = None,
    serving_file: Path | None = None,
) -> None:
    """Serve `config`'s services as `identity` until SIGTERM or SIGINT.

    Joins the DHT through `bootstrap` and `config.bootstrap` (and, with `lan`, the nodes
    heard on the LAN), and logs the address to give callers once listening (on the
    `START_LOGGER`), after which file (`services_file`) the services came from. `orgs` says
    what the node brings of organisations (see `node.org_watch.OrgSetup`). `hidden`: the
    node's own folders (its key, its config), which sandboxed jobs see empty. `data_dir`:
    where the node keeps its books (node.ledger; without one, nothing is charged) and its ecash
    wallet (with `config.mints`, it takes deposits).
    `serving_file`: where to say, while serving, the address this machine reaches the node at (`hubnode
    status` asks it there).
    Raises ListenError if the port cannot be bound; no other error is relabelled as one, and
    SandboxError (before anything starts) if a service cannot be isolated as it asks.
    """
    _raise_open_files()
    ledger = Ledger.open(data_dir) if data_dir is not None else None  # stale holds released
    node = Node(config, identity, ledger=ledger)
    if ledger is not None and data_dir is not None and config.mints:
        node.cashier = Cashier(EcashWallet(data_dir, config.mints), ledger, identity)
        node.funding = EcashFunding(node.cashier)
    node.host = probe_host(hidden=hidden, adopt_cgroup=True)
    users, warnings = check_services(node.host, [(s.name, s.isolation) for s in config.services.values()])
    isolation = [node.host.describe(users), *warnings]
    discovery = Discovery(
        identity,
        config,
        lambda: Load(node.running, node.queued, config.max_jobs),
        seeds=seeds_from([*bootstrap, *config.bootstrap]),
        lan=lan,
        attestations=orgs.attestations if orgs else (),
    )
    node.peers = discovery.peers
    node.reach_status = discovery.reach_status
    discovery.multiplier = node.multiplier
    refresh = refresh_interval()  # a bad HUBNET_ORG_REFRESH is said before anything starts
    try:
        trio.run(
            _serve,
            config,
            identity,
            node,
            discovery,
            services_file,
            orgs or OrgSetup(),
            refresh,
            isolation,
            serving_file,
        )
    except* ListenError as group:
        # Nothing but the listener had started, so this is the only error: report it alone.
        error = group.exceptions[0]
        raise error from error.__cause__


async def _serve(
    config: NodeConfig,
    identity: Identity,
    node: Node,
    discovery: Discovery,
    services_file: Path | None,
    orgs: OrgSetup,
    org_refresh: float,
    isolation: Sequence[str],
    serving_file: Path | None,
) -> None:
    # SIGTERM and SIGINT cancel everything, so every job's process group is killed on the way out.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, contextlib.ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            addresses, udp = await _listen(nursery, node, config)
            stack.callback(udp.close)  # after the nursery, once nothing uses the socket
            dht = await nursery.start(discovery.run, udp)
            # While callers cannot dial us (node.reach says private), we serve through relays'
            # circuits: one more listener, feeding the same server as the TCP port.
            relays = RelayListener(identity, on_change=discovery.use_addresses, punch=config.punch)
            discovery.relay_prices = relays.prices
            finder = RelayFinder(config.relays, dht, identity.public_key)
            await nursery.start(functools.partial(relays.run, finder, active=lambda: discovery.private))
            nursery.start_soon(node.serve_listeners, [relays])
            if node.host is not None and node.host.cgroups is not None:
                node.spares = Spares(node.host.cgroups)
                nursery.start_soon(node.spares.run)  # cancelled, it kills its spare, removes its cgroup
            if config.orgs or orgs.own_lists or orgs.own_profiles:
                watch = OrgWatch(
                    dht,
                    config.orgs,
                    own_lists=orgs.own_lists,
                    own_profiles=orgs.own_profiles,
                    refresh=org_refresh,
                )
                node.revocations = lambda: watch.revocations
                nursery.start_soon(watch.run)
            if node.cashier is not None:
                nursery.start_soon(node.cashier.keep_reconciling)  # deposits left half done
            if services_file is not None:  # said once listening, so a node that cannot says only that
                _say_where_services_came_from(config, services_file)
            for host, port in addresses:
                where = f"{identity.peer_id}@{DirectAddress(host, port)}"
                start_log.info("serving %d service(s) on %s", len(config.services), where)
            if serving_file is not None:
                stack.callback(_say_serving(serving_file, identity, *addresses[0]))
            start_log.info("%s", isolation[0])  # which sandbox, cgroups and user are in force
            for warning in isolation[1:]:
                start_log.warning("%s", warning)
            async for signum in signals:
                running = f", killing {node.running} running job(s)" if node.running else ""
                log.info("stopping on %s%s", signal.Signals(signum).name, running)
                nursery.cancel_scope.cancel()
                break
        if node.cashier is not None:
            await node.cashier.wallet.aclose()
    log.info("stopped")


def _say_serving(path: Path, identity: Identity, host: str, port: int) -> Callable[[], None]:
    """Write PEER_ID@HOST:PORT (a wildcard listen host as loopback) to `path`; the function
    that removes it again. A stale file (a node killed outright) names a port nobody
    answers on, which `hubnode status` says."""
    local = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    text = f"{identity.peer_id}@{DirectAddress(local, port)}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write %s (hubnode status will not find this node): %s", path, exc.strerror or exc)

    def remove() -> None:
        with contextlib.suppress(OSError):
            if path.read_text(encoding="utf-8") == text:  # not a newer node's from the same home
                path.unlink()

    return remove


def _say_where_services_came_from(config: NodeConfig, path: Path) -> None:
    """One line: which services.toml was read, and if it gave nothing, why and where to look."""
    if config.services:
        names = ", ".join(sorted(service.name for service in config.services.values()))
        log.info("read %s; serving %s", path.absolute(), names)
        return
    why = "defines no [services.NAME] table" if path.exists() else "does not exist"
    start_log.warning(
        "no services to serve: %s %s; write a [services.NAME] table there for each program, "
        "or read another file with --services FILE (or another home with --home DIR)",
        path.absolute(),
        why,
    )


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
