"""Remembered server keys, as ssh's known_hosts: one `HOST:PORT PEER_ID` per line.

A server reached by address alone is trusted on first use and pinned from then on;
a later change of key is refused until the user removes the line.
"""

from __future__ import annotations

from pathlib import Path

from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import decode_peer_id, encode_peer_id


class KnownHosts:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _entries(self) -> dict[str, bytes]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        entries: dict[str, bytes] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"{self.path}:{number}: want 'HOST:PORT PEER_ID'")
            entries[parts[0]] = decode_peer_id(parts[1])
        return entries

    def lookup(self, address: str) -> bytes | None:
        return self._entries().get(address)

    def add(self, address: str, peer: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{address} {encode_peer_id(peer)}\n")
