"""`hubnode map` end to end: real `hubnode serve` processes, a real DHT, real kills.

Four providers of a checksum service join one DHT; a fifth, outside it, runs a different
program under the same name (a provider that returns wrong output). Checked: 200 inputs
found through the DHT and spread over all four while one is killed midway (every result
right, the joblog complete); a run cut by Ctrl-C and `--resume`d runs only what was left;
`--redundancy 3` outvotes and reports the liar.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import pty
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import hubnet
from tests.e2e.harness import Client, Server, base_env, wait_until
from tests.helpers import lacking, require_program

PROVIDERS = 4
OFFERS_TIMEOUT = 30.0
RUN_TIMEOUT = 120.0


def _checksum_toml(program: str, pause: float) -> str:
    return f"""listen = "127.0.0.1:0"
max_jobs = 4

[services.checksum]
description = "the SHA-256 of stdin (the liar's: another digest)"
command = ["sh", "-c", "sleep {pause}; exec {program}"]
"""


@dataclass
class Network:
    honest: list[Server]
    liar: Server
    client: Client

    @property
    def seed(self) -> str:
        return self.honest[0].target


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    for program in ("sh", "sleep", "sha256sum", "md5sum"):
        require_program(program)
    root = tmp_path_factory.mktemp("map")
    servers: list[Server] = []
    try:
        for i in range(PROVIDERS):
            args = ["--no-lan", *(["--bootstrap", servers[0].target] if servers else [])]
            servers.append(Server(root / f"p{i}", _checksum_toml("sha256sum", 0.02), serve_args=args).start())
        liar = Server(root / "liar", _checksum_toml("md5sum", 0.02)).start()
        servers.append(liar)
        client = Client(root / "client")

        def offers() -> int:
            found = client.run("services", "--json", "-b", servers[0].target, "checksum", input=None)
            return len(json.loads(found.stdout)) if found.returncode == 0 else 0

        assert wait_until(lambda: offers() == PROVIDERS, OFFERS_TIMEOUT, interval=0.3), "offers not found"
        yield Network(servers[:PROVIDERS], liar, client)
    finally:
        problems = [p for server in servers for p in server.stop()]
    assert not problems, problems


def _inputs(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"in{i:03}.txt"
        path.write_bytes(f"input number {i}\n".encode() * (i % 7 + 1))
        paths.append(path)
    return paths


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _joblog(path: Path) -> list[dict[str, str]]:
    header, *rows = path.read_text().splitlines()
    names = header.split("\t")
    return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]


def _map(client: Client, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        client.command("map", *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base_env(),
    )


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_200_inputs_over_four_providers_with_one_killed_midway(network: Network, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in", 200)
    joblog = tmp_path / "joblog"
    run = _map(
        network.client,
        "-b",
        network.seed,
        "--retries",
        "3",
        "-k",
        "--joblog",
        str(joblog),
        "checksum",
        ":::",
        *map(str, inputs),
    )
    victim = network.honest[2]
    try:
        # Midway: once a quarter of the inputs are logged, one provider dies (SIGKILL, as a crash).
        assert wait_until(lambda: _lines(joblog) > 50 or run.poll() is not None, RUN_TIMEOUT)
        assert run.poll() is None, "the run ended before the kill: nothing was shown"
        victim.kill()
        stdout, stderr = run.communicate(timeout=RUN_TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr.decode()
    # Every result right, in input order (-k).
    assert stdout.decode().splitlines() == [f"{_sha(path)}  -" for path in inputs]
    rows = _joblog(joblog)
    assert sorted(int(row["Seq"]) for row in rows) == list(range(1, 201))  # each input exactly once
    assert all(row["Exitval"] == "0" and row["Signal"] == "0" for row in rows)
    providers = {row["Provider"] for row in rows}
    assert providers <= {server.peer_id for server in network.honest}
    assert len(providers) == PROVIDERS  # all four took work (the victim before it died)
    assert all(row["Command"] == f"checksum < {inputs[int(row['Seq']) - 1]}" for row in rows)
    assert "200 done, 0 failed" in stderr.decode()


def test_resume_after_ctrl_c_runs_only_what_was_left(network: Network, tmp_path: Path) -> None:
    alive = [server for server in network.honest if server.running]
    servers = [arg for server in alive for arg in ("-s", server.target)]
    inputs = _inputs(tmp_path / "in", 60)
    joblog = tmp_path / "joblog"
    first = _map(
        network.client, *servers, "-j", "2", "--joblog", str(joblog), "checksum", ":::", *map(str, inputs)
    )
    try:
        assert wait_until(lambda: _lines(joblog) > 10 or first.poll() is not None, RUN_TIMEOUT)
        assert first.poll() is None, "the run ended before Ctrl-C"
        first.send_signal(signal.SIGINT)
        out_first, err_first = first.communicate(timeout=RUN_TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, err_first.decode()
    done_first = {int(row["Seq"]) for row in _joblog(joblog)}
    assert 10 <= len(done_first) < 60
    # What the first run logged, it printed (and nothing it did not log).
    assert len(out_first.decode().splitlines()) == len(done_first)

    second = network.client.run(
        "map", *servers, "--resume", "--joblog", str(joblog), "-k", "checksum", ":::", *map(str, inputs)
    )
    assert second.returncode == 0, second.stderr.decode()
    left = [path for i, path in enumerate(inputs, start=1) if i not in done_first]
    assert second.stdout.decode().splitlines() == [f"{_sha(path)}  -" for path in left]
    rows = _joblog(joblog)
    assert sorted(int(row["Seq"]) for row in rows) == list(range(1, 61))  # none twice, none missing
    assert f"{len(done_first)} skipped (resumed)" in second.stderr.decode()


def test_redundancy_outvotes_and_reports_a_provider_with_wrong_output(
    network: Network, tmp_path: Path
) -> None:
    alive = [server for server in network.honest if server.running]
    servers = [arg for server in [*alive, network.liar] for arg in ("-s", server.target)]
    inputs = _inputs(tmp_path / "in", 12)
    joblog = tmp_path / "joblog"
    result = network.client.run(
        "map",
        *servers,
        "--redundancy",
        "3",
        "--joblog",
        str(joblog),
        "-k",
        "checksum",
        ":::",
        *map(str, inputs),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [f"{_sha(path)}  -" for path in inputs]
    stderr = result.stderr.decode()
    assert f"avoided {network.liar.peer_id}: its output disagreed with the majority" in stderr
    assert network.liar.peer_id not in {row["Provider"] for row in _joblog(joblog)}


def test_map_says_what_is_wrong_in_one_line(network: Network, tmp_path: Path) -> None:
    no_inputs = network.client.run("map", "-s", network.seed, "checksum", input=None)
    assert no_inputs.returncode == 255 and b"no inputs" in no_inputs.stderr
    missing = network.client.run(
        "map", "-s", network.seed, "checksum", ":::", str(tmp_path / "nope"), input=None
    )
    assert missing.returncode == 255 and b"not readable files" in missing.stderr
    resume = network.client.run("map", "--resume", "checksum", ":::", "x", input=None)
    assert resume.returncode == 2 and b"--resume needs --joblog" in resume.stderr
    started = time.monotonic()
    bad = network.client.run("map", "-s", network.seed, "nosuch", "{}", ":::", "a", "b", input=None)
    assert bad.returncode == 2, bad.stderr.decode()  # both inputs failed: the node has no such service
    assert b"refused: no-such-service" in bad.stderr and time.monotonic() - started < RUN_TIMEOUT


def test_max_output_fails_an_attempt_whose_node_sends_more(network: Network, tmp_path: Path) -> None:
    """What a job's output may take of the client's memory is bounded: past --max-output the
    attempt fails (and counts), within it the run is as usual. A digest line ("HEX  -\\n") is 68 bytes."""
    inputs = [str(path) for path in _inputs(tmp_path / "in", 3)]
    over = network.client.run(
        "map", "-s", network.seed, "--max-output", "10", "checksum", ":::", *inputs, input=None
    )
    assert over.returncode == 3, over.stderr.decode()  # GNU parallel's status: three inputs failed
    assert b"more than 10 bytes of output" in over.stderr and over.stdout == b""
    within = network.client.run(
        "map", "-s", network.seed, "--max-output", "68", "checksum", ":::", *inputs, input=None
    )
    assert within.returncode == 0, within.stderr.decode()
    assert sorted(within.stdout.decode().split()[::2]) == sorted(_sha(Path(path)) for path in inputs)


def test_a_terminal_gets_a_progress_bar(network: Network, tmp_path: Path) -> None:
    if importlib.util.find_spec("tqdm") is None:
        lacking("tqdm is not installed: pip install 'hubnet[map]' (the bar needs it)")
    inputs = _inputs(tmp_path / "in", 8)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal's size
    try:
        done = subprocess.run(
            network.client.command(
                "map", "-s", network.honest[0].target, "checksum", ":::", *map(str, inputs)
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=base_env(),
            timeout=RUN_TIMEOUT,
            check=False,
        )
        os.close(follower)
        shown = b""
        while chunk := _read_some(leader):
            shown += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"8/8" in shown and b"running" in shown and b"providers" in shown  # tqdm's bar and our fields


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side is closed and everything was read
        return b""


def test_max_cost_starts_no_job_that_could_take_the_run_above_it(tmp_path: Path) -> None:
    """A service at 10 msat a call, a budget of 35 for ten inputs: three run, seven are
    reported unrun, and what was charged (the joblog's costs, the kept receipts) stays within it."""
    priced = """listen = "127.0.0.1:0"
max_jobs = 4

[services.priced]
command = ["cat"]
price = { per_call = 10 }
"""
    client = Client(tmp_path / "client")
    with Server(tmp_path / "node", priced) as node:
        credited = Client(node.home).run("ledger", "credit", client.peer_id, "1000")
        assert credited.returncode == 0, credited.stderr.decode()
        inputs = _inputs(tmp_path / "in", 10)
        joblog = tmp_path / "joblog"
        run = client.run(
            "map",
            "-s",
            node.target,
            "--max-cost",
            "35",
            "--joblog",
            str(joblog),
            "priced",
            ":::",
            *map(str, inputs),
        )
        # The Python API: a ceiling below the hold is refused by the node; one at it pays.
        with pytest.raises(hubnet.Rejected) as refused:
            hubnet.call("priced", stdin=b"x", server=node.target, home=client.home, max_cost=5)
        assert refused.value.code == "too-expensive"
        paid = hubnet.call("priced", stdin=b"x", server=node.target, home=client.home, max_cost=10)
        assert paid.stdout == b"x" and paid.cost == 10 and paid.receipt is not None
    assert run.returncode == 7, run.stderr.decode()  # GNU parallel's status: seven inputs failed
    rows = _joblog(joblog)
    ran = [row for row in rows if row["Exitval"] == "0"]
    assert len(ran) == 3 and all(row["Cost"] == "10" for row in ran)
    assert sum(int(row["Cost"]) for row in rows) <= 35
    assert b"would be exceeded" in run.stderr and b"3 done, 7 failed" in run.stderr
    assert b"30 msat" in run.stderr
    kept = client.run("receipts", "--json", input=None)
    assert kept.returncode == 0, kept.stderr.decode()
    receipts = json.loads(kept.stdout)["receipts"]  # every paid job's signed receipt, checked and kept
    assert sorted(r["cost"] for r in receipts) == [10, 10, 10, 10] and not json.loads(kept.stdout).get(
        "problems"
    )


def test_the_python_api_finds_the_providers_in_the_dht(network: Network, tmp_path: Path) -> None:
    honest = {server.peer_id for server in network.honest}
    data = b"through the DHT\n"
    want = hashlib.sha256(data).hexdigest() + "  -\n"
    home, seed = network.client.home, [network.seed]
    found = hubnet.call("checksum", stdin=data, bootstrap=seed, home=home)
    assert found.stdout.decode() == want and found.provider in honest
    in_trio = trio.run(
        functools.partial(hubnet.trio_api.call, "checksum", stdin=data, bootstrap=seed, home=home)
    )
    assert in_trio.stdout.decode() == want and in_trio.provider in honest
    inputs = [b"%d\n" % i for i in range(12)]
    with hubnet.Executor(bootstrap=seed, home=home, retries=2) as pool:
        results = list(pool.map("checksum", inputs))
    assert [r.stdout.decode() for r in results] == [hashlib.sha256(i).hexdigest() + "  -\n" for i in inputs]
    # Every provider starts with one slot, so the first jobs went to several at once.
    assert {r.provider for r in results} <= honest and len({r.provider for r in results}) >= 2
