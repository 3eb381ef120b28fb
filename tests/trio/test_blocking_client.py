"""The blocking client (hubnet.client) in-process against a real node.server.Node that serves
TCP on 127.0.0.1 from a Trio loop in a background thread. The jobs are real processes.

tests/e2e covers the client through `hubnode` processes; here its functions are called
directly, for what the command line does not reach: output sinks, a deadline, an interrupt.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from hubnet import client, discover
from hubnet.call_machine import Timeouts
from hubnet.dht.addresses import DirectAddress, RelayAddress
from hubnet.dialer import TcpDialer
from hubnet.identity.errors import Rejected, TransportError
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.known_hosts import KnownHosts
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import (
    STDIN_WINDOW,
    Call,
    GetStatus,
    ListServices,
    ReachStatus,
    Services,
    StatusReply,
)
from hubnet.node.server import Node
from hubnet.node.services import parse_services
from hubnet.trust import PinnedKeys
from tests.helpers import require_program

SERVICES = """
listen = "127.0.0.1:0"

[services.cat]
command = ["cat"]

[services.both]
command = ["sh", "-c", "echo out; echo err >&2"]

[services.sleep]
command = ["sleep", "30"]

[services.talker]
command = ["sh", "-c", "echo started; exec sleep 30"]
"""

WAIT = 20.0  # seconds: a bound on every wait, never a time to sleep


_Started = tuple[trio.lowlevel.TrioToken, trio.CancelScope, DirectAddress]


class ServedNode:
    """A Node serving TCP from `trio.run` in a thread, stopped when the test ends."""

    def __init__(self) -> None:
        for program in ("cat", "sh", "sleep"):
            require_program(program)
        self.node = Node(parse_services(SERVICES), Identity.generate(), start_timeout=WAIT)
        self._ready: queue.Queue[_Started] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            (host, port), *_ = await nursery.start(self.node.serve)
            token = trio.lowlevel.current_trio_token()
            self._ready.put((token, nursery.cancel_scope, DirectAddress(host, port)))

    def __enter__(self) -> ServedNode:
        self._thread.start()
        self._token, self._scope, self.address = self._ready.get(timeout=WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the node did not stop"

    @property
    def target(self) -> Target:
        return Target(self.address, self.node.identity.public_key)


@pytest.fixture
def served() -> Iterator[ServedNode]:
    with ServedNode() as served:
        yield served


CALLER = Identity.generate()


def _wait_for(predicate: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _node_log(caplog: pytest.LogCaptureFixture, service: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f" {service} for " in r.getMessage()]


def test_requests(served: ServedNode) -> None:
    services = client.request(served.target, CALLER, PinnedKeys(), ListServices(), Services)
    assert {s.name for s in services.services} == {"cat", "both", "sleep", "talker"}
    status = client.request(served.target, CALLER, PinnedKeys(), GetStatus(), StatusReply)
    assert status.capacity == served.node.config.max_jobs


def test_three_mebibytes_through_cat_from_a_pipe(served: ServedNode) -> None:
    data = os.urandom(3 * 1024 * 1024)
    assert len(data) > 2 * STDIN_WINDOW
    read_end, write_end = os.pipe()

    def write_all() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    out = bytearray()
    err = bytearray()
    try:
        opened = client.open_call(served.target, CALLER, PinnedKeys(), Call(service_id_for_name("cat")))
        result = client.finish_call(opened, stdin_fd=read_end, stdout=out.extend, stderr=err.extend)
    finally:
        os.close(read_end)
        writer.join(WAIT)
    assert out == data
    assert err == b""
    assert (result.exit.exit_code, result.exit.error) == (0, None)
    assert result.exit.usage.stdin_bytes == len(data)
    assert len(result.job_id) == 16


def test_sinks_and_an_accept_awaited_first(served: ServedNode) -> None:
    out: list[bytes] = []
    err: list[bytes] = []
    opened = client.open_call(
        served.target, CALLER, PinnedKeys(), Call(service_id_for_name("both")), wait_for_accept=True
    )
    assert opened.machine.accept is not None
    result = client.finish_call(opened, stdin_fd=None, stdout=out.append, stderr=err.append)
    assert (b"".join(out), b"".join(err)) == (b"out\n", b"err\n")
    assert result.job_id == opened.machine.accept.job_id


def test_an_unknown_service_is_rejected(served: ServedNode) -> None:
    nope = Call(service_id_for_name("nope"))
    with pytest.raises(Rejected) as caught:
        client.open_call(served.target, CALLER, PinnedKeys(), nope, wait_for_accept=True)
    assert caught.value.code == "no-such-service"
    # Without waiting for the Accept, the Reject comes out of finish_call.
    opened = client.open_call(served.target, CALLER, PinnedKeys(), nope)
    with pytest.raises(Rejected) as caught:
        client.finish_call(opened, stdin_fd=None)
    assert caught.value.code == "no-such-service"


def test_a_deadline_cancels_the_job(served: ServedNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubnet.node")
    opened = client.open_call(served.target, CALLER, PinnedKeys(), Call(service_id_for_name("sleep")))
    started = time.monotonic()
    with pytest.raises(TransportError, match="deadline passed; the job was cancelled") as caught:
        client.finish_call(opened, stdin_fd=None, deadline=started + 0.3)
    assert time.monotonic() - started < WAIT, "the job is `sleep 30`: the Cancel ended it"
    assert str(served.target.address) in str(caught.value)
    assert _wait_for(lambda: bool(_node_log(caplog, "sleep")))
    (ended,) = _node_log(caplog, "sleep")
    assert "(cancelled)" in ended, ended


def test_a_silent_job_is_kept_alive_by_its_node(
    served: ServedNode, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sleep 30` says nothing, but its node does (a keepalive every KEEPALIVE seconds, here
    0.1): the caller's idle timeout of 0.5 s never fires, and only its deadline ends the job."""
    import hubnet.node.server

    monkeypatch.setattr(hubnet.node.server, "KEEPALIVE", 0.1)
    caplog.set_level(logging.INFO, logger="hubnet.node")
    timeouts = Timeouts(accept=WAIT, idle=0.5)
    opened = client.open_call(
        served.target, CALLER, PinnedKeys(), Call(service_id_for_name("sleep")), timeouts=timeouts
    )
    started = time.monotonic()
    with pytest.raises(TransportError, match="deadline passed; the job was cancelled"):
        client.finish_call(opened, stdin_fd=None, deadline=started + 2.0)
    assert time.monotonic() - started >= 2.0


def test_an_interrupt_sends_cancel(served: ServedNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hubnet.node")

    def interrupt(data: bytes) -> None:
        raise KeyboardInterrupt  # as Ctrl-C would, while output arrives

    opened = client.open_call(served.target, CALLER, PinnedKeys(), Call(service_id_for_name("talker")))
    with pytest.raises(KeyboardInterrupt):
        client.finish_call(opened, stdin_fd=None, stdout=interrupt)
    assert _wait_for(lambda: bool(_node_log(caplog, "talker"))), "the job is `sleep 30`: it must be ended"
    (ended,) = _node_log(caplog, "talker")
    assert "(cancelled)" in ended, ended  # not "(disconnected)": the node was told


def test_trust_on_first_use(served: ServedNode, tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "known_hosts")
    said: list[str] = []
    target = Target(served.address)
    secure = client.connect(target, CALLER, hosts, b"", announce=said.append)
    secure.close()
    peer = served.node.identity.public_key
    assert hosts.lookup(str(served.address)) == peer
    assert len(said) == 1 and encode_peer_id(peer) in said[0]
    status = client.request(target, CALLER, hosts, GetStatus(), StatusReply)  # now over IK
    assert status.capacity == served.node.config.max_jobs
    assert len(said) == 1


def test_the_tcp_dialer() -> None:
    relayed = RelayAddress(Identity.generate().public_key, DirectAddress("127.0.0.1", 1), CALLER.public_key)
    with pytest.raises(TransportError, match=r"cannot connect to 127\.0\.0\.1:1"):  # its relay is not there
        TcpDialer().dial(relayed, 1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    # Nothing listens there now.
    with pytest.raises(TransportError, match="cannot connect"):
        TcpDialer().dial(DirectAddress("127.0.0.1", port), 1.0)


# --- a call on the connection of its probe (hubnet.discover) ------------------------------------

REACH = ReachStatus("public", "", "server", 0)


def _probe(served: ServedNode) -> tuple[StatusReply, discover._Held | None]:
    group = discover._Group(served.address, ())
    key, status, held = discover._ask_status(
        CALLER, group, [served.node.identity.public_key], TcpDialer(), WAIT
    )
    assert key == served.node.identity.public_key
    return status, held


def test_a_probe_keeps_its_connection_and_the_call_runs_on_it(served: ServedNode) -> None:
    served.node.reach_status = lambda: REACH
    status, held = _probe(served)
    assert status.calls and held is not None
    data = os.urandom(3 * STDIN_WINDOW)  # more than a window: the credit flows on this connection too
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: os.fdopen(write_end, "wb").write(data), daemon=True)
    writer.start()
    out = bytearray()
    try:
        opened = discover._open_on_probe(
            served.target, held, Call(service_id_for_name("cat")), WAIT, Timeouts(), verbose=False
        )
        assert opened is not None and opened.secure is held.secure
        assert opened.machine.accept is not None
        result = client.finish_call(opened, stdin_fd=read_end, stdout=out.extend, stderr=lambda _: None)
    finally:
        os.close(read_end)
        writer.join(WAIT)
    assert out == data
    assert (result.exit.exit_code, result.exit.usage.stdin_bytes) == (0, len(data))


def test_a_node_without_reach_cannot_say_it_takes_calls_so_its_probe_is_closed(served: ServedNode) -> None:
    status, held = _probe(served)
    assert (status.reach, status.calls, held) == (None, False, None)


def test_a_probe_connection_the_node_closed_meanwhile_dials_afresh(served: ServedNode) -> None:
    served.node.reach_status = lambda: REACH
    served.node.start_timeout = 0.2  # how long the node waits for the prober's call
    _, held = _probe(served)
    assert held is not None
    held.secure.sock.settimeout(WAIT)
    assert held.secure.receive_some() == b""  # the node gave up waiting and closed
    call = Call(service_id_for_name("both"))
    assert discover._open_on_probe(served.target, held, call, WAIT, Timeouts(), verbose=False) is None


def test_a_refusal_on_the_probe_connection_is_final(served: ServedNode) -> None:
    served.node.reach_status = lambda: REACH
    _, held = _probe(served)
    with pytest.raises(Rejected) as caught:
        discover._open_on_probe(
            served.target, held, Call(service_id_for_name("nope")), WAIT, Timeouts(), verbose=False
        )
    assert caught.value.code == "no-such-service"


def test_a_prober_that_closes_without_calling_costs_the_node_nothing(
    served: ServedNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hubnet.node")
    served.node.reach_status = lambda: REACH
    for _ in range(3):
        _, held = _probe(served)
        assert held is not None
        held.close()
    assert _wait_for(lambda: len(served.node.connections) == 0)
    assert served.node.running == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
