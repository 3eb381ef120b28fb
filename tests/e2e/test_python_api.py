"""The Python API (`import hubnet`) against the package's real `hubnode serve`.

Blocking calls, a stream written in pieces and read as it comes, the Trio form with many
calls at once, the typed errors, and the same home as the CLI (an alias made with
`hubnode alias` works from Python).
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

import hubnet
from tests.e2e.conftest import Node
from tests.e2e.harness import Client


def test_call_returns_the_output_status_and_provider(node: Node, client: Client) -> None:
    result = hubnet.call("cat", stdin=b"hello\x00world", server=node.target, home=client.home)
    assert result.stdout == b"hello\x00world" and result.exit_code == 0 and result.ok
    assert result.provider == node.server.peer_id and result.signal is None
    failed = hubnet.call("argv", ["a b", "-n", "5"], server=node.target, home=client.home)
    assert failed.exit_code == 3 and not failed.ok
    assert failed.stdout == b"<a b>\n<-n>\n<5>\n"


def test_stdin_from_a_file(node: Node, client: Client, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    with path.open("rb") as file:
        assert hubnet.call("cat", stdin=file, server=node.target, home=client.home).stdout == data
    # A file-like object without a descriptor is read first.
    assert hubnet.call("cat", stdin=io.BytesIO(b"abc"), server=node.target, home=client.home).stdout == b"abc"


def test_errors_are_the_projects_typed_exceptions(node: Node, client: Client) -> None:
    with pytest.raises(hubnet.NotOffered, match="no service 'nosuch'"):
        hubnet.call("nosuch", server=node.target, home=client.home)
    with pytest.raises(hubnet.Rejected) as refused:
        hubnet.call("argv", ["--bogus"], server=node.target, home=client.home)
    assert refused.value.code == "bad-arguments"
    with pytest.raises(hubnet.TransportError):
        hubnet.call("sleepy", server=node.target, home=client.home, timeout=0.3)
    with pytest.raises(TypeError, match="sequence of strings"):
        hubnet.call("cat", "oops", server=node.target, home=client.home)
    assert issubclass(hubnet.Rejected, hubnet.HubnetError)


def test_output_past_max_output_ends_the_call(node: Node, client: Client) -> None:
    """A node's output is kept in memory up to `max_output` and no further, in both forms."""
    data = os.urandom(3 << 20)
    said = r"127\.0\.0\.1:\d+: the node sent more than 1048576 bytes of output"
    with pytest.raises(hubnet.OutputTooLarge, match=said):
        hubnet.call("cat", stdin=data, server=node.target, home=client.home, max_output=1 << 20)
    assert issubclass(hubnet.OutputTooLarge, hubnet.TransportError)  # another provider may be tried

    async def trio_form(limit: int | None) -> hubnet.Result:
        return await hubnet.trio_api.call(
            "cat", stdin=data, server=node.target, home=client.home, max_output=limit
        )

    with pytest.raises(hubnet.OutputTooLarge):
        trio.run(trio_form, 1 << 20)
    assert trio.run(trio_form, None).stdout == data  # None: no bound
    assert (
        hubnet.call("cat", stdin=data, server=node.target, home=client.home).stdout == data
    )  # under the default


def test_the_clis_alias_works_from_python(node: Node, client: Client) -> None:
    made = client.run("alias", "--server", node.target, "shout", "argv", "--flag")
    assert made.returncode == 0, made.stderr
    result = hubnet.call("shout", ["x"], home=client.home)
    assert result.stdout == b"<--flag>\n<x>\n" and result.exit_code == 3


def test_a_stream_is_written_in_pieces_and_read_as_it_comes(node: Node, client: Client) -> None:
    with hubnet.stream("cat", server=node.target, home=client.home) as job:
        chunks = iter(job)
        for piece in (b"one ", b"two ", b"three"):
            job.write(piece)
            seen = b""
            while len(seen) < len(piece):  # cat echoes each piece before the next is sent
                seen += next(chunks)
            assert seen == piece
        job.close_stdin()
        result = job.result()
    assert result.exit_code == 0 and result.stdout == b""  # all of it was read as it came
    assert result.provider == node.server.peer_id


def test_many_blocking_calls_at_once_from_threads(node: Node, client: Client) -> None:
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        results[i] = hubnet.call("cat", stdin=str(i).encode(), server=node.target, home=client.home).stdout

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: str(i).encode() for i in range(12)}


def test_the_trio_forms_run_many_calls_at_once(node: Node, client: Client) -> None:
    async def main() -> tuple[list[bytes], bytes]:
        outputs: list[bytes] = [b""] * 20

        async def one(i: int) -> None:
            result = await hubnet.trio_api.call("cat", stdin=b"%d" % i, server=node.target, home=client.home)
            outputs[i] = result.stdout

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        async with hubnet.trio_api.stream("cat", server=node.target, home=client.home) as job:
            await job.send(b"streamed ")
            first = await job.receive()
            await job.send(b"audio")
            await job.end_stdin()
            rest = b"".join([chunk async for chunk in job])
        return outputs, first + rest

    outputs, streamed = trio.run(main)
    assert outputs == [b"%d" % i for i in range(20)]
    assert streamed == b"streamed audio"


def test_the_executor_fans_calls_out_with_the_standard_interface(node: Node, client: Client) -> None:
    with hubnet.Executor(servers=[node.target], home=client.home, retries=1) as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        results = list(pool.map("cat", [b"%d" % i for i in range(30)]))
        future = pool.submit("argv", b"", ["x"])
        missing = pool.submit("nosuch")
    assert [r.stdout for r in results] == [b"%d" % i for i in range(30)]
    assert all(r.provider == node.server.peer_id and r.ok for r in results)
    assert future.result().exit_code == 3 and future.result().stdout == b"<x>\n"
    with pytest.raises(hubnet.HubnetError, match="no-such-service"):
        missing.result()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit("cat")


def test_importing_hubnet_for_a_call_does_not_import_trio() -> None:
    code = "import sys, hubnet; hubnet.call; hubnet.Result; assert 'trio' not in sys.modules, 'trio'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()


def test_a_server_given_by_address_alone_is_remembered_as_the_cli_does(node: Node, client: Client) -> None:
    result = hubnet.call("cat", stdin=b"x", server=node.server.address, home=client.home)
    assert result.stdout == b"x" and result.provider == node.server.peer_id
    assert node.server.peer_id in client.known_hosts.read_text()
    # The caller is the home's identity, the one `hubnode id` prints.
    who = hubnet.call("whoami", server=node.target, home=client.home)
    assert who.stdout.split()[0].decode() == client.peer_id
