"""`services.toml`: the services a node offers, their ids, and the argument policy.

A service is a fixed argv prefix plus a policy saying which arguments a remote client may
append. The policy is an allow-list grammar (exact option names, value shapes, a count of
positionals), never a deny-list, because the programs behind services were written for
trusted local users: one smuggled `-o /etc/passwd` is enough. Everything here is pure;
the only I/O is `load_services`, so the listener and job runner can trust what they get.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hubnet.dht.addresses import DEFAULT_PORT, Address, RelayAddress, parse_address, parse_hostport
from hubnet.identity.errors import ConfigError, PolicyError
from hubnet.identity.hints import did_you_mean
from hubnet.identity.keys import decode_peer_id
from hubnet.identity.orgs import OrgRule, Role, satisfies
from hubnet.node.naming import (
    Target,
    format_service_id,
    is_service_name,
    parse_service_id,
    service_id_for_name,
)
from hubnet.node.offers import MAX_ADDRESSES, Price
from hubnet.node.pricing import Surge
from hubnet.node.protocol import MAX_SERVICES
from hubnet.node.sandbox import DEFAULT_MAX_PROCESSES, Isolation

DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
MAX_ARGS = 256
MAX_ARGS_BYTES = 64 * 1024
MAX_VALUE_CHARS = 4096  # also bounds the input to operators' regexes (backtracking cost)

# Option names: one or two dashes, then no '=' (that separates `--long=value`) or spaces.
_OPTION_RE = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE_RE = re.compile(r"([0-9]{1,15})\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_TOML_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

# Named shapes. "word" is deliberately narrow: it must start with a letter, digit or '_'
# (so never '-', '+' or '.', i.e. no option look-alikes, '+N' forms, hidden files or '..')
# and has no '/', no whitespace and no shell or glob characters, so it can name a voice,
# a language or a format but never a path. Operators who need more write a `re:` shape.
_NAMED_SHAPES = {
    "int": r"-?[0-9]{1,12}",
    "number": r"-?[0-9]{1,15}(?:\.[0-9]{1,15})?",
    "word": r"[A-Za-z0-9_][A-Za-z0-9_.,:+=@-]{0,127}",
    "text": r"[^\x00]{0,4096}",
}


# --- the argument policy -------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What one argument value may look like: a named shape or `re:REGEX` (full match)."""

    spec: str
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Shape:
        """A shape from its config text; ValueError says what is wrong."""
        if spec.startswith("re:"):
            try:
                return cls(spec, re.compile(spec[3:]))
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        if spec in _NAMED_SHAPES:
            return cls(spec, re.compile(_NAMED_SHAPES[spec]))
        raise ValueError(f"unknown shape {spec!r} (want {', '.join(_NAMED_SHAPES)} or re:REGEX)")

    @property
    def label(self) -> str:
        """How a listing shows the shape: INT, WORD, ... or /regex/."""
        return f"/{self.spec[3:]}/" if self.spec.startswith("re:") else self.spec.upper()

    def matches(self, value: str) -> bool:
        return self.mismatch(value) is None

    def mismatch(self, value: str) -> str | None:
        """None if `value` has this shape, else why not, to follow "value of -v" or "positional
        argument". A value longer than any shape allows is told the limit, not "is not TEXT"."""
        if len(value) > MAX_VALUE_CHARS:
            return f"is {len(value)} characters long, at most {MAX_VALUE_CHARS}"
        return None if self.pattern.fullmatch(value) is not None else f"is not {self.label}"


TEXT = Shape.parse("text")


def _frozen_options(options: Mapping[str, Shape | None] | None = None) -> Mapping[str, Shape | None]:
    return MappingProxyType(dict(options or {}))


def _show(arg: str) -> str:
    return repr(arg if len(arg) <= 40 else arg[:40] + "...")


def _refuse(pos: int, arg: str, why: str) -> PolicyError:
    return PolicyError(f"argument {pos} ({_show(arg)}): {why}")


@dataclass(frozen=True)
class ArgumentPolicy:
    """Which arguments a client may append to a service's command.

    `options` maps each allowed option, spelled exactly, to the shape of its value, or
    None for a flag. Values given as a separate argument may not start with '-' (the
    program might parse them as options, e.g. when its option value is optional);
    `--long=value` can carry any value of the shape, since it stays glued to its option.
    """

    options: Mapping[str, Shape | None] = field(default_factory=_frozen_options)
    max_positional: int = 0
    positional_shape: Shape = TEXT
    allow_double_dash: bool = False

    def check(self, args: Sequence[str]) -> None:
        """Raise PolicyError for the first argument the policy does not allow."""
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise PolicyError("arguments must be a list of strings")
        if len(args) > MAX_ARGS:
            raise PolicyError(f"too many arguments ({len(args)}, at most {MAX_ARGS})")
        total = 0
        for pos, arg in enumerate(args, 1):
            if not isinstance(arg, str):
                raise PolicyError(f"argument {pos}: not a string")
            if "\x00" in arg:
                raise _refuse(pos, arg, "contains a NUL character")
            try:
                total += len(arg.encode())
            except UnicodeEncodeError:  # lone surrogates: cannot reach exec() intact
                raise _refuse(pos, arg, "is not valid Unicode text") from None
        if total > MAX_ARGS_BYTES:
            raise PolicyError(f"arguments too long ({total} bytes, at most {MAX_ARGS_BYTES})")

        positionals, options_ended, i = 0, False, 0
        while i < len(args):
            arg, pos = args[i], i + 1
            i += 1
            if not options_ended and arg.startswith("-"):
                if arg == "--" and self.allow_double_dash:
                    options_ended = True
                    continue
                name, eq, value = arg.partition("=")
                if arg in self.options:
                    shape = self.options[arg]
                    if shape is None:
                        continue
                    if i >= len(args):
                        raise _refuse(pos, arg, "option needs a value")
                    arg, value, pos = args[i], args[i], i + 1
                    i += 1
                    if value.startswith("-"):
                        raise _refuse(pos, value, f"value of {name} must not start with '-'")
                elif eq and name.startswith("--") and name in self.options:
                    shape = self.options[name]
                    if shape is None:
                        raise _refuse(pos, arg, f"option {name} takes no value")
                else:
                    raise _refuse(pos, arg, "option not allowed")
                why = shape.mismatch(value)
                if why is not None:
                    raise _refuse(pos, arg, f"value of {name} {why}")
                continue
            positionals += 1
            if positionals > self.max_positional:
                limit = f"at most {self.max_positional}" if self.max_positional else "no"
                raise _refuse(pos, arg, f"{limit} positional arguments allowed")
            why = self.positional_shape.mismatch(arg)
            if why is not None:
                raise _refuse(pos, arg, f"positional argument {why}")

    def describe(self) -> dict[str, object]:
        """A plain (msgpack-able) description for service listings."""
        return {
            "options": {k: "flag" if v is None else v.spec for k, v in self.options.items()},
            "positional": self.max_positional,
            "positional_shape": self.positional_shape.spec,
            "allow_double_dash": self.allow_double_dash,
        }

    def summary(self) -> str:
        """One human line, e.g. "--stdout, -v WORD; up to 1 TEXT" or "no arguments"."""
        parts = [", ".join(k if v is None else f"{k} {v.label}" for k, v in self.options.items())]
        if self.max_positional:
            parts.append(f"up to {self.max_positional} {self.positional_shape.label}")
        if self.allow_double_dash:
            parts.append("'--' ends options")
        return "; ".join(p for p in parts if p) or "no arguments"


# --- services and the node config ----------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One offered program: a fixed argv prefix, its argument policy and its limits."""

    name: str
    id: bytes
    command: tuple[str, ...]
    description: str = ""
    policy: ArgumentPolicy = field(default_factory=ArgumentPolicy)
    timeout: float = 60.0
    max_concurrent: int = 4
    max_output: int = 100 * 1024 * 1024
    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    allow: frozenset[bytes] | None = None  # None: every caller (unless allow_orgs is set)
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    price: Price = field(default_factory=Price)
    allow_orgs: tuple[OrgRule, ...] = ()  # members of these (of a role, if given) may call
    free_orgs: tuple[OrgRule, ...] = ()  # members of these pay nothing
    isolation: Isolation = field(default_factory=Isolation)  # its jobs' sandbox (node.sandbox)
    surge: Surge | None = None  # demand pricing (node.pricing); None: the price never moves

    def argv(self, args: Sequence[str]) -> list[str]:
        """The full argv to exec for a client's `args`; PolicyError if they are not allowed."""
        self.policy.check(args)
        return [*self.command, *args]

    def allows(self, peer: bytes, memberships: Set[tuple[bytes, Role]] = frozenset()) -> bool:
        """Whether `peer`, a proven member of `memberships`, may call: with neither `allow` nor
        `allow_orgs` everyone may; otherwise a caller in either list is let in."""
        if self.allow is None and not self.allow_orgs:
            return True
        return (self.allow is not None and peer in self.allow) or satisfies(self.allow_orgs, memberships)

    def free_for(self, memberships: Set[tuple[bytes, Role]]) -> bool:
        """Whether a caller with these proven `memberships` pays nothing."""
        return satisfies(self.free_orgs, memberships)

    @property
    def orgs(self) -> set[bytes]:
        """The organisations whose memberships this service's rules depend on."""
        return {rule.org for rule in (*self.allow_orgs, *self.free_orgs)}


REACHABILITY_SETTINGS = ("auto", "public", "private")


@dataclass(frozen=True)
class RelayConfig:
    """`[relay]` of services.toml: what this node, if public, relays for private ones.

    The defaults carry a robot's real jobs through one circuit (minutes of audio, a large
    photo, a long speech stream: a gigabyte and an hour), not the 2 minutes and 128 KiB
    that libp2p's relays allow and its users trip over."""

    max_reservations: int = 128  # private nodes holding a reservation here, in all
    max_reservations_per_peer: int = 4  # reservations one peer may hold at once
    max_circuits_per_peer: int = 16  # circuits open at once to one target, or from one caller's IP
    max_circuit_bytes: int = 1 << 30  # both directions together
    max_circuit_seconds: int = 3600
    reservation_seconds: int = 120  # a reservation not renewed within this ends
    price_per_mib: int = 0  # millisatoshi per MiB relayed, published in the relay's offer


@dataclass(frozen=True)
class NodeConfig:
    """Everything `services.toml` says: where to listen, global job limits, the services."""

    listen_host: str
    listen_port: int
    max_jobs: int
    max_queued: int
    services: Mapping[bytes, Service]  # by id
    bootstrap: tuple[Target, ...] = ()  # DHT nodes to join through
    advertise: tuple[Address, ...] = ()  # the addresses to put in offers, if not the listen address
    # Connections one source may hold at once; None: node.connections' default (loopback exempt).
    max_connections_per_address: int | None = None
    # Connections the node holds at once, all sources; None: node.connections' default.
    max_connections: int | None = None
    mints: tuple[str, ...] = ()  # the Cashu mints whose ecash this node takes (none: no ecash)
    # "auto": ask DHT peers to dial back (node.reach); "public"/"private": the operator knows.
    reachability: str = "auto"
    relay: RelayConfig | None = None  # None: this node relays for nobody
    relays: tuple[Target, ...] = ()  # relays to hold reservations with, pinned (else from the DHT)
    punch: bool = True  # agree when a caller through a relay asks to hole-punch a direct connection

    @property
    def orgs(self) -> set[bytes]:
        """The organisations this node relies on (whose revocation lists it must keep)."""
        return {org for service in self.services.values() for org in service.orgs}

    def by_name(self, name: str) -> Service | None:
        return next((s for s in self.services.values() if s.name == name), None)


def _dotted(path: Sequence[str]) -> str:
    return ".".join(k if _TOML_BARE_KEY_RE.fullmatch(k) else f'"{k}"' for k in path)


class _Table:
    """Takes typed values out of one TOML table; keys left over at `done()` are typos."""

    def __init__(self, source: str, path: tuple[str, ...], data: Mapping[str, Any]) -> None:
        self.source, self.path, self._data = source, path, dict(data)
        self._known: list[str] = []

    def error(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {_dotted((*self.path, key))}: {msg}")

    def take(self, key: str) -> Any:
        self._known.append(key)
        return self._data.pop(key, None)

    def done(self) -> None:
        for key in self._data:
            raise self.error(key, "unknown key" + did_you_mean(key, self._known))

    def entries(self) -> list[tuple[str, Any]]:
        """All remaining keys, for tables whose keys are names chosen by the operator."""
        items, self._data = list(self._data.items()), {}
        return items

    def table(self, key: str) -> _Table | None:
        value = self.take(key)
        if value is not None and not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return None if value is None else _Table(self.source, (*self.path, key), value)

    def string(self, key: str) -> str | None:
        value = self.take(key)
        if value is not None and (not isinstance(value, str) or "\x00" in value):
            raise self.error(key, "must be a string without NUL")
        return value

    def integer(self, key: str, minimum: int) -> int | None:
        value = self.take(key)
        if value is not None and (type(value) is not int or value < minimum):
            raise self.error(key, f"must be an integer >= {minimum}")
        return value

    def number(self, key: str) -> float | None:
        value = self.take(key)
        if value is None:
            return None
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise self.error(key, "must be a positive number")
        return float(value)

    def size(self, key: str) -> int | None:
        value = self.take(key)
        if value is None:
            return None
        m = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
        if m:
            value = int(m[1]) * 1024 ** " KMGT".index(m[2].upper() or " ")
        if type(value) is not int or value < 1:
            raise self.error(key, 'must be a positive byte count like 1048576, "512K", "64M" or "1G"')
        return value

    def strings(self, key: str) -> list[str] | None:
        value = self.take(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) and "\x00" not in v for v in value)
        ):
            raise self.error(key, "must be a list of strings without NUL")
        return value


def _parse_policy(t: _Table) -> ArgumentPolicy:
    options: dict[str, Shape | None] = {}
    where = t.table("options") or _Table(t.source, (), {})
    for opt, spec in where.entries():
        if not _OPTION_RE.fullmatch(opt):
            raise where.error(opt, "option names are '-x' or '--long' (letters, digits, . _ + -)")
        if not isinstance(spec, str):
            raise where.error(opt, "shape must be a string")
        try:
            options[opt] = None if spec == "flag" else Shape.parse(spec)
        except ValueError as exc:
            raise where.error(opt, str(exc)) from None
    max_positional = t.integer("positional", 0)
    shape_spec = t.string("positional_shape")
    try:
        positional_shape = TEXT if shape_spec is None else Shape.parse(shape_spec)
    except ValueError as exc:  # "flag" lands here too: it only makes sense for an option
        raise t.error("positional_shape", str(exc)) from None
    double_dash = t.take("allow_double_dash")
    if double_dash is not None and not isinstance(double_dash, bool):
        raise t.error("allow_double_dash", "must be true or false")
    t.done()
    return ArgumentPolicy(_frozen_options(options), max_positional or 0, positional_shape, bool(double_dash))


def _parse_service(t: _Table, name: str) -> Service:
    command = t.strings("command")
    if not command or not command[0]:
        raise t.error("command", 'required: a non-empty argv list, e.g. ["espeak-ng", "--stdout"]')
    id_text = t.string("id")
    sid = service_id_for_name(name) if id_text is None else parse_service_id(id_text)
    if sid is None:
        raise t.error("id", "must be 32 hex digits")
    allow: frozenset[bytes] | None = None
    allow_list = t.strings("allow")
    if allow_list is not None:
        try:
            allow = frozenset(decode_peer_id(p) for p in allow_list)
        except ConfigError as exc:
            raise t.error("allow", str(exc)) from None
    env: dict[str, str] = {}
    env_table = t.table("env") or _Table(t.source, (), {})
    for key, value in env_table.entries():
        if not _ENV_NAME_RE.fullmatch(key):
            raise env_table.error(key, "not a valid environment variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise env_table.error(key, "must be a string without NUL")
        env[key] = value
    args_table = t.table("arguments")
    price_table = t.table("price")
    surge_table = t.table("surge")
    allow_orgs, free_orgs = _org_rules(t, "allow_orgs"), _org_rules(t, "free_orgs")
    service = Service(
        name=name,
        id=sid,
        command=tuple(command),
        description=t.string("description") or "",
        policy=_parse_policy(args_table) if args_table else ArgumentPolicy(),
        timeout=t.number("timeout") or 60.0,
        max_concurrent=t.integer("max_concurrent", 1) or 4,
        max_output=t.size("max_output") or 100 * 1024 * 1024,
        cpu_seconds=t.integer("cpu_seconds", 1),
        memory_bytes=t.size("memory"),
        allow=allow,
        env=MappingProxyType(env),
        price=_parse_price(price_table) if price_table else Price(),
        allow_orgs=allow_orgs,
        free_orgs=free_orgs,
        isolation=_parse_isolation(t),
        surge=_parse_surge(surge_table) if surge_table else None,
    )
    t.done()
    return service


def _flag(t: _Table, key: str, default: bool) -> bool:
    value = t.take(key)
    if value is not None and not isinstance(value, bool):
        raise t.error(key, "must be true or false")
    return default if value is None else value


def _parse_isolation(t: _Table) -> Isolation:
    """The sandbox keys: sandbox, network, writable, max_processes, run_as."""
    writable = []
    for path in t.strings("writable") or []:
        normal = os.path.normpath(path)
        if not os.path.isabs(path) or normal == "/":
            raise t.error("writable", f"{path!r}: give absolute paths of folders (not / itself)")
        writable.append(normal)
    run_as = t.take("run_as")
    if run_as is not None:
        if type(run_as) is int:
            if not 0 < run_as < 2**32 - 1:
                raise t.error("run_as", "a uid must be between 1 and 4294967294 (never root)")
        elif not isinstance(run_as, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", run_as):
            raise t.error("run_as", "must be a user name or a uid")
        elif run_as == "root":
            raise t.error("run_as", "jobs never run as root (sandbox = false if you must)")
    return Isolation(
        sandbox=_flag(t, "sandbox", True),
        network=_flag(t, "network", False),
        writable=tuple(writable),
        max_processes=t.integer("max_processes", 1) or DEFAULT_MAX_PROCESSES,
        run_as=run_as,
    )


def _org_rules(t: _Table, key: str) -> tuple[OrgRule, ...]:
    try:
        return tuple(OrgRule.parse(text) for text in t.strings(key) or ())
    except ConfigError as exc:
        raise t.error(key, f"{exc} (want ORG_ID or ORG_ID/ROLE)") from None


def _parse_price(t: _Table) -> Price:
    price = Price(
        per_call=t.integer("per_call", 0) or 0,
        per_second=t.integer("per_second", 0) or 0,
        per_mib=t.integer("per_mib", 0) or 0,
    )
    t.done()
    return price


def _parse_surge(t: _Table) -> Surge:
    """`surge = { start = 0.5, max = 3.0, idle = 0.5 }`: see node.pricing."""
    given: dict[str, float] = {}
    for key in ("start", "max", "idle"):
        value = t.take(key)
        if value is None:
            continue
        if type(value) not in (int, float) or not math.isfinite(value):
            raise t.error(key, "must be a number")
        given[key] = float(value)
    t.done()
    try:
        return Surge(**given)
    except ValueError as exc:
        key, _, why = str(exc).partition(" ")  # Surge names the key first
        raise t.error(key, why) from None


def _targets(top: _Table, key: str) -> tuple[Target, ...]:
    try:
        return tuple(Target.parse(text) for text in top.strings(key) or ())
    except ConfigError as exc:
        raise top.error(key, str(exc)) from None


def _mints(top: _Table) -> tuple[str, ...]:
    """`mints = ["https://mint.example", ...]`: the Cashu mints (their URLs) this node trusts."""
    urls = top.strings("mints") or []
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or any(c.isspace() for c in url):
            raise top.error("mints", f"{url!r} is not a mint's URL: give it as https://HOST[:PORT][/PATH]")
    return tuple(urls)


def _advertise(top: _Table) -> tuple[Address, ...]:
    addresses = []
    for text in top.strings("advertise") or []:
        try:
            address = parse_address(text)
        except ConfigError as exc:
            raise top.error("advertise", f"{exc}: give a host and a port that callers can reach") from None
        if isinstance(address, RelayAddress):
            # Reached through a relay only while the node holds a reservation there, which
            # nothing makes yet: offering the address would promise what nobody keeps.
            raise top.error(
                "advertise", f"{text!r}: relay addresses need a reservation this node cannot make yet"
            )
        addresses.append(address)
    if len(addresses) > MAX_ADDRESSES:
        raise top.error("advertise", f"an offer carries at most {MAX_ADDRESSES} addresses")
    return tuple(addresses)


def _parse_relay(t: _Table) -> RelayConfig | None:
    default = RelayConfig()
    enabled = _flag(t, "enabled", True)
    relay = RelayConfig(
        max_reservations=t.integer("max_reservations", 1) or default.max_reservations,
        max_reservations_per_peer=t.integer("max_reservations_per_peer", 1)
        or default.max_reservations_per_peer,
        max_circuits_per_peer=t.integer("max_circuits_per_peer", 1) or default.max_circuits_per_peer,
        max_circuit_bytes=t.size("max_circuit_bytes") or default.max_circuit_bytes,
        max_circuit_seconds=t.integer("max_circuit_seconds", 1) or default.max_circuit_seconds,
        reservation_seconds=t.integer("reservation_seconds", 10) or default.reservation_seconds,
        price_per_mib=t.integer("price_per_mib", 0) or 0,
    )
    t.done()
    return relay if enabled else None


def _relays(top: _Table) -> tuple[Target, ...]:
    relays = _targets(top, "relays")
    for target in relays:
        if target.peer is None or isinstance(target.address, RelayAddress):
            raise top.error("relays", f"{target.address}: give each relay as PEER_ID@HOST:PORT")
    return relays


def parse_services(text: str, *, source: str = "services.toml") -> NodeConfig:
    """Parse and validate the text of a services.toml; ConfigError names file and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    top = _Table(source, (), data)
    listen = top.string("listen")
    try:
        host, port = parse_hostport(listen if listen is not None else DEFAULT_LISTEN)
    except ConfigError as exc:
        raise top.error("listen", str(exc)) from None
    max_jobs = top.integer("max_jobs", 1) or os.cpu_count() or 1
    max_queued = top.integer("max_queued", 0)
    max_connections_per_address = top.integer("max_connections_per_address", 1)
    max_connections = top.integer("max_connections", 1)
    bootstrap = _targets(top, "bootstrap")
    advertise = _advertise(top)
    mints = _mints(top)
    reachability = top.string("reachability") or "auto"
    if reachability not in REACHABILITY_SETTINGS:
        raise top.error("reachability", f"{reachability!r}: give one of {', '.join(REACHABILITY_SETTINGS)}")
    relay_table = top.table("relay")
    relay = _parse_relay(relay_table) if relay_table is not None else None
    relays = _relays(top)
    punch = _flag(top, "punch", True)
    services: dict[bytes, Service] = {}
    table = top.table("services") or _Table(source, (), {})
    for name, body in table.entries():
        if not is_service_name(name):
            raise table.error(name, "service names are 1-64 of A-Z a-z 0-9 . _ - (not starting with '-')")
        if not isinstance(body, dict):
            raise table.error(name, "must be a table")
        sub = _Table(source, (*table.path, name), body)
        service = _parse_service(sub, name)
        if service.id in services:
            other = _dotted(("services", services[service.id].name))
            raise sub.error("id", f"duplicate service id {format_service_id(service.id)} (also {other})")
        services[service.id] = service
    if len(services) > MAX_SERVICES:
        raise table.error(name, f"a node offers at most {MAX_SERVICES} services")
    top.done()
    return NodeConfig(
        listen_host=host,
        listen_port=port,
        max_jobs=max_jobs,
        max_queued=4 * max_jobs if max_queued is None else max_queued,
        services=MappingProxyType(services),
        bootstrap=bootstrap,
        advertise=advertise,
        max_connections_per_address=max_connections_per_address,
        max_connections=max_connections,
        mints=mints,
        relay=relay,
        relays=relays,
        reachability=reachability,
        punch=punch,
    )


def load_services(path: Path) -> NodeConfig:
    """Read services.toml from `path`; a missing file means no services and defaults."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8") from None
    return parse_services(text, source=str(path))
