"""`hubnode services SERVICE` shows each provider's organisations, with real nodes on 127.0.0.1.

The lab's key lives in the home of a node that serves nothing (the DHT's seed, which
publishes the lab's profile); a desktop whose home joined the lab as a server offers `who`,
free for the lab's members. A client sees the desktop's membership and the free_orgs with
the lab's label marked unverified, until its client.toml names the lab.
"""

from __future__ import annotations

import json
from pathlib import Path

from hubnet.identity.keys import decode_peer_id, fingerprint
from tests.e2e.harness import Client, Server, wait_until

SHOW_TIMEOUT = 30.0
LABEL = "The Robot Lab"


def _ok(client: Client, *args: str) -> str:
    result = client.run(*args, input=None)
    assert result.returncode == 0, (args, result.stderr.decode())
    return result.stdout.decode()


def test_services_shows_the_providers_organisations(tmp_path: Path) -> None:
    admin = Client(tmp_path / "seed")  # the lab's key lives in the seed node's home
    lab = _ok(admin, "org", "create", "lab", "--label", LABEL).strip()
    desktop = Client(tmp_path / "desktop")
    attestation = _ok(admin, "org", "attest", "lab", desktop.peer_id, "--role", "server").strip()
    _ok(desktop, "org", "join", attestation)
    who = f'listen = "127.0.0.1:0"\n\n[services.who]\ncommand = ["echo", "desktop"]\nfree_orgs = ["{lab}"]\n'
    client = Client(tmp_path / "client")
    with (
        Server(admin.home, 'listen = "127.0.0.1:0"\n') as seed,
        Server(desktop.home, who, serve_args=("--no-lan", "--bootstrap", seed.target)),
    ):
        shown = ("services", "--bootstrap", seed.target, "--json", "who")

        def labelled() -> bool:
            result = client.run(*shown, input=None)
            found = json.loads(result.stdout) if result.returncode == 0 else []
            return any(org["label"] for row in found for org in row["orgs"])

        # The desktop publishes its offer, and the seed the lab's profile, as they start.
        assert wait_until(labelled, SHOW_TIMEOUT, interval=0.2), client.run(*shown).stdout
        [row] = json.loads(_ok(client, *shown))
        lab_shown = {"org": lab, "fingerprint": fingerprint(decode_peer_id(lab)), "label": LABEL}
        assert row["peer"] == desktop.peer_id
        assert row["orgs"] == [{**lab_shown, "verified": False, "role": "server"}]
        assert row["free_orgs"] == [{**lab_shown, "verified": False}]
        table = _ok(client, *(a for a in shown if a != "--json"))
        short = fingerprint(decode_peer_id(lab))
        assert (
            f'member of "{LABEL}" ({short}, unverified) as server; '
            f'free for members of "{LABEL}" ({short}, unverified)'
        ) in table

        # Named in the client's config, the lab's id is one the client trusts: verified.
        (client.home / "client.toml").write_text(f'[select]\ntrusted_orgs = ["{lab}"]\n', encoding="utf-8")
        [row] = json.loads(_ok(client, *shown))
        assert row["orgs"] == [{**lab_shown, "verified": True, "role": "server"}]
        table = _ok(client, *(a for a in shown if a != "--json"))
        assert f'member of "{LABEL}" ({short}) as server; free for members of "{LABEL}" ({short})' in table
        assert "unverified" not in table
