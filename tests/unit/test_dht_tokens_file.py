"""The tokens file a one-shot DHT client keeps for its next run: what it writes it reads back,
and whatever else is in it is skipped, never raised."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hubnet.dht.client import KeptTokens, read_tokens, tokens_text
from hubnet.dht.messages import TOKEN_LEN

hosts = st.from_regex(r"\A[0-9]{1,3}(\.[0-9]{1,3}){3}\Z")
ports = st.integers(1, 65535)
tokens = st.lists(
    st.tuples(
        st.tuples(hosts, ports), st.binary(min_size=TOKEN_LEN, max_size=TOKEN_LEN), st.integers(0, 2**40)
    ),
    max_size=20,
)


def _read(text: str) -> KeptTokens | None:
    # Not pytest's tmp_path: hypothesis runs many examples in one test function.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".tokens") as file:
        file.write(text)
        file.flush()
        return read_tokens(Path(file.name))


@given(ports, tokens)
def test_what_is_written_is_read_back(port: int, kept: list[tuple[tuple[str, int], bytes, int]]) -> None:
    text = tokens_text(KeptTokens(port, tuple(kept)))
    assert text.startswith("# ")
    assert _read(text) == KeptTokens(port, tuple(kept))


@given(st.binary(max_size=2000))
def test_anything_else_is_skipped_or_none(data: bytes) -> None:
    kept = _read(data.decode("ascii", errors="replace"))
    if kept is not None:
        assert 0 < kept.port < 65536
        assert all(len(token) == TOKEN_LEN and 0 < port < 65536 for (_, port), token, _ in kept.tokens)


def test_a_missing_file_or_one_without_a_port_is_none(tmp_path: Path) -> None:
    assert read_tokens(tmp_path / "absent") is None
    assert _read("127.0.0.1 7070 0011223344556677 5\n") is None
    assert _read("port 0\n") is None
    assert _read("port 65536\n") is None
    assert _read("port 7070\n1.2.3.4 7070 00112233445566 5\n") == KeptTokens(7070, ())  # 7 bytes
