"""One real `hubnode serve` for the whole e2e package, and a fresh client home per test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import Client, Server, base_env, toml_string
from tests.helpers import require_program

# Set in the server's environment only; a job must never see it (jobs get a scrubbed environment).
SECRET = "SECRET_TOKEN"
SECRET_VALUE = "hunter2-do-not-leak"
# Only these may reach a job: PATH from the node, what the node sets, and the service's `env` table.
# PWD: set by the sandbox (bwrap) to the job's working directory, as a shell would.
JOB_ENV_NAMES = {"PATH", "LANG", "HOME", "TMPDIR", "PWD", "HUBNET_CLIENT", "HUBNET_JOB", "HUBNET_SERVICE"}
MAX_JOBS = 64
ESPEAK_ARGUMENTS = '{ options = { "--stdout" = "flag", "-v" = "word", "-s" = "int" }, positional = 1 }'
ESPEAK_SUMMARY = "--stdout, -v WORD, -s INT; up to 1 TEXT"


@dataclass(frozen=True)
class Node:
    """The package's server and the files its services touch."""

    server: Server
    marker: Path  # `marked` touches it before running cat
    private_marker: Path  # `private` touches it
    pidfile: Path  # `pidfile` writes its pid there
    allowed: Client  # the one caller on `private`'s allow list

    @property
    def target(self) -> str:
        return self.server.target


def services_toml(marker: Path, private_marker: Path, pidfile: Path, allowed_peer: str) -> str:
    return f"""
listen = "127.0.0.1:0"
max_jobs = {MAX_JOBS}

[services.cat]
description = "copies stdin to stdout"
command = ["cat"]
max_concurrent = 32

[services.cat-queued]
description = "cat, two at a time"
command = ["sh", "-c", "sleep 0.2; exec cat"]
max_concurrent = 2

[services.espeak]
description = "text to speech"
command = ["espeak-ng", "--stdout"]
arguments = {ESPEAK_ARGUMENTS}

[services.marked]
command = ["sh", "-c", "touch \\"$MARKER\\"; cat", "sh"]
env = {{ MARKER = {toml_string(marker)} }}
arguments = {ESPEAK_ARGUMENTS}
sandbox = false  # it leaves a mark outside any job's folder, where the test looks

[services.exit7]
command = ["sh", "-c", "exit 7"]

[services.sigterm]
command = ["sh", "-c", "kill -TERM $$"]

[services.sleepy]
command = ["sleep", "60"]
timeout = 1

[services.capped]
command = ["head", "-c", "100000", "/dev/zero"]
max_output = 1000

[services.capped-small]
command = ["head", "-c", "2000", "/dev/zero"]
max_output = 1000

[services.pidfile]
command = ["sh", "-c", "echo $$ > \\"$PIDFILE\\"; exec sleep 600"]
env = {{ PIDFILE = {toml_string(pidfile)} }}
sandbox = false  # its pid is read and signalled from outside: no PID namespace of its own

[services.whoami]
command = ["sh", "-c", "echo $HUBNET_CLIENT $HUBNET_JOB"]

[services.env]
command = ["env"]
env = {{ GREETING = "hello from services.toml" }}

[services.private]
command = ["sh", "-c", "touch \\"$MARKER\\"; echo ok"]
allow = [{toml_string(allowed_peer)}]
env = {{ MARKER = {toml_string(private_marker)} }}
sandbox = false  # it leaves a mark outside any job's folder, where the test looks

[services.argv]
command = ["sh", "-c", "for a; do printf '<%s>\\\\n' \\"$a\\"; done; exit 3", "sh"]
arguments = {{ options = {{ "--flag" = "flag", "-n" = "int" }}, positional = 4 }}
"""


@pytest.fixture(scope="package")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    for program in ("sh", "cat", "head", "sleep", "env"):
        require_program(program)
    root = tmp_path_factory.mktemp("node")
    allowed = Client(root / "allowed-client")
    toml = services_toml(root / "marker", root / "private-marker", root / "job.pid", allowed.peer_id)
    server = Server(root / "server", toml, env=base_env(**{SECRET: SECRET_VALUE}))
    with server:
        yield Node(server, root / "marker", root / "private-marker", root / "job.pid", allowed)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """A caller with a fresh home: a new identity and an empty known_hosts."""
    return Client(tmp_path / "client")
