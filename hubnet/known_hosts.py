"""Remembered server keys, as ssh's known_hosts: one `HOST:PORT PEER_ID` per line.

A server reached by address alone is trusted on first use and pinned from then on;
a later change of key is refused until the user removes the line.
"""

from __future__ import annotations

from pathlib import Path

from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import decode_peer_id, encode_peer_id, noise_public_key


class KnownHosts:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _entries(self) -> dict[str, tuple[bytes, int]]:
        """Each address's key and the number of the line that gave it."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        entries: dict[str, tuple[bytes, int]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise self._bad_line(number, f"{len(parts)} fields where a line has 2")
            try:
                entries[parts[0]] = decode_peer_id(parts[1]), number
            except ConfigError as exc:
                raise self._bad_line(number, str(exc)) from exc
        return entries

    def _bad_line(self, number: int, problem: str) -> ConfigError:
        return ConfigError(
            f"{self.path}:{number}: {problem}; fix or delete this line "
            "(each line is 'HOST:PORT PEER_ID', as written on first use)"
        )

    def lookup(self, address: str) -> bytes | None:
        entry = self._entries().get(address)
        if entry is None:
            return None
        peer, number = entry
        try:
            # Checked here, for the one line used, rather than for every line on every call:
            # a key no node can have would otherwise fail later, at the handshake, unexplained.
            noise_public_key(peer)
        except ConfigError as exc:
            raise self._bad_line(number, str(exc)) from exc
        return peer

    def add(self, address: str, peer: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{address} {encode_peer_id(peer)}\n")
