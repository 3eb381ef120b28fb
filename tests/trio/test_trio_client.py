"""The Trio client (hubnet.trio_client) against a real node.server.Node.

Most tests reach the node through an in-memory StreamDialer, which also tests the dialer
seam: the client never opens a socket itself. One test takes the real TCP path. The jobs
are real processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress
from hubnet.identity.errors import HostKeyMismatch, Rejected, RemoteProtocolError, TransportError
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.identity.secure import SecureStream, accept_secure
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import (
    STDIN_WINDOW,
    Accept,
    Call,
    GetStatus,
    JobConnection,
    ListServices,
    Role,
    Services,
    Start,
    StatusReply,
    Stdout,
)
from hubnet.node.reservations import RelayFinder, RelayListener
from hubnet.node.server import Node
from hubnet.node.services import parse_services
from hubnet.trio_client import Client
from tests.helpers import require_program

ADDRESS = DirectAddress("node.test", 7070)  # never resolved: the in-memory dialer takes it

SERVICES = """
listen = "127.0.0.1:0"

[services.cat]
command = ["cat"]

[services.both]
command = ["sh", "-c", "echo out; echo err >&2; echo more"]

[services.sleep]
command = ["sleep", "30"]
timeout = 60
"""


def _node() -> Node:
    for program in ("cat", "sh", "sleep"):
        require_program(program)
    return Node(parse_services(SERVICES), Identity.generate(), start_timeout=30.0)


class MemoryDialer:
    """Connects every address to `node` over an in-memory stream pair; records what it dialled."""

    def __init__(self, node: Node, nursery: trio.Nursery) -> None:
        self.node = node
        self.nursery = nursery
        self.dialled: list[Address] = []

    async def dial(self, address: Address) -> trio.abc.Stream:
        self.dialled.append(address)
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.node.handle_connection, server_side)
        return client_side


def _pinned(node: Node) -> Target:
    return Target(ADDRESS, node.identity.public_key)


def _node_log(caplog: pytest.LogCaptureFixture, service: str) -> list[str]:
    """The node's lines saying how a job of `service` ended."""
    return [r.getMessage() for r in caplog.records if f" {service} for " in r.getMessage()]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await trio.lowlevel.checkpoint()


async def test_three_mebibytes_through_cat_from_an_async_iterable() -> None:
    node = _node()
    data = os.urandom(3 * 1024 * 1024)
    assert len(data) > 2 * STDIN_WINDOW  # so the call lives on the node's credit
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            dialer = MemoryDialer(node, nursery)
            client = Client(Identity.generate(), dialer=dialer)
            output = await client.call(
                _pinned(node), Call(service_id_for_name("cat")), stdin=_chunks(data, 100_003)
            )
    assert output.stdout == data
    assert output.stderr == b""
    result = output.result
    assert (result.exit.exit_code, result.exit.signal, result.exit.error) == (0, None, None)
    assert result.exit.usage.stdin_bytes == len(data)
    assert len(result.job_id) == 16
    assert dialer.dialled == [ADDRESS]


async def test_stdin_as_bytes() -> None:
    node = _node()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            output = await client.call(_pinned(node), Call(service_id_for_name("cat")), stdin=b"hello\n")
            empty = await client.call(_pinned(node), Call(service_id_for_name("cat")))
    assert output.stdout == b"hello\n"
    assert empty.stdout == b""
    assert empty.result.exit.exit_code == 0


async def test_output_goes_to_the_sinks() -> None:
    node = _node()
    out: list[bytes] = []
    err: list[bytes] = []

    async def to_out(data: bytes) -> None:
        out.append(data)

    async def to_err(data: bytes) -> None:
        err.append(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            output = await client.call(
                _pinned(node), Call(service_id_for_name("both")), stdout=to_out, stderr=to_err
            )
    assert b"".join(out) == b"out\nmore\n"
    assert b"".join(err) == b"err\n"
    assert (output.stdout, output.stderr) == (b"", b""), "what a sink took is not collected too"
    assert output.result.exit.exit_code == 0


async def test_an_unknown_service_is_rejected() -> None:
    node = _node()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            with pytest.raises(Rejected) as caught:
                await client.call(_pinned(node), Call(service_id_for_name("nope")), stdin=b"unwanted")
    assert caught.value.code == "no-such-service"


async def test_a_timeout_cancels_the_job_and_raises_transport_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubnet.node")
    node = _node()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            started = trio.current_time()
            with pytest.raises(TransportError, match="deadline") as caught:
                await client.call(_pinned(node), Call(service_id_for_name("sleep")), timeout=0.5)
            elapsed = trio.current_time() - started
    assert "cancelled" in str(caught.value)
    assert str(ADDRESS) in str(caught.value), "the error names the node: a caller may have many calls"
    assert elapsed < 10, "the job is `sleep 30`: the Cancel, not the job's end, ended the call"
    (ended,) = _node_log(caplog, "sleep")
    assert "(cancelled)" in ended, ended


async def test_cancelling_the_caller_sends_cancel(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubnet.node")
    node = _node()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            with trio.move_on_after(0.5) as scope:
                await client.call(_pinned(node), Call(service_id_for_name("sleep")))
    assert scope.cancelled_caught
    # A caller that merely vanished would be logged as "disconnected".
    (ended,) = _node_log(caplog, "sleep")
    assert "(cancelled)" in ended, ended


async def test_requests() -> None:
    node = _node()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            services = await client.request(_pinned(node), ListServices(), Services)
            status = await client.request(_pinned(node), GetStatus(), StatusReply)
            with pytest.raises(RemoteProtocolError, match="expected StatusReply, got Services"):
                await client.request(_pinned(node), ListServices(), StatusReply)
    assert {s.name for s in services.services} == {"cat", "both", "sleep"}
    assert (status.running, status.capacity) == (0, node.config.max_jobs)


class MemoryHosts:
    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    def lookup(self, address: str) -> bytes | None:
        return self.entries.get(address)

    def add(self, address: str, peer: bytes) -> None:
        self.entries[address] = peer


async def test_trust_on_first_use_then_a_changed_key_is_refused() -> None:
    first, impostor = _node(), _node()
    hosts = MemoryHosts()
    said: list[str] = []
    target = Target(ADDRESS)  # no key: trust on first use
    cat = Call(service_id_for_name("cat"))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = Client(
                Identity.generate(),
                known_hosts=hosts,
                dialer=MemoryDialer(first, nursery),
                announce=said.append,
            )
            assert (await client.call(target, cat, stdin=b"first")).stdout == b"first"
            assert hosts.entries == {"node.test:7070": first.identity.public_key}
            assert len(said) == 1 and encode_peer_id(first.identity.public_key) in said[0]
            # The next call runs IK with the remembered key, and says nothing.
            assert (await client.call(target, cat, stdin=b"again")).stdout == b"again"
            assert len(said) == 1

            # Another node now answers at that address.
            dialer = MemoryDialer(impostor, nursery)
            other = Client(Identity.generate(), known_hosts=hosts, dialer=dialer, announce=said.append)
            with pytest.raises(HostKeyMismatch) as caught:
                await other.call(target, cat, stdin=b"secret")
    message = str(caught.value)
    assert encode_peer_id(first.identity.public_key) in message
    assert encode_peer_id(impostor.identity.public_key) in message
    assert len(dialer.dialled) == 2, "the IK attempt, then the probe that learns the new key"
    assert hosts.entries == {"node.test:7070": first.identity.public_key}


async def test_a_pinned_key_the_node_does_not_have_is_refused() -> None:
    node = _node()
    wrong = Identity.generate().public_key
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            with pytest.raises(HostKeyMismatch, match="not the pinned"):
                await client.call(Target(ADDRESS, wrong), Call(service_id_for_name("cat")))


class SilentDialer:
    """Connects to a peer that never answers."""

    def __init__(self) -> None:
        self.held: list[trio.abc.Stream] = []

    async def dial(self, address: Address) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        self.held.append(server_side)
        return client_side


async def test_a_silent_node_times_out_connecting() -> None:
    client = Client(Identity.generate(), dialer=SilentDialer(), connect_timeout=0.2)
    with trio.fail_after(10), pytest.raises(TransportError, match="timed out"):
        await client.request(Target(ADDRESS, Identity.generate().public_key), GetStatus(), StatusReply)


async def _reserved_behind(node: Node, relay: Node, nursery: trio.Nursery) -> DirectAddress:
    """Serve `relay` and have the private `node` hold a reservation there; the relay's address."""
    (host, port), *_ = await nursery.start(relay.serve)
    reserved = trio.Event()
    listener = RelayListener(node.identity, on_change=lambda held: held and reserved.set())
    pinned = [Target(DirectAddress(host, port), relay.identity.public_key)]
    await nursery.start(listener.run, RelayFinder(pinned, None, node.identity.public_key))
    nursery.start_soon(node.serve_listeners, [listener])
    await reserved.wait()
    return DirectAddress(host, port)


async def test_through_a_relay_over_real_tcp_after_another_relay_refused() -> None:
    node = _node()  # private: reached only through its reservation at `relay`
    relay = Node(parse_services('listen = "127.0.0.1:0"\n[relay]\n'), Identity.generate())
    no_relay = Node(parse_services('listen = "127.0.0.1:0"\n'), Identity.generate())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay_address = await _reserved_behind(node, relay, nursery)
            (other_host, other_port), *_ = await nursery.start(no_relay.serve)
            peer = node.identity.public_key
            refusing = RelayAddress(no_relay.identity.public_key, DirectAddress(other_host, other_port), peer)
            good = RelayAddress(relay.identity.public_key, relay_address, peer)
            client = Client(Identity.generate())  # the default dialer: TCP, and relays
            with pytest.raises(TransportError, match="not-a-relay"):
                await client.request(Target(refusing, peer), GetStatus(), StatusReply)
            output = await client.call(Target(refusing, peer, (good,)), CAT, stdin=b"relayed" * 100_000)
            nursery.cancel_scope.cancel()
    assert output.stdout == b"relayed" * 100_000
    assert relay.relay.bytes_relayed > 1_400_000  # the stdin and the output, ciphertext both ways


async def test_a_circuit_past_its_byte_limit_is_cut() -> None:
    node = _node()
    relay = Node(
        parse_services('listen = "127.0.0.1:0"\n[relay]\nmax_circuit_bytes = "256K"\n'), Identity.generate()
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay_address = await _reserved_behind(node, relay, nursery)
            peer = node.identity.public_key
            target = Target(RelayAddress(relay.identity.public_key, relay_address, peer), peer)
            client = Client(Identity.generate())
            small = await client.call(target, CAT, stdin=b"x" * 1000)
            with pytest.raises(TransportError):
                # Streamed, so never sent twice: a circuit cut before the Accept came would
                # otherwise be retried as a shed call is, each try with a budget of its own.
                await client.call(target, CAT, stdin=_chunks(b"x" * 1_000_000, 100_000))
            nursery.cancel_scope.cancel()
    assert small.stdout == b"x" * 1000
    assert relay.relay.bytes_relayed <= 256 * 1024


async def test_over_real_tcp() -> None:
    node = _node()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(node.serve)
            host, port = addresses[0]
            target = Target(DirectAddress(host, port), node.identity.public_key)
            client = Client(Identity.generate())  # the default dialer: TCP
            output = await client.call(target, Call(service_id_for_name("cat")), stdin=b"over tcp")
            status = await client.request(target, GetStatus(), StatusReply)
            nursery.cancel_scope.cancel()
    assert output.stdout == b"over tcp"
    assert status.capacity == node.config.max_jobs


# ---- a node that breaks the protocol, by hand ------------------------------------------------------

FAKE_NODE = Identity.generate()
CAT = Call(service_id_for_name("cat"))


Behaviour = Callable[[SecureStream, JobConnection], Awaitable[None]]


class FakeNodeDialer:
    """A hand-driven node: it accepts the call, then does what `behaviour` says."""

    def __init__(self, nursery: trio.Nursery, behaviour: Behaviour) -> None:
        self.nursery = nursery
        self.behaviour = behaviour

    async def dial(self, address: Address) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._serve, server_side)
        return client_side

    async def _serve(self, transport: trio.abc.Stream) -> None:
        stream, first = await accept_secure(transport, FAKE_NODE)
        conn = JobConnection(Role.SERVER)
        conn.receive_data(first)
        while not isinstance(conn.next_event(), Start):
            conn.receive_data(await stream.receive_some())
        await stream.send_all(conn.send(Accept("j")) + conn.send(Stdout(b"partial")))
        await self.behaviour(stream, conn)


async def _close(stream: SecureStream, conn: JobConnection) -> None:
    await stream.aclose()


async def _garbage(stream: SecureStream, conn: JobConnection) -> None:
    await stream.send_all(b"\xc1")
    await trio.sleep_forever()


async def _ignore_cancel(stream: SecureStream, conn: JobConnection) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize(
    ("behaviour", "error", "match"),
    [
        (_close, TransportError, "before its answer"),
        (_garbage, RemoteProtocolError, "malformed"),
    ],
)
async def test_a_broken_node_raises_the_plain_error(
    behaviour: Behaviour, error: type[Exception], match: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=FakeNodeDialer(nursery, behaviour))
            with pytest.raises(error, match=match):
                await client.call(Target(ADDRESS, FAKE_NODE.public_key), CAT)
            nursery.cancel_scope.cancel()


async def test_a_node_that_ignores_cancel_is_given_up_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            client = Client(Identity.generate(), dialer=FakeNodeDialer(nursery, _ignore_cancel))
            with pytest.raises(TransportError, match="did not end the job"):
                await client.call(Target(ADDRESS, FAKE_NODE.public_key), CAT, timeout=5)
            nursery.cancel_scope.cancel()


class SheddingDialer(MemoryDialer):
    """The first `shed` connections are dropped by the 'node' as a full node sheds them: at
    once, before the handshake ends (`during="handshake"`), or after reading the request and
    Start (`during="request"`); the ones after reach the real node."""

    def __init__(self, node: Node, nursery: trio.Nursery, shed: int, during: str) -> None:
        super().__init__(node, nursery)
        self.shed, self.during = shed, during

    async def dial(self, address: Address) -> trio.abc.Stream:
        if len(self.dialled) >= self.shed:
            return await super().dial(address)
        self.dialled.append(address)
        client_side, server_side = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self._drop, server_side)
        return client_side

    async def _drop(self, stream: trio.abc.Stream) -> None:
        if self.during == "request":
            accepted, _ = await accept_secure(stream, self.node.identity)
            await accepted.receive_some()  # Start: the caller is live, but no Accept comes
        await stream.aclose()


@pytest.mark.parametrize("during", ["handshake", "request"])
async def test_a_call_shed_before_its_accept_is_retried_and_runs_once(
    during: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubnet.node")
    node = _node()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            dialer = SheddingDialer(node, nursery, shed=2, during=during)
            client = Client(Identity.generate(), dialer=dialer)
            output = await client.call(_pinned(node), Call(service_id_for_name("cat")), stdin=b"once")
            nursery.cancel_scope.cancel()
    assert output.stdout == b"once"
    assert len(_node_log(caplog, "cat")) == 1  # the job ran once
    # The shed dials, then the node's: one more if a handshake closed early was followed by the
    # probe that tells a changed key from a closed connection, and that probe reached the node.
    assert dialer.shed + 1 <= len(dialer.dialled) <= dialer.shed + 2


async def test_a_call_is_not_retried_when_its_stdin_cannot_be_sent_again() -> None:
    node = _node()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            dialer = SheddingDialer(node, nursery, shed=1, during="request")
            client = Client(Identity.generate(), dialer=dialer)
            with pytest.raises(TransportError, match="closed the connection before its answer"):
                await client.call(_pinned(node), Call(service_id_for_name("cat")), stdin=_chunks(b"x", 1))
            nursery.cancel_scope.cancel()
    assert len(dialer.dialled) == 1
