"""A caller's side of hole punching: whether to ask for it, and which targets it failed for.

A call to a relayed address asks the relay to hole-punch (`node.holepunch`) when client.toml
says `punch = true` (the default) and the target is not resting after a failed punch. A
punch that fails costs its call about two seconds before the call goes on over the relay,
so a target that a punch failed for (its NAT, or ours, is symmetric) is not asked again for
a while: ten minutes after a first failure, doubling with each failure in a row, at most a
day; a success ends the rest. `hubnode call` keeps the rests in a small file of the home
(`PUNCH_FILE`), the Trio client in memory. The dialers (`hubnet.dialer`,
`hubnet.trio_client`) drive the punch and report each outcome here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hubnet.identity.cheap_typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubnet.rests import Rests

PUNCH_FILE = "punch-failed"  # in the home's data folder
PUNCH_REST_FIRST = 600.0
PUNCH_REST_MAX = 86400.0
PUNCH_HEADER = "# targets a hole punch failed for lately: PEER (hex), until (Unix s), failures\n"


class Punching:
    """Which targets to ask a relay to hole-punch to; `path` None keeps the rests in memory.
    `announce` is told each outcome in a line (`hubnode -v`)."""

    def __init__(self, path: Path | None = None, announce: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.announce = announce
        self._rests: Rests | None = None

    @property
    def rests(self) -> Rests:
        # Read when a relayed address is first dialled: a direct call never pays for it.
        if self._rests is None:
            from hubnet.rests import Rests

            self._rests = Rests(self.path, first=PUNCH_REST_FIRST, most=PUNCH_REST_MAX, header=PUNCH_HEADER)
        return self._rests

    def wanted(self, target: bytes) -> bool:
        """Whether to ask for a punch to `target` now."""
        return self.rests.until(target.hex()) is None

    def punched(self, target: bytes, relay: object, direct: bool | None) -> None:
        """The outcome of a punch to `target` through `relay`: `direct` True (the call goes
        direct), False (both stayed on the relay), None (it broke off: the call dials the
        relay again, without punching)."""
        if direct:
            self.rests.cleared(target.hex())
        else:
            self.rests.failed(target.hex())
        self.rests.save()
        if self.announce is not None:
            from hubnet.identity.keys import fingerprint

            self.announce(_SAID[direct].format(relay=relay, target=fingerprint(target)))


_SAID = {
    True: "hubnode: hole punched to {target}: the call is direct, not through relay {relay}",
    False: "hubnode: hole punch to {target} failed: the call stays on relay {relay}",
    None: "hubnode: hole punch to {target} broke off: dialling relay {relay} again without punching",
}
