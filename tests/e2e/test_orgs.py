"""Organisations end to end (issue 9): real `hubnode` processes on 127.0.0.1.

The organisation `lab` is a key in an admin home that never serves. It vouches for one
desktop (role server) and two robots (role robot); a stranger belongs to nothing, and runs
a desktop of its own that offers `who` cheaper than the lab's. The two desktops form the
DHT: the stranger's starts first, `hubnode org create --bootstrap` publishes the lab's
(empty) revocation list through it, and the lab's desktop joins through it.

The lab's desktop serves:

- `members`: lab robots only (`allow_orgs = ["LAB/robot"]`); it touches a marker named
  after the caller before it prints anything, so a refusal is seen to have run nothing;
- `priced`: 700 msat a call, free for the lab's members (`free_orgs = ["LAB"]`);
- `who`: 20 msat a call, printing which desktop answered (the stranger's says 10).

The desktop refreshes the lab's revocation list every `ORG_REFRESH` seconds
(`HUBNET_ORG_REFRESH`) instead of every 4 minutes, so that a revocation shows in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from hubnet.call_machine import CallResult
from hubnet.home import Home
from hubnet.identity.attest_text import read_file
from hubnet.identity.keys import decode_peer_id, fingerprint, load_or_create_identity
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import Call, Terms
from hubnet.trio_client import Client as TrioClient
from tests.e2e.harness import Client, Server, base_env, toml_string, wait_until
from tests.helpers import require_program

ORG_REFRESH = 1.0  # seconds between the lab desktop's fetches of the lab's revocation list
REVOKE_DEADLINE = 15.0  # a revoked robot must be refused by then (the bound is ORG_REFRESH + a lookup)
SETUP_TIMEOUT = 30.0
PRICE = 700  # msat a call of `priced`, for those who pay
LISTEN = 'listen = "127.0.0.1:0"\n'


@dataclass
class Lab:
    org: str  # the organisation's id
    admin: Client  # holds the organisation's key; never serves
    desktop: Server  # the lab's, attested as server
    robots: tuple[Client, Client]  # attested as robot, joined
    stranger: Client  # a member of nothing; its home also runs `stranger_desktop`
    stranger_desktop: Server
    markers: Path  # `members` touches markers/CALLER_PEER_ID before it prints

    @property
    def seed(self) -> str:
        return self.stranger_desktop.target

    def ran_for(self, client: Client) -> bool:
        return (self.markers / client.peer_id).exists()


def _must(result: subprocess.CompletedProcess[bytes], what: str) -> str:
    """The stdout of a command that had to succeed."""
    assert result.returncode == 0, f"{what} failed ({result.returncode}): {result.stderr.decode()}"
    return result.stdout.decode()


def _desktop_toml(org: str, markers: Path) -> str:
    return f"""{LISTEN}
[services.members]
description = "lab robots only"
command = ["sh", "-c", "touch \\"$MARKERS/$HUBNET_CLIENT\\"; echo member-ok"]
env = {{ MARKERS = {toml_string(markers)} }}
sandbox = false  # it leaves a mark outside any job's folder, where the test looks
allow_orgs = [{toml_string(org + "/robot")}]

[services.priced]
description = "700 msat a call, free for the lab"
command = ["echo", "priced"]
price = {{ per_call = {PRICE} }}
free_orgs = [{toml_string(org)}]

[services.who]
command = ["echo", "lab-desktop"]
price = {{ per_call = 20 }}
"""


STRANGER_TOML = f"""{LISTEN}
[services.who]
command = ["echo", "stranger-desktop"]
price = {{ per_call = 10 }}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    for program in ("sh", "echo", "touch"):
        require_program(program)
    root = tmp_path_factory.mktemp("orgs")
    markers = root / "markers"
    markers.mkdir()
    admin, stranger = Client(root / "admin"), Client(root / "stranger")
    robots = (Client(root / "robot1"), Client(root / "robot2"))
    desktop_home = Client(root / "desktop")  # the lab desktop's home, to read its id and join
    with Server(stranger.home, STRANGER_TOML) as stranger_desktop:
        # The organisation is created with the DHT at hand: its first (empty) revocation list
        # and its profile go there at once.
        created = admin.run(
            "org", "create", "lab", "--label", "The Lab", "--bootstrap", stranger_desktop.target
        )
        org = _must(created, "org create").strip().splitlines()[-1]
        for member, role in [(desktop_home, "server"), *((robot, "robot") for robot in robots)]:
            attestation = _must(
                admin.run("org", "attest", "lab", member.peer_id, "--role", role), "org attest"
            )
            _must(member.run("org", "join", attestation.strip()), "org join")
        desktop = Server(
            desktop_home.home,
            _desktop_toml(org, markers),
            env=base_env(HUBNET_ORG_REFRESH=str(ORG_REFRESH)),
            serve_args=("--no-lan", "--bootstrap", stranger_desktop.target),
        )
        with desktop:
            lab = Lab(org, admin, desktop, robots, stranger, stranger_desktop, markers)
            _fund(desktop, stranger, *robots)  # a revoked robot pays where members are free
            # The desktop has the lab's list (so it is past its first fetches), and both offers
            # of `who` are in the DHT.
            said = f"organisation {fingerprint(decode_peer_id(org))}: revocation list"
            learnt = desktop.wait_for_log(lambda line: said in line, SETUP_TIMEOUT)
            assert learnt is not None, f"the desktop never fetched the lab's list:\n{desktop.log}"
            assert wait_until(lambda: len(_offers(admin, lab.seed)) == 2, SETUP_TIMEOUT, 0.2), "offers of who"
            yield lab


def _offers(client: Client, seed: str) -> list[dict[str, object]]:
    result = client.run("services", "--json", "-b", seed, "who", input=None)
    rows: list[dict[str, object]] = json.loads(result.stdout or b"[]")
    return rows


# --- members only -----------------------------------------------------------------------------


def test_a_members_only_service_refuses_a_stranger_before_anything_runs(lab: Lab) -> None:
    result = lab.stranger.call(lab.desktop.target, "members")
    assert result.returncode == 126, result.stderr.decode()
    said = result.stderr.decode()
    assert "not-allowed" in said
    assert (
        f"members serves members of organisation {fingerprint(decode_peer_id(lab.org))} (as robot) only"
        in said
    )
    assert "the call carried no attestation" in said
    assert result.stdout == b""
    assert not lab.ran_for(lab.stranger)


def test_a_robots_attestation_is_useless_to_another_key(lab: Lab, tmp_path: Path) -> None:
    thief = Client(tmp_path / "thief")
    thief.peer_id  # creates its home and key  # noqa: B018
    shutil.copy(Home.locate(lab.robots[0].home).attestations, Home.locate(thief.home).attestations)
    result = thief.call(lab.desktop.target, "members")
    assert result.returncode == 126, result.stderr.decode()
    assert "counts for nothing: it names another key" in result.stderr.decode()
    assert not lab.ran_for(thief)


def test_a_member_of_another_role_is_refused(lab: Lab) -> None:
    desktop_as_caller = Client(lab.desktop.home)  # attested as server, not robot
    result = desktop_as_caller.call(lab.desktop.target, "members")
    assert result.returncode == 126, result.stderr.decode()
    assert "(as robot) only" in result.stderr.decode()
    assert not lab.ran_for(desktop_as_caller)


def test_a_members_only_service_serves_both_robots(lab: Lab) -> None:
    for robot in lab.robots:
        result = robot.call(lab.desktop.target, "members")
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"member-ok\n"
        assert lab.ran_for(robot)


# --- free for members ---------------------------------------------------------------------------


def _trio_call(client: Client, target: str, service: str) -> CallResult:
    """Call `service` as `client`'s home would (its key, its attestations), with the Trio client,
    which gives the Accept's terms as well as the Exit."""
    home = Home.locate(client.home)
    attestations = tuple(record for _, record in read_file(home.attestations))
    caller = TrioClient(load_or_create_identity(home.identity_key), announce=lambda _: None)
    call = Call(service_id_for_name(service), (), attestations)

    async def go() -> CallResult:
        with trio.fail_after(30):
            output = await caller.call(Target.parse(target), call)
        assert output.stdout == b"priced\n"
        return output.result

    return trio.run(go)


def _logged_cost(server: Server, job_id: str) -> int:
    line = server.wait_for_log(lambda s: f"job {job_id} " in s, 10.0)
    assert line is not None, f"no log line for job {job_id}:\n{server.log}"
    return int(line.rpartition(", cost ")[2].removesuffix(" msat"))


def test_free_orgs_quotes_nothing_to_members_and_the_price_to_a_stranger(lab: Lab) -> None:
    held = Terms(per_call=PRICE, held=PRICE)  # the hold: a call's price, no time or size part
    for caller, quote, cost in [(lab.robots[0], Terms(), 0), (lab.stranger, held, PRICE)]:
        ran = _trio_call(caller, lab.desktop.target, "priced")
        assert ran.terms == quote, caller.home.name  # the Accept's quote
        assert ran.exit.exit_code == 0
        assert ran.exit.cost == cost, caller.home.name  # the Exit's settled cost
        assert _logged_cost(lab.desktop, ran.job_id) == cost  # and the node's job line
    # `hubnode call` from a robot's home presents the home's attestation in the same way.
    result = lab.robots[1].call(lab.desktop.target, "priced")
    assert result.returncode == 0, result.stderr.decode()
    who = fingerprint(decode_peer_id(lab.robots[1].peer_id))
    line = lab.desktop.wait_for_log(lambda s: f" priced for {who}: exit 0" in s, 10.0)
    assert line is not None and line.endswith(", cost 0 msat"), line


# --- client rules -------------------------------------------------------------------------------


def _client_with(root: Path, name: str, select: str, lab: Lab) -> Client:
    """A caller with `select` rules, and an account at both desktops to pay for `who`."""
    client = Client(root / name)
    (client.home / "client.toml").write_text(f"bootstrap = [{toml_string(lab.seed)}]\n\n[select]\n{select}\n")
    _fund(lab.desktop, client)
    _fund(lab.stranger_desktop, client)
    return client


def _fund(server: Server, *callers: Client) -> None:
    """The node's operator credits `callers` enough for every paid call of this module."""
    operator = Client(server.home)
    for caller in callers:
        _must(operator.run("ledger", "credit", caller.peer_id, "1000000"), "ledger credit")


def _who(client: Client) -> str:
    result = client.run("call", "who", input=None)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def test_only_orgs_never_calls_a_cheaper_provider_outside_the_organisation(lab: Lab, tmp_path: Path) -> None:
    # Without rules the stranger's desktop wins on price: the cheaper offer is there to be taken.
    plain = _client_with(tmp_path, "plain", "", lab)
    assert [_who(plain) for _ in range(2)] == ["stranger-desktop"] * 2
    picky = _client_with(tmp_path, "picky", f"only_orgs = [{toml_string(lab.org)}]", lab)
    assert [_who(picky) for _ in range(4)] == ["lab-desktop"] * 4
    # ...and a role the lab's desktop does not have leaves nothing acceptable (exit 127).
    robots_only = _client_with(
        tmp_path, "robots-only", f"only_orgs = [{toml_string(lab.org + '/robot')}]", lab
    )
    result = robots_only.run("call", "who", input=None)
    assert result.returncode == 127, result.stderr.decode()
    assert "none acceptable" in result.stderr.decode()


def test_trusted_orgs_prefers_a_member_over_a_cheaper_stranger(lab: Lab, tmp_path: Path) -> None:
    trusting = _client_with(tmp_path, "trusting", f"trusted_orgs = [{toml_string(lab.org)}]", lab)
    assert [_who(trusting) for _ in range(4)] == ["lab-desktop"] * 4
    # Still ranked, not exclusive: both offers are acceptable, the lab's first.
    result = trusting.run("services", "--json", "-b", lab.seed, "who", input=None)
    assert result.returncode == 0, result.stderr.decode()
    rows = json.loads(result.stdout)
    assert [row["peer"] for row in rows] == [lab.desktop.peer_id, lab.stranger_desktop.peer_id]


# --- revocation (last: it takes a robot out for the rest of the module) --------------------------


def test_a_revoked_robot_is_refused_within_the_refresh_while_the_other_is_served(lab: Lab) -> None:
    kept, revoked = lab.robots
    for robot in lab.robots:
        assert robot.call(lab.desktop.target, "members").returncode == 0
    (lab.markers / revoked.peer_id).unlink()
    started = time.monotonic()
    result = lab.admin.run("org", "revoke", "lab", revoked.peer_id, "--bootstrap", lab.desktop.target)
    published = time.monotonic()
    assert result.returncode == 0, result.stderr.decode()
    assert "revoked from lab" in result.stderr.decode()

    refused = None
    while time.monotonic() < published + REVOKE_DEADLINE:
        attempt = revoked.call(lab.desktop.target, "members")
        if attempt.returncode == 126:
            refused = attempt
            break
        assert attempt.returncode == 0, attempt.stderr.decode()
        (lab.markers / revoked.peer_id).unlink()
        time.sleep(0.1)
    first_refused = time.monotonic()
    assert refused is not None, f"still served {REVOKE_DEADLINE}s after the revocation:\n{lab.desktop.log}"
    print(
        f"\norg revoke took {published - started:.2f}s; first refused call "
        f"{first_refused - published:.2f}s after it returned (refresh {ORG_REFRESH}s)"
    )
    assert "counts for nothing: the organisation revoked it" in refused.stderr.decode()
    assert not lab.ran_for(revoked)
    # The other robot is still served, and free.
    result = kept.call(lab.desktop.target, "members")
    assert result.returncode == 0, result.stderr.decode()
    assert _trio_call(kept, lab.desktop.target, "priced").terms == Terms()
    # The revoked one is refused for good, and pays again where members are free.
    assert revoked.call(lab.desktop.target, "members").returncode == 126
    assert _trio_call(revoked, lab.desktop.target, "priced").terms.per_call == PRICE
