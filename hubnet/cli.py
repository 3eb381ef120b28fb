"""`hubnode`'s command line (click): serve programs to the network, call them from anywhere.

Each command imports what it needs when it runs, so `hubnode call` on a Pi never loads
Trio. Errors propagate to `hubnet.main.main`, which turns them into one line on stderr
and an exit code; the plain forms of `call` are parsed there without click.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from hubnet.call_machine import DEFAULT_MAX_OUTPUT
from hubnet.commands import DEFAULT_TARGET_HELP, Context, run_call
from hubnet.exits import EXIT_TRANSPORT, EXIT_USAGE
from hubnet.identity.errors import ConfigError, HubnetError, NotOffered
from hubnet.identity.frozen import as_dict
from hubnet.ledger_cli import caller_balance, ledger, receipts
from hubnet.org_cli import org
from hubnet.safe_text import printable
from hubnet.wallet_cli import deposit, wallet

BOOTSTRAP_HELP = "A DHT node to join through, PEER_ID@HOST:PORT (or HOST:PORT); repeatable."
# `call` and `map` pay alike (hubnet.pay), so they say it alike.
PAY_OPTION = click.option(
    "--pay",
    type=click.Choice(["auto", "never"]),
    help="auto: when the node wants money (payment-required), call again with a Cashu token "
    "from `hubnode wallet` and keep the change it returns (default: client.toml's pay, else never).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="HUBNET_HOME",
    help="Keep identity.key, services.toml, client.toml and known_hosts in this one folder "
    "(default: the platform's config and data folders). Also $HUBNET_HOME.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Say more: `serve` logs at debug level (as `serve --log-level debug`); "
    "`call` names each provider it tries.",
)
@click.version_option(package_name="hubnet")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """Run command-line programs on other machines as if they were installed here.

    \b
    On the machine with the program:   hubnode serve
    On the machine that needs it:      echo hi | hubnode call --server PEER_ID@HOST:7070 espeak > hi.wav
    """
    ctx.obj = Context(home, verbose)


@cli.command("id", short_help="Print this node's peer id.")
@click.pass_obj
def id_command(obj: Context) -> None:
    """Print this node's peer id (creating its key on first use)."""
    click.echo(obj.identity().peer_id)


@cli.command(short_help="Serve the programs in services.toml.")
@click.option("--listen", metavar="HOST:PORT", help="Override services.toml's listen address.")
@click.option(
    "--services",
    "services_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Read services from this file instead of the home's services.toml.",
)
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--no-lan", is_flag=True, help="Do not announce this node or listen for others on the LAN.")
@click.option(
    "--example-services",
    is_flag=True,
    help="Also serve the robot services (speak, listen, face) whose extras are installed.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log this and worse: info (the default) is a line per job and per refusal; "
    "warning only problems; debug also connections and republishing. The global -v means debug.",
)
@click.option(
    "--reachability",
    type=click.Choice(["auto", "public", "private"], case_sensitive=False),
    help="Override services.toml's `reachability`: auto (the default) asks DHT peers to dial this "
    "node back; public or private says it, for an operator who knows (private: DHT client mode).",
)
@click.pass_obj
def serve(
    obj: Context,
    listen: str | None,
    services_path: str | None,
    bootstrap: tuple[str, ...],
    no_lan: bool,
    example_services: bool,
    log_level: str | None,
    reachability: str | None,
) -> None:
    """Serve the programs in services.toml on one port (default 7070), TCP for jobs, UDP for the DHT.

    Joins the DHT through the bootstrap nodes (--bootstrap, or `bootstrap` in services.toml)
    and nodes found on the LAN, and publishes a signed offer for every service. Prints the
    address to give callers, PEER_ID@HOST:PORT, and runs until interrupted.

    Logs to stderr, one line per job and per refusal: with the local time and level, or,
    when stderr is systemd's journal ($JOURNAL_STREAM), with a <N> priority prefix only.
    """
    import logging

    from hubnet.logs import LEVELS, configure
    from hubnet.node.run import START_LOGGER

    level = LEVELS[log_level.lower()] if log_level else logging.DEBUG if obj.verbose else logging.INFO
    to_journal = configure(level, always=[START_LOGGER])
    try:
        _serve(obj, listen, services_path, bootstrap, no_lan, example_services, reachability)
    except HubnetError as exc:
        if not to_journal:
            raise
        # `hubnet.main` would print it with no priority, which the journal files as info.
        from hubnet.exits import exit_code_for

        logging.getLogger("hubnet.node").error("%s", exc)
        sys.exit(exit_code_for(exc))


def _serve(
    obj: Context,
    listen: str | None,
    services_path: str | None,
    bootstrap: tuple[str, ...],
    no_lan: bool,
    example_services: bool,
    reachability: str | None,
) -> None:
    import logging

    from hubnet.dht.addresses import parse_hostport
    from hubnet.node.naming import Target
    from hubnet.node.run import run_node
    from hubnet.node.services import load_services

    services_file = Path(services_path) if services_path else obj.home.services
    config = load_services(services_file)
    if listen:
        host, port = parse_hostport(listen)
        config = dataclasses.replace(config, listen_host=host, listen_port=port)
    if reachability:
        config = dataclasses.replace(config, reachability=reachability.lower())
    if example_services:
        from hubnet_robot.examples import with_examples

        obj.home.data_dir.mkdir(parents=True, exist_ok=True)
        config, notes = with_examples(config, obj.home.data_dir)
        for note in notes:
            logging.getLogger("hubnet.node").warning("%s", note)
    from hubnet.orgs import org_setup

    targets = [Target.parse(t) for t in bootstrap]
    identity = obj.identity()
    orgs = org_setup(obj.home, identity.public_key)
    hidden = (obj.home.config_dir, obj.home.data_dir)  # the node's key and config: never a job's to read
    run_node(
        config,
        identity,
        bootstrap=targets,
        lan=not no_lan,
        services_file=services_file,
        orgs=orgs,
        hidden=hidden,
        data_dir=obj.home.data_dir,
        serving_file=obj.home.serving,
    )


@cli.command(
    short_help="Run a service on a server, or on one found in the DHT.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.option(
    "--max-cost",
    type=click.IntRange(min=0),
    metavar="MSAT",
    help="The most this job may cost, in millisatoshi (default: client.toml's max_cost, else "
    "no limit); a node whose worst case for it is higher refuses it (too-expensive).",
)
@PAY_OPTION
@click.argument("service")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def call(
    obj: Context,
    server: str | None,
    bootstrap: tuple[str, ...],
    max_cost: int | None,
    pay: str | None,
    service: str,
    args: tuple[str, ...],
) -> None:
    """Run SERVICE on a server with ARGS, streaming stdin, stdout and stderr.

    SERVICE is a name, a 32-hex-digit service id or an alias. Options of hubnode go before
    SERVICE (-v and --home before `call`); everything after SERVICE goes to the remote
    program. With no server (--server, the alias's or client.toml's), the service's offers
    are found in the DHT and the best provider by client.toml's [select] rules is called;
    the calls of the next offer_cache seconds ([select], 30 by default) start from the
    offers it found, checked again and probed live.

    Exits with the remote program's status (128+N if it died of signal N); 127 if the
    service is not to be had (the server has no such service, nobody in the DHT offers
    it, or no offer passes [select]); 126 if the server refused the call; 2 for a usage
    or configuration error (e.g. no server and no DHT given); 255 if the connection or
    the protocol failed. A paid job's signed receipt is checked and kept (hubnode receipts).
    """
    sys.exit(run_call(obj, server, service, args, bootstrap, max_cost=max_cost, pay=pay))


@cli.command(
    "map",
    short_help="Run a service once per input, over every provider at once.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--server", "-s", "servers", metavar="TARGET", multiple=True, help="Use this server; repeatable."
)
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Run at most N jobs at once in all.")
@click.option("--inputs-from", metavar="FILE", help="Read inputs from FILE, one a line (- for stdin).")
@click.option(
    "--results", type=click.Path(file_okay=False, path_type=Path), help="Put each input's output in DIR."
)
@click.option("--keep-order", "-k", is_flag=True, help="Print outputs in input order, not as they finish.")
@click.option("--joblog", type=click.Path(dir_okay=False, path_type=Path), help="Log each input to FILE.")
@click.option("--resume", is_flag=True, help="Skip the inputs that --joblog FILE shows finished.")
@click.option("--retries", type=click.IntRange(min=0), default=0, help="Run a failed job again, N times.")
@click.option(
    "--redundancy", type=click.IntRange(min=1), default=1, help="Run each input on N providers; vote."
)
@click.option("--max-cost", type=click.IntRange(min=0), metavar="MSAT", help="Spend at most MSAT on the run.")
@PAY_OPTION
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Cancel a job after SECONDS.")
@click.option(
    "--max-output",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_OUTPUT,
    show_default=True,
    metavar="BYTES",
    help="Keep at most BYTES of one job's output; a provider that sends more fails that attempt.",
)
@click.argument("service")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def map_command(
    obj: Context, /, service: str, args: tuple[str, ...], inputs_from: str | None, **options: Any
) -> None:
    """Run SERVICE once per input, spread over every provider of it at once.

    \b
    hubnode map sha256sum ::: *.iso               each file is one job's stdin
    hubnode map speak --stdout {} ::: hi there     {} is replaced by the input
    hubnode map -j 8 --joblog log face identify ::: photos/*.jpg

    Inputs follow ::: or come from --inputs-from. An input is a file fed to its job as
    stdin, unless ARGS contain {} (the input), {.} (without extension), {/} (base name),
    {//} (folder) or {/.} (base name without extension). Jobs go to every provider at
    once, within each one's job slots and -j; a provider that fails gets less work, then
    none. Outputs are printed as jobs finish (-k: in input order). --retries runs a failed
    job again on another provider; --redundancy N runs each input on N distinct providers
    and accepts the output most of them agree on, reporting and avoiding the others.
    --pay auto pays a provider that asks for money job by job from `hubnode wallet`;
    --max-cost counts what the jobs are charged, the change of each token coming back.

    Exits 0 when every input succeeded, else the number that failed (at most 101), and 255
    if map itself could not run (no providers, bad options).
    """
    from hubnet.map_command import MapOptions, run_map
    from hubnet.safe_text import printable

    if options["resume"] and options["joblog"] is None:
        raise click.UsageError("--resume needs --joblog FILE: the log says what finished")
    try:
        status = run_map(obj, service, args, inputs_from, MapOptions(**options))
    except HubnetError as exc:
        click.echo(f"hubnode: {printable(str(exc))}", err=True)
        sys.exit(EXIT_TRANSPORT)  # GNU parallel's and ssh's status for the tool's own failure
    sys.exit(status)


@cli.command(short_help="List a server's services, or who offers one in the DHT.")
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.argument("service", required=False)
@click.pass_obj
def services(
    obj: Context, server: str | None, bootstrap: tuple[str, ...], as_json: bool, service: str | None
) -> None:
    """List who offers SERVICE in the DHT, or the services one server offers.

    With SERVICE and no --server: every valid offer for it in the DHT (peer, address,
    price, load) and the round trip of a live status probe, best first by client.toml's
    [select] rules. With --server: the services that server offers (only SERVICE, if
    given), the arguments each accepts, and its price now in msat (per call, per second,
    per MiB) with the demand multiplier that is in it (surge pricing).

    A SERVICE that is not to be had exits 127, as `call` does, with a line on stderr
    (--json still prints []).
    """
    if service is not None and server is None:
        _print_providers(obj, service, bootstrap, as_json)
        return
    from hubnet.client import request
    from hubnet.node.naming import format_service_id, resolve_service_ref, service_id_for_name
    from hubnet.node.protocol import ListServices, Services

    target = obj.target(server)
    reply = request(target, obj.identity(), obj.known_hosts(), ListServices(), Services)
    shown = list(reply.services)
    if service is not None:
        # What `call` would reach (node.admission.find_service): the service with the id
        # SERVICE names, else the one whose name has that id.
        sid = resolve_service_ref(service)
        shown = [s for s in shown if s.service_id == sid] or [
            s for s in shown if service_id_for_name(s.name) == sid
        ]
    rows: list[dict[str, Any]] = [
        {
            "name": s.name,
            "id": format_service_id(s.service_id),
            "description": s.description,
            "arguments": s.arguments,
            "isolation": s.isolation,  # "" from a node older than sandboxes
            "price": dict(zip(("per_call", "per_second", "per_mib"), s.price, strict=True)),
            "multiplier": s.multiplier,
        }
        for s in shown
    ]
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
    else:
        # Names, descriptions and arguments are the node's words: escaped, like all it says.
        for row in rows:
            click.echo(f"{printable(row['name']):<16} {row['id']}  {printable(row['description'])}")
            click.echo(f"{'':<16} arguments: {printable(row['arguments'])}")
            if row["isolation"]:
                click.echo(f"{'':<16} isolation: {printable(row['isolation'])}")
            per_call, per_second, per_mib = shown_price = row["price"].values()
            if any(shown_price):
                click.echo(
                    f"{'':<16} price: {per_call} msat per call, {per_second} per second, {per_mib} per MiB"
                    f" (x{row['multiplier']:g} for demand)"
                )
    if service is not None and not rows:
        from hubnet.commands import suggest_names

        names = [s.name for s in reply.services]
        typed_server = server or obj.client_config.server or str(target.address)
        raise NotOffered(
            f"no service {service!r} on {target.address}; {suggest_names(service, names, typed_server)}"
        )


def _print_providers(obj: Context, service: str, bootstrap: tuple[str, ...], as_json: bool) -> None:
    import time

    from hubnet.discover import find_offers, nobody_offers, none_acceptable, probe, ranked_offers
    from hubnet.identity.keys import encode_peer_id
    from hubnet.node.naming import format_service_id, resolve_service_ref
    from hubnet.provider_orgs import free_shown, memberships_shown, orgs_line
    from hubnet.select import proven_memberships

    sid = resolve_service_ref(service)
    rules = obj.selection_rules()
    found = find_offers(
        obj.identity(),
        obj.bootstrap(bootstrap),
        sid,
        rules.orgs,
        describe_orgs=True,
        tokens_file=obj.home.dht_tokens,
    )
    ranked, _ = ranked_offers(found, rules, verbose=obj.verbose)
    if not ranked:
        if as_json:
            click.echo("[]")
        if not found.offers:
            raise nobody_offers(repr(service))
        raise none_acceptable(repr(service), len(found.offers), obj.client_config.source)
    probes = probe(obj.identity(), ranked)
    proven, refused = proven_memberships(ranked, int(time.time()), found.revocations)
    if obj.verbose and not rules.orgs:  # with organisations in its rules, ranked_offers said why
        for why in refused:
            click.echo(f"hubnode: {printable(why)}", err=True)
    rows: list[dict[str, Any]] = []
    org_lines: list[str] = []
    for offer in ranked:
        answer = probes.get(offer.publisher)
        members = memberships_shown(offer, proven, found.profiles, rules.orgs)
        free = free_shown(offer, found.profiles, rules.orgs)
        rows.append(
            {
                "peer": encode_peer_id(offer.publisher),
                "service": offer.name,
                "id": format_service_id(offer.service_id),
                "address": str(offer.addresses[0]),
                "price": as_dict(offer.price),
                "multiplier": offer.multiplier,  # the demand multiplier already in the price
                "load": as_dict(answer.load if answer and answer.load else offer.load),
                "rtt_ms": round(answer.rtt * 1000, 2) if answer else None,
                "expires_at": offer.expires_at,
                "orgs": [m.as_json() for m in members],
                "free_orgs": [f.as_json() for f in free],
            }
        )
        org_lines.append(orgs_line(members, free))
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        f"{'PEER':<20} {'ADDRESS':<22} {'PER CALL':>9} {'PER S':>7} {'PER MIB':>8} {'LOAD':>7} {'RTT':>9}"
    )
    for row, org_line in zip(rows, org_lines, strict=True):
        price, load = row["price"], row["load"]
        rtt = f"{row['rtt_ms']:.1f} ms" if row["rtt_ms"] is not None else "down"
        click.echo(
            f"{row['peer'][:16] + '...':<20} {printable(row['address']):<22} {price['per_call']:>9} "
            f"{price['per_second']:>7} {price['per_mib']:>8} "
            f"{load['running'] + load['queued']:>3}/{load['capacity']:<3} {rtt:>9}"
        )
        if row["multiplier"] != 1.0:
            click.echo(f"{'':<20} price x{row['multiplier']:g} for demand (surge pricing)")
        if org_line:
            click.echo(f"{'':<20} {printable(org_line)}")


@cli.command(short_help="Show a node's DHT contacts, or the DHT as seen from here.")
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def peers(obj: Context, server: str | None, bootstrap: tuple[str, ...], as_json: bool) -> None:
    """Summarise a node's DHT routing table, or the DHT as seen from here.

    With --server: the contacts in that node's routing table, with how many leading bits
    of DHT id each shares with the node (its bucket). Without: the nodes that answered two
    lookups through the bootstrap nodes.
    """
    from hubnet.dht.ids import ID_BITS, distance, node_id
    from hubnet.identity.keys import encode_peer_id

    if server is not None:
        from hubnet.client import request
        from hubnet.node.protocol import GetPeers, Peers

        target = obj.target(server)
        reply = request(target, obj.identity(), obj.known_hosts(), GetPeers(), Peers)
        own = node_id(target.peer) if target.peer else None
        contacts = [(p.public_key, p.host, p.port) for p in reply.peers]
        heading = f"{len(contacts)} contact(s) in the routing table of {target.address}"
    else:
        from hubnet.dht.client import DhtClient
        from hubnet.discover import seeds

        given = obj.bootstrap(bootstrap)
        if not given:
            raise ConfigError(
                "no DHT to ask: give --server, or --bootstrap PEER_ID@HOST:PORT (or bootstrap in client.toml)"
            )
        with DhtClient(obj.identity(), seeds(given)) as dht:
            dht.find_nodes(os.urandom(20))
            dht.find_nodes(node_id(obj.identity().public_key))
            contacts = [(c.public_key, c.ip, c.port) for c in dht.seen.values()]
        own = node_id(obj.identity().public_key)
        heading = f"{len(contacts)} node(s) answered"
    rows: list[dict[str, Any]] = [
        {
            "peer": encode_peer_id(key),
            "address": f"{host}:{port}",
            "shared_bits": ID_BITS - distance(own, node_id(key)).bit_length() if own else None,
        }
        for key, host, port in contacts
    ]
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(heading)
    for row in sorted(rows, key=lambda r: (-(r["shared_bits"] or 0), r["address"])):
        click.echo(f"{row['peer']}  {printable(row['address']):<22} {row['shared_bits']!s:>3} bits shared")


@cli.command(short_help="Show how busy a node is and whether it can be reached.")
@click.option(
    "--server",
    "-s",
    metavar="TARGET",
    help=DEFAULT_TARGET_HELP + " Default: the node serving from this home, else client.toml's server.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: Context, server: str | None, as_json: bool) -> None:
    """Show how busy a node is (jobs running, queued, capacity, load average) and, for a node
    in the DHT, whether strangers can reach it: its reachability (public, private or
    unknown), the address DHT peers see it at, its DHT mode (server, or client while
    private) and how many DHT contacts it has.

    Without --server it asks the node serving from this home (`hubnode serve` says where in
    the home's data folder while it runs). The load averages (1, 5 and 15 minutes) are
    rounded to two decimals, as /proc/loadavg shows them: some systems report them in fixed
    point (1.2998046875 for 1.30).
    """
    from hubnet.client import request
    from hubnet.node.protocol import GetStatus, StatusReply

    if server is None and obj.home.serving.is_file():
        server = obj.home.serving.read_text(encoding="utf-8").strip()
    reply = request(obj.target(server), obj.identity(), obj.known_hosts(), GetStatus(), StatusReply)
    reach = reply.reach
    if as_json:
        import json

        shown: dict[str, object] = {
            "running": reply.running,
            "queued": reply.queued,
            "capacity": reply.capacity,
            "load": [round(x, 2) for x in reply.load],
        }
        if reach is not None:
            shown.update(
                reachability=reach.reachability,
                observed=reach.observed or None,
                dht_mode=reach.dht_mode,
                peers=reach.peers,
                relays=list(reach.relays),
                relay_prices=None if reach.relay_prices is None else list(reach.relay_prices),
            )
        click.echo(json.dumps(shown))
        return
    load = " ".join(f"{x:.2f}" for x in reply.load)
    click.echo(f"running {reply.running}, queued {reply.queued}, capacity {reply.capacity}, load {load}")
    if reach is not None:
        observed = printable(reach.observed) if reach.observed else "not yet known"
        line = (
            f"reachability {printable(reach.reachability)}, observed address {observed}, "
            f"DHT {printable(reach.dht_mode)} mode, {reach.peers} peer(s)"
        )
        if reach.relays:
            prices = reach.relay_prices or (None,) * len(reach.relays)
            line += ", relays " + ", ".join(
                printable(r) + _relay_price(p) for r, p in zip(reach.relays, prices, strict=True)
            )
        click.echo(line)


def _relay_price(price: int | None) -> str:
    """What a relay charges the node for the bytes it carries, as `hubnode status` says it."""
    if price is None:
        return ""  # an older node does not say
    return " (free)" if price == 0 else f" ({price} msat/MiB)"


@cli.command(
    short_help="Make a local command that calls a service.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--server", "-s", metavar="TARGET", help="Always call this server. " + DEFAULT_TARGET_HELP)
@click.option(
    "--bin-dir",
    type=click.Path(file_okay=False),
    help="Where to put the NAME command (default ~/.local/bin, or HOME/bin with --home).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Make the alias even if a command NAME is already on PATH (it never replaces a file "
    "that hubnode alias did not write).",
)
@click.argument("name")
@click.argument("service")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def alias(
    obj: Context,
    server: str | None,
    bin_dir: str | None,
    force: bool,
    name: str,
    service: str,
    args: tuple[str, ...],
) -> None:
    """Make NAME a local command that runs SERVICE with ARGS (plus its own arguments).

    \b
    hubnode alias --server PEER_ID@desktop:7070 netespeak espeak --stdout
    netespeak -v en-us "This was a triumph" > triumph.wav

    NAME is a plain name that is not already a command on PATH (unless --force); an
    existing file NAME is replaced only if hubnode alias wrote it.
    """
    import shlex

    from hubnet.aliases import hubnode_command, make_alias
    from hubnet.config import Alias, check_alias_name
    from hubnet.node.naming import resolve_service_ref

    check_alias_name(name)
    resolve_service_ref(service)
    if server:
        obj.target(server)  # refuse a malformed server now, not at the first call
    home = obj.home
    directory = Path(bin_dir) if bin_dir else home.bin_dir
    command = hubnode_command() + (["--home", str(home.config_dir)] if home.single else [])
    script = make_alias(home.aliases, directory, Alias(name, service, args, server), command, force=force)
    runs = printable(shlex.join([service, *args]))
    click.echo(f"hubnode: {name} runs {runs}; command written to {printable(str(script))}", err=True)
    if str(directory) not in os.environ.get("PATH", "").split(os.pathsep):
        click.echo(f"hubnode: add {printable(str(directory))} to PATH to run it by name", err=True)


cli.add_command(org)
cli.add_command(deposit)
cli.add_command(wallet)
cli.add_command(ledger)
cli.add_command(caller_balance)
cli.add_command(receipts)


def run_cli() -> None:
    """Run the click CLI; hubnet errors propagate to `hubnet.main.main`, which reports them."""
    try:
        cli.main(prog_name="hubnode", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # plain `hubnode`: the help
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        click.echo(f"hubnode: {_usage_message(exc, sys.argv[1:])}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        raise KeyboardInterrupt from None


def _usage_message(exc: click.UsageError, argv: list[str]) -> str:
    """click's usage error as one line that names the command and where to read more.

    A global option given after the command (`hubnode serve -v`) gets the command line
    with the option where it belongs instead.
    """
    from hubnet.commands import GLOBAL_OPTIONS

    path = exc.ctx.command_path if exc.ctx is not None else "hubnode"
    command = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent is not None else None
    if isinstance(exc, click.NoSuchOption) and exc.option_name in GLOBAL_OPTIONS and command:
        return _global_option_after(exc.option_name, command, argv)
    message = " ".join(exc.format_message().split())
    where = path.removeprefix("hubnode").strip()
    return f"{where + ': ' if where else ''}{message} See '{path} --help'."


def _global_option_after(option: str, command: str, argv: list[str]) -> str:
    """`hubnode COMMAND ... -v ...` -> the message with the line as it should be."""
    from hubnet.commands import GLOBAL_OPTIONS, shown_command

    words = list(argv)
    start = words.index(command) + 1 if command in words else len(words)
    found = next((i for i in range(start, len(words)) if words[i].partition("=")[0] == option), None)
    if found is None:
        fix = f"hubnode {option} {command} ..."
    else:
        count = 2 if GLOBAL_OPTIONS[option] and "=" not in words[found] else 1
        moved = words[found : found + count]
        del words[found : found + count]
        fix = shown_command(["hubnode", *moved, *words])
    return f"{option} is an option of hubnode itself and goes before the command: {fix}"
