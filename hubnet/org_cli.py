"""`hubnode org`: create organisations, attest members, join, list and revoke.

An organisation is a key of its own (see `hubnet.orgs` and `hubnet.identity.orgs`). What
a node or a client trusts is decided only by organisation ids in its config files; the
labels these commands print are what the organisation says of itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hubnet.commands import Context
from hubnet.identity.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from hubnet.orgs import HeldOrg

BOOTSTRAP_HELP = "A DHT node to publish through, PEER_ID@HOST:PORT (or HOST:PORT); repeatable."
DAY = 86400
# hubnet.identity.orgs.Role's values, spelled out: importing it (and Ed25519 with it) would
# slow every other command's start.
ROLES = ("robot", "server", "member")


@click.group(short_help="Organisations: create, attest members, join, list, revoke.")
def org() -> None:
    """Organisations: a lab's own key, vouching for its robots and desktops.

    \b
    hubnode org create lab --label "The Robot Lab"        # prints the organisation's id
    hubnode org attest lab PEER_ID --role robot           # prints an attestation (one line)
    hubnode org join ATTESTATION                          # on the member: keep it
    hubnode org revoke lab PEER_ID                        # publish a new revocation list
    """


def _publish(obj: Context, held: HeldOrg, bootstrap: tuple[str, ...]) -> int:
    """Put the organisation's revocation list and profile in the DHT; how many nodes kept the list."""
    from hubnet.dht.client import DhtClient
    from hubnet.discover import seeds
    from hubnet.node.org_records import profile_record, revocations_record

    given = obj.bootstrap(bootstrap)
    if not given:
        raise TransportError(
            f"saved, but not published: no DHT to publish {held.name}'s list through; give --bootstrap "
            "PEER_ID@HOST:PORT (or `bootstrap` in client.toml), or serve a node in this home"
        )
    now = int(time.time())
    # The records' sequence is the organisation's own, which every create and revoke raises
    # (`OrgKeys.bump`): the time in seconds would not be newer for a second revoke within
    # the same second, and DHT nodes would keep the first list.
    sequence = held.state.sequence
    with DhtClient(obj.identity(), seeds(given)) as dht:
        revocations = revocations_record(held.identity, held.revocations(), now, sequence=sequence)
        stored = dht.publish_provider(revocations)
        dht.publish_provider(profile_record(held.identity, held.profile(), now, sequence=sequence))
    return stored


@org.command()
@click.option("--label", default="", help="What the organisation calls itself (shown, never trusted).")
@click.option("--url", default="", help="Where people can learn about it (shown, never trusted).")
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.argument("name")
@click.pass_obj
def create(obj: Context, label: str, url: str, bootstrap: tuple[str, ...], name: str) -> None:
    """Create the organisation NAME's key in this home and print its id.

    The key stays in this home's data folder (mode 0600); keep a copy somewhere safe.
    """
    from hubnet.orgs import OrgKeys

    held = OrgKeys(obj.home).create(name, label, url)
    if obj.bootstrap(bootstrap):
        _publish(obj, held, bootstrap)
    click.echo(f"hubnode: created organisation {name}; its key is in {OrgKeys(obj.home).folder}", err=True)
    click.echo(held.identity.peer_id)


@org.command()
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the member is.")
@click.option("--days", type=click.IntRange(1, 5 * 365), default=365, show_default=True, help="Valid for.")
@click.option("--label", default="", help="A name for the member, for people (e.g. 'robot 7').")
@click.argument("name")
@click.argument("peer_id")
@click.pass_obj
def attest(obj: Context, role: str, days: int, label: str, name: str, peer_id: str) -> None:
    """Print an attestation binding PEER_ID to the organisation NAME, on one line.

    Give it to the member, who runs `hubnode org join ATTESTATION`. It is useless to
    any other key.
    """
    from hubnet.identity.keys import decode_peer_id
    from hubnet.identity.orgs import Attestation, Role
    from hubnet.orgs import OrgKeys

    held = OrgKeys(obj.home).load(name)
    now = int(time.time())
    try:
        made = Attestation.issue(
            held.identity, decode_peer_id(peer_id), Role(role), label, now, now + days * DAY
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    click.echo(made.to_text())


@org.command()
@click.argument("attestation")
@click.pass_obj
def join(obj: Context, attestation: str) -> None:
    """Keep ATTESTATION (its text, a file holding it, or - for stdin) for this node's calls."""
    from hubnet.identity import attest_text
    from hubnet.identity.keys import encode_peer_id
    from hubnet.identity.orgs import Attestation
    from hubnet.orgs import Memberships

    if attestation == "-":
        text = sys.stdin.read()
    elif attestation.startswith(attest_text.PREFIX):
        text = attestation  # (asking the filesystem first would fail: the text is too long a name)
    else:
        try:
            text = Path(attestation).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{attestation!r} is neither an attestation ({attest_text.PREFIX}...) "
                f"nor a file holding one: {exc.strerror or exc}"
            ) from None
    made = Attestation.from_text(text)
    Memberships(obj.home).add(made, obj.identity().public_key)
    until = time.strftime("%Y-%m-%d", time.gmtime(made.expires_at))
    click.echo(f"hubnode: member of {encode_peer_id(made.org)} as {made.role.value} until {until}", err=True)


@org.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_command(obj: Context, as_json: bool) -> None:
    """Show the organisations this node belongs to, and those whose keys this home holds."""
    from hubnet.identity.keys import encode_peer_id
    from hubnet.orgs import Memberships, OrgKeys
    from hubnet.safe_text import printable

    now = int(time.time())
    keys = OrgKeys(obj.home)
    held = [keys.load(name) for name in keys.names()]
    memberships = Memberships(obj.home).all()
    if as_json:
        import json

        click.echo(
            json.dumps(
                {
                    "member_of": [
                        {
                            "org": encode_peer_id(a.org),
                            "role": a.role.value,
                            "label": a.label,
                            "expires_at": a.expires_at,
                            "valid": a.issued_at - 60 <= now < a.expires_at,
                        }
                        for a in memberships
                    ],
                    "holds": [
                        {
                            "name": h.name,
                            "org": h.identity.peer_id,
                            "label": h.state.label,
                            "revoked": h.state.revoked,
                        }
                        for h in held
                    ],
                },
                indent=2,
            )
        )
        return
    click.echo("member of:" if memberships else "member of: none")
    for a in memberships:
        status = "valid" if a.issued_at - 60 <= now < a.expires_at else "EXPIRED or not yet valid"
        until = time.strftime("%Y-%m-%d", time.gmtime(a.expires_at))
        label = printable(a.label)
        click.echo(f"  {encode_peer_id(a.org)}  {a.role.value:<7} until {until}  {status}  {label}")
    click.echo("holds keys of:" if held else "holds keys of: none")
    for h in held:
        label = printable(h.state.label)
        click.echo(f"  {h.name:<16} {h.identity.peer_id}  {label}  ({len(h.state.revoked)} revoked)")


@org.command()
@click.option("--bootstrap", "-b", "bootstrap", metavar="TARGET", multiple=True, help=BOOTSTRAP_HELP)
@click.argument("name")
@click.argument("peer_id")
@click.pass_obj
def revoke(obj: Context, bootstrap: tuple[str, ...], name: str, peer_id: str) -> None:
    """Revoke PEER_ID's membership of NAME and publish the new revocation list in the DHT.

    Nodes and clients that rely on the organisation fetch its list at least every 5
    minutes, so the member is refused within that time.
    """
    from hubnet.identity.keys import decode_peer_id
    from hubnet.identity.records import InvalidRecord
    from hubnet.orgs import OrgKeys

    try:
        held = OrgKeys(obj.home).revoke(name, decode_peer_id(peer_id))
    except InvalidRecord as exc:
        raise ConfigError(str(exc)) from None
    stored = _publish(obj, held, bootstrap)
    if not stored:
        raise TransportError(f"saved, but no DHT node kept {name}'s revocation list; try again later")
    click.echo(
        f"hubnode: {peer_id} revoked from {name}; its list (sequence {held.state.sequence}) "
        f"is at {stored} node(s)",
        err=True,
    )
