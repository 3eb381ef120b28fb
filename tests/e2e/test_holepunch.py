"""Hole punching (node.holepunch) between real processes behind the NAT routers of tests/netns.py.

The seed runs a splice that joins two TCP connections byte for byte, as a relay does; two
homes each dial it, so they share a relayed stream, and run the Trio driver's `punch` over
it with the router's WAN address as their observed IP (what a relay's Linked says). On success they run
the Noise IK handshake over the direct connection, so each knows the other's key is at the
far end, and report the address the direct connection came from. Between two cone NATs
(router1 and router2, plain MASQUERADE) that is the other router: a direct connection.
Between a cone NAT and a symmetric one (router3, --random-fully) the attempt fails and
both stay on the relay, whose stream then carries the next protocol as if nothing had been
tried.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from hubnet.identity.keys import Identity
from tests.netns import Host, Internet

SPLICE_PORT = 5000
IDENTITIES = {"desktop": b"d" * 32, "pi": b"p" * 32, "laptop": b"l" * 32}

# Pairs the connections it accepts two by two and copies bytes both ways until either closes.
SPLICE = f"""
import socket, threading
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
server = socket.create_server(("0.0.0.0", {SPLICE_PORT}))
print("ready", flush=True)
while True:
    a, _ = server.accept()
    b, _ = server.accept()
    threading.Thread(target=pump, args=(a, b), daemon=True).start()
    threading.Thread(target=pump, args=(b, a), daemon=True).start()
"""

# argv: role, splice host, observed IP, own identity seed (hex), peer key (hex).
# Prints "direct HOST:PORT" (the direct connection's far end, after Noise), or "relayed" once
# a message went over the relayed stream after the failed punch.
PEER = """
import sys, trio
from hubnet.identity.keys import Identity
from hubnet.identity.secure import accept_secure, connect_secure
from hubnet.node.holepunch import Role
from hubnet.node.holepunch_trio import punch
from hubnet.node.relay import RawStream

role, splice, observed, seed, peer = sys.argv[1:]
me, peer_key = Identity.from_seed(bytes.fromhex(seed)), bytes.fromhex(peer)

async def main():
    relayed = await trio.open_tcp_stream(splice, SPLICE_PORT)
    direct, leftover = await punch(relayed, Role(role), observed)
    if direct is None:  # the relayed stream carries on, as if nothing had been tried
        relayed = RawStream(relayed, leftover)
        if role == "initiator":
            await relayed.send_all(b"over the relay")
        else:
            assert await relayed.receive_some() == b"over the relay"
        print("relayed")
        return
    far = direct.socket.getpeername()
    if role == "initiator":
        secure = await connect_secure(direct, me, peer_key)
        await secure.send_all(b"over the direct connection")
    else:
        secure, _ = await accept_secure(direct, me)
        assert secure.remote_identity == peer_key
        assert await secure.receive_some() == b"over the direct connection"
    print(f"direct {far[0]}:{far[1]}")

trio.run(main)
""".replace("SPLICE_PORT", str(SPLICE_PORT))


@pytest.fixture(scope="module")
def splice(internet: Internet) -> Iterator[Host]:
    process = internet.seed.popen([sys.executable, "-c", SPLICE])
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        yield internet.seed
    finally:
        process.kill()
        process.wait()


def punch_between(internet: Internet, splice: Host, initiator: str, responder: str) -> list[str]:
    """Run both peers at once; what each printed (initiator first)."""
    processes = []
    for role, me, other in (("initiator", initiator, responder), ("responder", responder, initiator)):
        observed = internet.router(me).address
        peer_key = Identity.from_seed(IDENTITIES[other]).public_key.hex()
        argv = [
            sys.executable,
            "-c",
            PEER,
            role,
            splice.address,
            observed,
            IDENTITIES[me].hex(),
            peer_key,
        ]
        processes.append(internet[me].popen(argv))
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        outputs.append(out.decode().strip())
    return outputs


def test_two_cone_nats_punch_a_direct_connection(internet: Internet, splice: Host) -> None:
    desktop, pi = punch_between(internet, splice, "desktop", "pi")
    # Each sees the other's router: the bytes no longer pass the seed.
    assert desktop.startswith(f"direct {internet.router('pi').address}:"), desktop
    assert pi.startswith(f"direct {internet.router('desktop').address}:"), pi


def test_a_symmetric_nat_falls_back_to_the_relay(internet: Internet, splice: Host) -> None:
    """Whichever side starts, and the relayed stream still works afterwards."""
    assert punch_between(internet, splice, "laptop", "desktop") == ["relayed", "relayed"]
    assert punch_between(internet, splice, "desktop", "laptop") == ["relayed", "relayed"]
