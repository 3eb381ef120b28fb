"""hubnet.client's sender: every message in order, a failed send kept quiet."""

from __future__ import annotations

from hubnet.client import _Sender
from hubnet.identity.errors import ClosedEarly


class Recording:
    """Stands in for a SecureSocket's sending half: records what it is given."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.fail_at = fail_at

    def send_parts(self, parts: tuple[bytes, ...]) -> None:
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise ClosedEarly("the node closed")
        self.sent.append(b"".join(parts))


def test_messages_go_out_at_once_and_in_order() -> None:
    secure = Recording()
    sender = _Sender(secure)  # type: ignore[arg-type]
    messages = [b"start", b"", bytes(1 << 20), b"small after bulk", b"end"]
    for message in messages:
        sender.send(message)
    assert secure.sent == [m for m in messages if m]  # empty sends are nothing
    sender.send(b"head", b"data")  # a message in parts goes out as one write
    assert secure.sent[-1] == b"headdata"
    assert not sender.failed


def test_a_failed_send_is_quiet_and_drops_the_rest() -> None:
    secure = Recording(fail_at=2)
    sender = _Sender(secure)  # type: ignore[arg-type]
    for message in (bytes(1 << 20), b"a", b"b", bytes(1 << 20)):
        sender.send(message)
    assert sender.failed
    assert secure.sent == [bytes(1 << 20), b"a"]
