"""Datagram transports for the DHT driver: real UDP, and an in-memory network for tests.

Both behave like UDP where it matters: a datagram to nowhere vanishes, a full receive
queue drops, nothing is retried. The in-memory network lets thousands of nodes run in
one Trio process on a virtual clock (`trio.testing.MockClock`).
"""

from __future__ import annotations

import contextlib
import random
import socket
from typing import Protocol

import trio

from hubnet.dht.messages import MAX_DATAGRAM
from hubnet.dht.records import Address

RECEIVE_QUEUE = 256


class DatagramTransport(Protocol):
    """What the DHT driver needs from a network."""

    @property
    def local_address(self) -> Address: ...

    async def send_to(self, data: bytes, address: Address) -> None: ...

    async def receive_from(self) -> tuple[bytes, Address]: ...

    def close(self) -> None: ...


class UdpTransport:
    """A bound UDP socket."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._local = (str(host), int(port))

    @classmethod
    async def bind(cls, host: str, port: int) -> UdpTransport:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def local_address(self) -> Address:
        return self._local

    async def send_to(self, data: bytes, address: Address) -> None:
        # Unreachable or refused: to UDP's caller that is the same as a lost datagram.
        with contextlib.suppress(OSError):
            await self._sock.sendto(data, address)

    async def receive_from(self) -> tuple[bytes, Address]:
        while True:
            try:
                # One byte more than the limit, so an oversized datagram is seen as such.
                data, source = await self._sock.recvfrom(MAX_DATAGRAM + 1)
            except ConnectionError:
                continue  # an ICMP error for an earlier send; nothing to do with this receive
            return data, (str(source[0]), int(source[1]))

    def close(self) -> None:
        self._sock.close()


class MemoryNetwork:
    """Many `MemoryTransport`s that reach each other by address, with optional loss."""

    def __init__(self, *, loss: float = 0.0, seed: int = 0) -> None:
        self.loss = loss
        self._rng = random.Random(seed)
        self._endpoints: dict[Address, trio.MemorySendChannel[tuple[bytes, Address]]] = {}
        self.delivered = 0
        self.lost = 0

    def transport(self, address: Address) -> MemoryTransport:
        if address in self._endpoints:
            raise ValueError(f"address {address} is taken")
        send, receive = trio.open_memory_channel[tuple[bytes, Address]](RECEIVE_QUEUE)
        self._endpoints[address] = send
        return MemoryTransport(self, address, receive)

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        endpoint = self._endpoints.get(destination)
        if endpoint is None or (self.loss and self._rng.random() < self.loss):
            self.lost += 1
            return
        try:
            endpoint.send_nowait((data, source))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.lost += 1
            return
        self.delivered += 1

    def unplug(self, address: Address) -> None:
        """The host at `address` vanishes: datagrams to it are lost from now on."""
        endpoint = self._endpoints.pop(address, None)
        if endpoint is not None:
            endpoint.close()


class MemoryTransport:
    def __init__(
        self,
        network: MemoryNetwork,
        address: Address,
        receive: trio.MemoryReceiveChannel[tuple[bytes, Address]],
    ) -> None:
        self._network = network
        self._address = address
        self._receive = receive

    @property
    def local_address(self) -> Address:
        return self._address

    async def send_to(self, data: bytes, address: Address) -> None:
        if len(data) <= MAX_DATAGRAM:
            self._network.deliver(data, self._address, address)
        await trio.lowlevel.checkpoint()

    async def receive_from(self) -> tuple[bytes, Address]:
        return await self._receive.receive()

    def close(self) -> None:
        self._network.unplug(self._address)
