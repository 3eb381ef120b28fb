"""The client's files: `client.toml` (defaults) and `aliases.toml` (written by `hubnode alias`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from hubnet.call_machine import DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Timeouts
from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import frozen
from hubnet.identity.hints import did_you_mean

if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONNECT_TIMEOUT = 10.0


@frozen
class ClientConfig:
    """`client.toml`: `server = "PEER_ID@HOST:PORT"` (used when --server is not given),
    `connect_timeout = 10` (seconds for connecting and the handshake), `accept_timeout =
    60` (seconds from the handshake to the node's Accept), `idle_timeout = 60` (seconds a
    node may send nothing while a job runs), `bootstrap = [...]` (DHT nodes to discover
    services through), `max_cost = MSAT` (the most one job may cost: a node whose worst
    case is higher refuses it), `pay = "auto"` (a call a node refuses for want of money is
    paid with a Cashu token from `hubnode wallet`; "never", the default, does not), `punch
    = true` (a call through a relay asks to hole-punch a direct connection: `hubnet.punching`)
    and a `[select]` table (see `hubnet.select`)."""

    server: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    bootstrap: tuple[str, ...] = ()
    select: Mapping[str, object] = MappingProxyType({})
    source: str = "client.toml"
    max_cost: int | None = None
    pay: str = "never"
    punch: bool = True

    @property
    def timeouts(self) -> Timeouts:
        """What a call waits for a node (for `hubnet.client` and `hubnet.trio_client`)."""
        return Timeouts(self.accept_timeout, self.idle_timeout)


@frozen
class Alias:
    """A local name for a service with fixed leading arguments and, optionally, a server."""

    name: str
    service: str
    args: tuple[str, ...] = ()
    server: str | None = None


# What a parsed file's cache starts with: a cache of another layout is not this one's.
_PARSED_VERSION = 1


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's tables, {} if there is none.

    A Pi reads client.toml on every call, and tomllib's import alone (its parser, and the
    `string` module whose import compiles a regular expression) cost a discovered call
    several milliseconds. So what a file parsed to is kept beside it, in `.NAME.parsed`
    (marshal, keyed by a hash of the file's bytes): the next read of the same bytes takes
    it from there, and any edit, however quick, changes the key."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    import marshal  # built in, as _blake2 is (identity.noise): no import cost
    from _blake2 import blake2b

    key = blake2b(data, digest_size=16, person=b"hubnet/parsed").digest()
    parsed = path.with_name(f".{path.name}.parsed")
    try:
        version, cached_key, tables = marshal.loads(parsed.read_bytes())
        if version == _PARSED_VERSION and cached_key == key and isinstance(tables, dict):
            return tables
    except (OSError, EOFError, ValueError, TypeError):
        pass  # no cache, or one that is not ours: parse
    # Only now: most calls have no client.toml or aliases.toml, and a Pi pays for each import.
    import tomllib

    try:
        tables = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    _keep_parsed(parsed, key, tables)
    return tables


def _keep_parsed(parsed: Path, key: bytes, tables: dict[str, Any]) -> None:
    """Best effort: a folder we may not write in, or a value marshal cannot keep (TOML's
    dates), only means the next read parses again."""
    import marshal

    from hubnet.files import replace_whole

    try:
        blob = marshal.dumps((_PARSED_VERSION, key, tables))
    except ValueError:
        return
    replace_whole(parsed, blob)


_CLIENT_KEYS = (
    "server",
    "connect_timeout",
    "accept_timeout",
    "idle_timeout",
    "bootstrap",
    "select",
    "max_cost",
    "pay",
    "punch",
)
PAY_CHOICES = ("auto", "never")
_TIMEOUT_KEYS = {
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "accept_timeout": DEFAULT_ACCEPT_TIMEOUT,
    "idle_timeout": DEFAULT_IDLE_TIMEOUT,
}


def load_client_config(path: Path) -> ClientConfig:
    data = _read_toml(path)
    for key in data:
        if key not in _CLIENT_KEYS:
            import re

            shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)  # a bare TOML key, or quoted
            raise ConfigError(f"{path}: {shown}: unknown key{did_you_mean(key, _CLIENT_KEYS)}")
    bootstrap = data.get("bootstrap", [])
    if not (isinstance(bootstrap, list) and all(isinstance(b, str) for b in bootstrap)):
        raise ConfigError(f"{path}: bootstrap: must be a list of strings PEER_ID@HOST:PORT")
    select = data.get("select", {})
    if not isinstance(select, dict):
        raise ConfigError(f"{path}: select: must be a table")
    server = data.get("server")
    if server is not None and not isinstance(server, str):
        raise ConfigError(f"{path}: server: must be a string PEER_ID@HOST:PORT or HOST:PORT")
    timeouts: dict[str, float] = {}
    for key, default in _TIMEOUT_KEYS.items():
        value = data.get(key, default)
        # Finite, too: `inf` or `nan` (both valid TOML) would be no deadline at all.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
            raise ConfigError(f"{path}: {key}: must be a positive number of seconds")
        timeouts[key] = float(value)
    max_cost = data.get("max_cost")
    if max_cost is not None and (type(max_cost) is not int or not 0 <= max_cost < 1 << 63):
        raise ConfigError(f"{path}: max_cost: must be a whole number of millisatoshi, 0 or more")
    pay = data.get("pay", "never")
    if pay not in PAY_CHOICES:
        raise ConfigError(f'{path}: pay: must be "auto" (pay with tokens from `hubnode wallet`) or "never"')
    punch = data.get("punch", True)
    if not isinstance(punch, bool):
        raise ConfigError(f"{path}: punch: must be true or false")
    return ClientConfig(
        server,
        timeouts["connect_timeout"],
        timeouts["accept_timeout"],
        timeouts["idle_timeout"],
        tuple(bootstrap),
        select,
        str(path),
        max_cost,
        pay,
        punch,
    )


def load_aliases(path: Path) -> dict[str, Alias]:
    aliases: dict[str, Alias] = {}
    for name, table in _read_toml(path).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name}: must be a table")
        service, args, server = table.get("service"), table.get("args", []), table.get("server")
        if not isinstance(service, str):
            raise ConfigError(f"{path}: {name}.service: must be a string")
        if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            raise ConfigError(f"{path}: {name}.args: must be a list of strings")
        if server is not None and not isinstance(server, str):
            raise ConfigError(f"{path}: {name}.server: must be a string")
        aliases[name] = Alias(name, service, tuple(args), server)
    return aliases


def check_alias_name(name: str) -> None:
    """ConfigError unless `name` can be an alias: a service name (1-64 of A-Z a-z 0-9 . _ -,
    so no '/' or space) that is a plain, visible file name (not `.`, `..` or `.hidden`) and
    not a 32-hex-digit service id (which `hubnode call` would then no longer reach)."""
    from hubnet.node.naming import is_service_name, parse_service_id

    if not is_service_name(name) or name.startswith("."):
        raise ConfigError(
            f"not an alias name: {name!r} (1-64 of A-Z a-z 0-9 . _ -, not starting with '-' or '.')"
        )
    if parse_service_id(name) is not None:
        raise ConfigError(f"not an alias name: {name!r} is a service id")


def save_alias(path: Path, alias: Alias) -> None:
    """Add or replace one alias, keeping the others."""
    import tomli_w

    check_alias_name(alias.name)
    data = _read_toml(path)
    entry: dict[str, Any] = {"service": alias.service, "args": list(alias.args)}
    if alias.server:
        entry["server"] = alias.server
    data[alias.name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)
