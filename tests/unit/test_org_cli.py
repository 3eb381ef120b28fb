"""`hubnode org`: create, attest, join (text, file, stdin), list and revoke, through the real CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hubnet.cli import cli
from hubnet.dht.records import ProviderRecord
from hubnet.dht.store import RecordRefused, RecordStore
from hubnet.exits import exit_code_for
from hubnet.identity.errors import HubnetError
from hubnet.identity.keys import Identity, decode_peer_id
from hubnet.node.org_records import newest_revocations, revocations_key


def _run(home: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Exit status, stdout and stderr, with errors turned into both as `hubnet.main` does."""
    result = CliRunner().invoke(cli, ["--home", str(home), *args], input=stdin)
    if isinstance(result.exception, HubnetError):
        return exit_code_for(result.exception), result.stdout, f"hubnode: {result.exception}\n"
    return result.exit_code, result.stdout, result.stderr


def test_create_attest_join_and_list(tmp_path: Path) -> None:
    admin, robot = tmp_path / "admin", tmp_path / "robot"
    code, org_id, _ = _run(admin, "org", "create", "lab", "--label", "The Lab")
    assert code == 0
    org_id = org_id.strip().splitlines()[-1]
    key = admin / "orgs" / "lab.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _, robot_id, _ = _run(robot, "id")
    long_label = "robot " + "x" * 58  # the longest label: its text is too long to be a file name
    code, text, _ = _run(
        admin, "org", "attest", "lab", robot_id.strip(), "--role", "robot", "--label", long_label
    )
    assert code == 0 and text.count("\n") == 1
    for given, stdin in ((text.strip(), None), ("-", text)):
        code, _, said = _run(robot, "org", "join", given, stdin=stdin)
        assert code == 0, said
        assert f"member of {org_id} as robot" in said
    saved = tmp_path / "attestation.txt"
    saved.write_text(text)
    assert _run(robot, "org", "join", str(saved))[0] == 0
    assert len((robot / "attestations").read_text().splitlines()) == 1  # one per organisation
    code, listing, _ = _run(robot, "org", "list", "--json")
    member_of = json.loads(listing)["member_of"]
    assert [(m["org"], m["role"], m["valid"]) for m in member_of] == [(org_id, "robot", True)]


def test_an_attestation_for_another_key_is_refused_on_join(tmp_path: Path) -> None:
    admin = tmp_path / "admin"
    assert _run(admin, "org", "create", "lab")[0] == 0
    someone = Identity.generate().peer_id
    _, text, _ = _run(admin, "org", "attest", "lab", someone, "--role", "member")
    code, _, said = _run(tmp_path / "me", "org", "join", text.strip())
    assert code == 2 and f"for {someone}, not for this node" in said


def test_join_names_what_it_could_not_read(tmp_path: Path) -> None:
    code, _, said = _run(tmp_path, "org", "join", "no-such-file")
    assert code == 2 and "'no-such-file' is neither an attestation" in said


def test_revoke_without_a_dht_saves_the_list_and_says_it_is_not_published(tmp_path: Path) -> None:
    assert _run(tmp_path, "org", "create", "lab")[0] == 0
    member = Identity.generate().peer_id
    code, _, said = _run(tmp_path, "org", "revoke", "lab", member)
    assert code == 255 and "saved, but not published" in said
    state = json.loads((tmp_path / "orgs" / "lab.json").read_text())
    assert state["revoked"] == [member]
    code, _, said = _run(tmp_path, "org", "revoke", "nope", member)
    assert code == 2 and "no organisation 'nope'" in said and "lab" in said


class _OneNodeDht:
    """A DHT of one node's record store, in place of `DhtClient` (which `hubnode org` imports
    when it publishes)."""

    store = RecordStore()

    def __init__(self, identity: Identity, seeds: object) -> None:
        pass

    def __enter__(self) -> _OneNodeDht:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def publish_provider(self, record: ProviderRecord) -> int:
        try:
            self.store.add_provider(record)
        except RecordRefused:
            return 0
        return 1


def test_revocations_within_one_second_are_all_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DHT nodes keep a publisher's record only if its sequence is newer: the time in seconds
    # made a second revoke within a second (or a revoke right after create) fail to publish.
    monkeypatch.setattr("hubnet.dht.client.DhtClient", _OneNodeDht)
    monkeypatch.setattr(_OneNodeDht, "store", RecordStore())
    monkeypatch.setattr("time.time", lambda: 1_700_000_000.5)
    seed = f"{Identity.generate().peer_id}@127.0.0.1:9"
    code, org_id, said = _run(tmp_path, "org", "create", "lab", "--bootstrap", seed)
    assert code == 0, said
    members = [Identity.generate().peer_id for _ in range(3)]
    for member in members:
        code, _, said = _run(tmp_path, "org", "revoke", "lab", member, "--bootstrap", seed)
        assert code == 0, said
    org = decode_peer_id(org_id.strip().splitlines()[-1])
    records = _OneNodeDht.store.providers(revocations_key(org), now=1_700_000_000)
    newest = newest_revocations(records, org)
    assert newest is not None and newest.revoked == {decode_peer_id(m) for m in members}
