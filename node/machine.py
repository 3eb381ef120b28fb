"""What the two-party protocol machines share: h11's shape, written once.

`node.protocol.JobConnection` (calls and requests) and `node.relay_protocol.RelayConnection`
(reservations and circuits) are both one end of a connection between a role that asks and a
role that answers. Each keeps both roles' states, checks every message against a literal
transition table (role -> state -> event type -> next state), and enters ERROR, refusing
everything after, on any violation by either side. `PeerMachine` is that skeleton: `send` (or
`send_parts`), `receive_data`, `next_event`, the end of stream, the error state. A protocol
supplies its table and states, its codec (`_encode` or `_encode_parts`, `_feed`,
`_next_message`, `_partial`) and what a legal step also changes (`_moved`, `_received`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from hubnet.identity.cheap_typing import TYPE_CHECKING, Generic, TypeVar
from hubnet.identity.errors import (
    ClosedEarly,
    HubnetError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
)
from hubnet.identity.frozen import frozen

if TYPE_CHECKING:
    from typing import ClassVar


@frozen
class ConnectionClosed:
    """The peer's end of stream: an event, never sent."""


RoleT = TypeVar("RoleT", bound=enum.Enum)
StateT = TypeVar("StateT", bound=enum.Enum)
MessageT = TypeVar("MessageT")
Table = Mapping[RoleT, Mapping[StateT, Mapping[type, StateT]]]


class PeerMachine(Generic[RoleT, StateT, MessageT]):
    """One end of one connection (no I/O). `send` checks that *we* follow the protocol
    (LocalProtocolError), `next_event` that the peer does (RemoteProtocolError; ClosedEarly
    when the answering side closed before its answer); after either, every role is in the
    error state and everything is refused."""

    # How errors name things: this connection, one of its messages, the side that answers.
    connection_name: ClassVar[str] = "connection"
    message_name: ClassVar[str] = "message"
    answerer_name: ClassVar[str] = "node"

    def __init__(
        self,
        role: RoleT,
        *,
        answerer: RoleT,
        asker: RoleT,
        initial: Mapping[RoleT, StateT],
        transitions: Table[RoleT, StateT],
        closed: StateT,
        error: StateT,
    ) -> None:
        self.our_role = role
        self.their_role = asker if role is answerer else answerer
        self.states = dict(initial)
        self._answerer = answerer
        self._transitions = transitions
        self._closed = closed
        self._error = error
        self._peer_closed = False

    @property
    def our_state(self) -> StateT:
        return self.states[self.our_role]

    @property
    def their_state(self) -> StateT:
        return self.states[self.their_role]

    @property
    def errored(self) -> bool:
        return self._error in self.states.values()

    def send(self, message: MessageT) -> bytes:
        """The bytes of `message`, which must be legal for us now."""
        return b"".join(self.send_parts(message))

    def send_parts(self, message: MessageT) -> tuple[bytes, ...]:
        """`send`'s bytes in the parts the codec made them (`_encode_parts`), for a driver
        that writes parts without joining them."""
        if self.errored:
            raise LocalProtocolError(f"the {self.connection_name} is in its error state")
        try:
            self._step(self.our_role, message, LocalProtocolError)
            return self._encode_parts(message)
        except LocalProtocolError:
            self._fail()
            raise

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes from the peer (decrypted by the session); b"" when its stream ended."""
        if self.errored:
            raise RemoteProtocolError(f"the {self.connection_name} is in its error state")
        if self._peer_closed:
            raise LocalProtocolError("receive_data() after the peer's end of stream")
        if not data:
            self._peer_closed = True
            return
        try:
            self._feed(data)
        except RemoteProtocolError:
            self._fail()
            raise

    def next_event(self) -> MessageT | ConnectionClosed | None:
        """The peer's next message, ConnectionClosed once its stream ended, or None for more."""
        if self.errored:
            raise RemoteProtocolError(f"the {self.connection_name} is in its error state")
        if self.their_state is self._closed:
            return ConnectionClosed()
        try:
            event: MessageT | ConnectionClosed | None = self._next_message()
            if event is None and self._peer_closed:
                if self._partial():
                    raise RemoteProtocolError(f"the peer closed in the middle of a {self.message_name}")
                event = ConnectionClosed()
            if event is not None:
                self._step(self.their_role, event, RemoteProtocolError)
                self._received(event)
        except (RemoteProtocolError, TransportError):
            self._fail()
            raise
        return event

    def _step(self, role: RoleT, event: MessageT | ConnectionClosed, error: type[HubnetError]) -> None:
        state = self.states[role]
        following = self._transitions[role][state].get(type(event))
        if following is None:
            if role is self._answerer and isinstance(event, ConnectionClosed):
                # Not garbage but a peer gone before its answer (killed, stopping): a transport failure.
                raise ClosedEarly(
                    f"the {self.answerer_name} closed the connection before its answer ({state.value})"
                )
            raise error(f"{type(event).__name__} is not allowed from the {role.value} in state {state.value}")
        self._moved(role, event, error)
        self.states[role] = following

    def _fail(self) -> None:
        self.states = dict.fromkeys(self.states, self._error)

    # --- what each protocol supplies --------------------------------------------------------

    def _encode(self, message: MessageT) -> bytes:
        """The wire bytes of `message` (LocalProtocolError if the peer would refuse them)."""
        raise NotImplementedError

    def _encode_parts(self, message: MessageT) -> tuple[bytes, ...]:
        """The same bytes in parts that follow each other on the wire: a codec whose messages
        carry bulk data supplies this instead of `_encode`, so the data is never copied."""
        return (self._encode(message),)

    def _feed(self, data: bytes | bytearray) -> None:
        """Buffer the peer's bytes (RemoteProtocolError past the protocol's limits)."""
        raise NotImplementedError

    def _next_message(self) -> MessageT | None:
        """The next whole message buffered, or None."""
        raise NotImplementedError

    def _partial(self) -> bool:
        """Whether part of a message is buffered (at the peer's end of stream: truncation)."""
        raise NotImplementedError

    def _moved(self, role: RoleT, event: MessageT | ConnectionClosed, error: type[HubnetError]) -> None:
        """What a legal step changes besides `role`'s state (may still refuse it with `error`)."""

    def _received(self, event: MessageT | ConnectionClosed) -> None:
        """Checks of a peer's event once its step was taken."""
