"""hubnet.client's sender: every message in order, from a thread of its own once stdin is bulk."""

from __future__ import annotations

import threading

from hubnet.client import _THREAD_FROM, _Sender
from hubnet.identity.errors import ClosedEarly


class Recording:
    """Stands in for a SecureSocket's sending half: records what it is given, and where."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def send_all(self, data: bytes) -> None:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise ClosedEarly("the node closed")
        self.sent.append(data)
        self.threads.add(threading.current_thread().name)


def test_small_messages_go_out_at_once_from_the_callers_thread() -> None:
    secure = Recording()
    sender = _Sender(secure)  # type: ignore[arg-type]
    for message in (b"start", b"", b"x" * 100, b"end"):
        sender.send(message)
    assert secure.sent == [b"start", b"x" * 100, b"end"]  # empty sends are nothing
    sender.close()
    assert secure.threads == {threading.current_thread().name}


def test_bulk_moves_to_a_thread_and_order_is_kept() -> None:
    secure = Recording()
    sender = _Sender(secure)  # type: ignore[arg-type]
    messages = [b"start", bytes(_THREAD_FROM), b"small after bulk", bytes([1]) * (2 * _THREAD_FROM), b"end"]
    for message in messages:
        sender.send(message)
    sender.close()  # waits until everything queued is written
    assert secure.sent == messages
    assert "hubnet-sender" in secure.threads
    sender.send(b"after close")  # a closed sender writes at once again, in order
    assert secure.sent[-1] == b"after close"


def test_a_failed_send_is_quiet_and_drops_the_rest() -> None:
    secure = Recording(fail_at=2)
    sender = _Sender(secure)  # type: ignore[arg-type]
    for message in (bytes(_THREAD_FROM), b"a", b"b", bytes(_THREAD_FROM)):
        sender.send(message)
    sender.close()
    assert sender.failed
    assert secure.sent == [bytes(_THREAD_FROM), b"a"]
