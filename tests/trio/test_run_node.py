"""`run_node`, the assembled node: only a failure to bind its port is reported as "cannot listen".

These call the blocking `run_node` on real loopback sockets; each ends as soon as the node
fails, so none waits for anything.
"""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from hubnet.exits import EXIT_FAILURE, exit_code_for
from hubnet.identity.keys import Identity
from hubnet.node.discovery import Discovery
from hubnet.node.run import ListenError, run_node
from hubnet.node.services import parse_services


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp-jobs", "udp-dht"])
def test_a_port_in_use_cannot_be_listened_on(kind: socket.SocketKind) -> None:
    # The node binds TCP (jobs) and UDP (the DHT) on one port number: either taken fails it.
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        config = parse_services(f'listen = "127.0.0.1:{port}"')
        with pytest.raises(ListenError) as info:
            run_node(config, Identity.generate(), lan=False)
    assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EADDRINUSE
    assert exit_code_for(info.value) == EXIT_FAILURE


def test_an_os_error_after_listening_is_not_called_a_listen_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing_disk(self: Discovery, transport: object, *, task_status: trio.TaskStatus[None]) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Discovery, "run", failing_disk)
    with pytest.raises(ExceptionGroup) as info:
        run_node(parse_services('listen = "127.0.0.1:0"'), Identity.generate(), lan=False)
    assert info.group_contains(OSError, match="Input/output error")
    assert not info.group_contains(ListenError)
