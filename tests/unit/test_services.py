"""services.toml parsing, service ids and the argument policy."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.dht.addresses import parse_hostport
from hubnet.identity.errors import ConfigError, PolicyError
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.identity.orgs import OrgRule, Role
from hubnet.node.naming import (
    format_service_id,
    parse_service_id,
    resolve_service_ref,
    service_id_for_name,
)
from hubnet.node.services import (
    ArgumentPolicy,
    Service,
    Shape,
    load_services,
    parse_services,
)

PEER_HEX = "ab" * 32
PEER_B32 = "aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"  # bytes 0..31

ESPEAK_TOML = f"""
listen = "127.0.0.1:7070"
max_jobs = 8
max_queued = 32

[services.espeak]
command = ["espeak-ng", "--stdout"]
description = "Text to speech (WAV on stdout)"
timeout = 60
max_concurrent = 4
max_output = 104857600
cpu_seconds = 120
memory = "1G"
allow = ["{PEER_HEX}", "{PEER_B32}"]
env = {{ VOICE_DIR = "/opt/voices" }}

[services.espeak.arguments]
options = {{ "--stdout" = "flag", "-v" = "word", "-s" = "int", "-p" = "int", "-a" = "int", \
"--lang" = "re:[a-z]{{2}}(-[a-z]+)?" }}
positional = 1
positional_shape = "text"
"""

ESPEAK = parse_services(ESPEAK_TOML).services[service_id_for_name("espeak")]
ESPEAK_POLICY = ESPEAK.policy

# A second grammar exercising the other shapes and `--`.
WIDE_POLICY = ArgumentPolicy(
    options={
        "-q": None,
        "--verbose": None,
        "--ratio": Shape.parse("number"),
        "--name": Shape.parse("word"),
        "-m": Shape.parse("text"),
        "--mode": Shape.parse("re:fast|slow"),
    },
    max_positional=3,
    positional_shape=Shape.parse("re:[-a-z]{1,10}"),
    allow_double_dash=True,
)


# --- service ids ---------------------------------------------------------------------


def test_service_id_is_stable() -> None:
    # Computed once by hand: blake2b(b"hubnet/service/v1/espeak", digest_size=32)[:16].
    assert format_service_id(service_id_for_name("espeak")) == "0464183066062102ACA7E1DE02EC3B44"
    expected = hashlib.blake2b(b"hubnet/service/v1/espeak", digest_size=32).digest()[:16]
    assert service_id_for_name("espeak") == expected


@given(st.text(min_size=1, max_size=80))
def test_service_id_round_trips(name: str) -> None:
    sid = service_id_for_name(name)
    assert len(sid) == 16
    text = format_service_id(sid)
    assert re.fullmatch(r"[0-9A-F]{32}", text)
    assert parse_service_id(text) == sid
    assert parse_service_id(text.lower()) == sid


@pytest.mark.parametrize("text", ["", "abc", "0" * 31, "0" * 33, "g" * 32, " " + "0" * 31])
def test_parse_service_id_rejects(text: str) -> None:
    assert parse_service_id(text) is None


def test_resolve_service_ref() -> None:
    assert resolve_service_ref("espeak") == service_id_for_name("espeak")
    assert resolve_service_ref("ae58940f8a7398e74de9ab80ff66702d") == bytes.fromhex(
        "AE58940F8A7398E74DE9AB80FF66702D"
    )
    assert resolve_service_ref("a" * 64) == service_id_for_name("a" * 64)


@pytest.mark.parametrize("text", ["", "-espeak", "a b", "a/b", "a" * 65, "é"])
def test_resolve_service_ref_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        resolve_service_ref(text)


# --- host:port -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7070", ("127.0.0.1", 7070)),
        ("example.org:80", ("example.org", 80)),
        ("example.org", ("example.org", 7070)),
        (":9000", ("", 9000)),
        ("[::1]:7070", ("::1", 7070)),
        ("[::]", ("::", 7070)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":", "host:", "host:x", "host:70000", "::1", "[::1", "[nope]:1", "[::1]x", "a b:1", "-h:1"]
)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text)


# --- services.toml -------------------------------------------------------------------


def test_example_config_values() -> None:
    cfg = parse_services(ESPEAK_TOML)
    assert (cfg.listen_host, cfg.listen_port, cfg.max_jobs, cfg.max_queued) == ("127.0.0.1", 7070, 8, 32)
    assert list(cfg.services) == [service_id_for_name("espeak")]
    s = cfg.services[service_id_for_name("espeak")]
    assert s.name == "espeak" and cfg.by_name("nope") is None
    assert s.command == ("espeak-ng", "--stdout")
    assert s.description == "Text to speech (WAV on stdout)"
    assert (s.timeout, s.max_concurrent, s.max_output) == (60.0, 4, 100 * 1024 * 1024)
    assert (s.cpu_seconds, s.memory_bytes) == (120, 1 << 30)
    assert s.allow == frozenset({bytes.fromhex(PEER_HEX), bytes(range(32))})
    assert s.allows(bytes(range(32))) and not s.allows(b"\x00" * 32)
    assert dict(s.env) == {"VOICE_DIR": "/opt/voices"}
    with pytest.raises(TypeError):
        s.env["X"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.services[b"x"] = s  # type: ignore[index]
    assert s.policy.describe() == {
        "options": {
            "--stdout": "flag",
            "-v": "word",
            "-s": "int",
            "-p": "int",
            "-a": "int",
            "--lang": "re:[a-z]{2}(-[a-z]+)?",
        },
        "positional": 1,
        "positional_shape": "text",
        "allow_double_dash": False,
    }
    assert (
        s.policy.summary()
        == "--stdout, -v WORD, -s INT, -p INT, -a INT, --lang /[a-z]{2}(-[a-z]+)?/; up to 1 TEXT"
    )


def test_defaults() -> None:
    cfg = parse_services('[services.cat]\ncommand = ["cat"]\nid = "ae58940f8a7398e74de9ab80ff66702d"\n')
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 7070)
    assert cfg.max_jobs >= 1 and cfg.max_queued == 4 * cfg.max_jobs
    assert cfg.reachability == "auto"
    s = cfg.by_name("cat")
    assert s is not None and s.id == bytes.fromhex("AE58940F8A7398E74DE9AB80FF66702D")
    assert (s.timeout, s.max_concurrent, s.max_output, s.cpu_seconds, s.memory_bytes) == (
        60.0,
        4,
        100 << 20,
        None,
        None,
    )
    assert s.allow is None and s.allows(b"\x01" * 32) and dict(s.env) == {}
    assert s.policy.summary() == "no arguments"
    assert s.argv([]) == ["cat"]
    with pytest.raises(PolicyError):
        s.argv(["/etc/passwd"])


@pytest.mark.parametrize(
    ("size", "value"), [("512K", 512 << 10), ("64M", 64 << 20), ("1g", 1 << 30), ("2 MiB", 2 << 20), (7, 7)]
)
def test_sizes(size: object, value: int) -> None:
    text = f'[services.a]\ncommand = ["x"]\nmax_output = {size!r}\n'.replace("'", '"')
    s = parse_services(text).by_name("a")
    assert s is not None and s.max_output == value


@pytest.mark.parametrize("setting", ["auto", "public", "private"])
def test_reachability_setting(setting: str) -> None:
    assert parse_services(f'reachability = "{setting}"').reachability == setting


def test_a_node_agrees_to_hole_punch_unless_told_not_to() -> None:
    assert parse_services("").punch is True
    assert parse_services("punch = false").punch is False


def test_load_services(tmp_path: Path) -> None:
    cfg = load_services(tmp_path / "missing.toml")
    assert dict(cfg.services) == {} and cfg.listen_port == 7070
    path = tmp_path / "services.toml"
    path.write_text(ESPEAK_TOML)
    assert load_services(path).by_name("espeak") == ESPEAK
    path.write_text("listen = ")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: invalid TOML"):
        load_services(path)
    path.write_bytes(b'listen = "\xff"')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_services(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_services(tmp_path)  # a directory


def _svc(extra: str) -> str:
    return f'[services.a]\ncommand = ["x"]\n{extra}\n'


def _args(extra: str) -> str:
    return _svc(f"[services.a.arguments]\n{extra}")


BAD_CONFIGS = [
    ('reachability = "nat"', "reachability"),
    ("reachability = true", "reachability"),
    ('punch = "no"', "punch"),
    ("listen = 7070", "listen"),
    ('listen = "host:99999"', "listen"),
    ('listen = "::1"', "listen"),
    ("max_jobs = 0", "max_jobs"),
    ("max_jobs = true", "max_jobs"),
    ("max_queued = -1", "max_queued"),
    ("servics = {}", "servics"),
    ("services = 3", "services"),
    ("services.a = 1", "services.a"),
    ('[services."bad name"]\ncommand = ["x"]', 'services."bad name"'),
    ('[services.-x]\ncommand = ["x"]', "services.-x"),
    ('[services.a]\ndescription = "no command"', "services.a.command"),
    (_svc("").replace('["x"]', "[]"), "services.a.command"),
    (_svc("").replace('["x"]', '"x"'), "services.a.command"),
    (_svc("").replace('["x"]', '["x", 1]'), "services.a.command"),
    (_svc("").replace('["x"]', '[""]'), "services.a.command"),
    (_svc("").replace('["x"]', '["x\\u0000"]'), "services.a.command"),
    (_svc('id = "xyz"'), "services.a.id"),
    (_svc("id = 5"), "services.a.id"),
    (_svc("description = 3"), "services.a.description"),
    (_svc("timeout = 0"), "services.a.timeout"),
    (_svc("timeout = -1.5"), "services.a.timeout"),
    (_svc('timeout = "60"'), "services.a.timeout"),
    (_svc("timeout = true"), "services.a.timeout"),
    (_svc("timeout = inf"), "services.a.timeout"),
    (_svc("timeout = nan"), "services.a.timeout"),
    (_svc("max_concurrent = 0"), "services.a.max_concurrent"),
    (_svc("max_concurrent = 1.5"), "services.a.max_concurrent"),
    (_svc('max_output = "12X"'), "services.a.max_output"),
    (_svc('max_output = "0M"'), "services.a.max_output"),
    (_svc("max_output = -5"), "services.a.max_output"),
    (_svc("max_output = true"), "services.a.max_output"),
    (_svc("cpu_seconds = 0"), "services.a.cpu_seconds"),
    (_svc("cpu_seconds = 1.5"), "services.a.cpu_seconds"),
    (_svc('memory = "lots"'), "services.a.memory"),
    (_svc('allow = ["nope"]'), "services.a.allow"),
    (_svc('allow = "x"'), "services.a.allow"),
    (_svc('env = { "A B" = "x" }'), 'services.a.env."A B"'),
    (_svc("env = { A = 1 }"), "services.a.env.A"),
    (_svc('env = "x"'), "services.a.env"),
    (_svc("timout = 5"), "services.a.timout"),
    (_svc("arguments = 3"), "services.a.arguments"),
    (_args('options = { "-x" = "path" }'), "services.a.arguments.options.-x"),
    (_args('options = { "-x" = "re:(" }'), "services.a.arguments.options.-x"),
    (_args('options = { "x" = "flag" }'), "services.a.arguments.options.x"),
    (_args('options = { "--a=b" = "flag" }'), 'services.a.arguments.options."--a=b"'),
    (_args('options = { "--" = "flag" }'), "services.a.arguments.options.--"),
    (_args('options = { "-x" = 3 }'), "services.a.arguments.options.-x"),
    (_args('options = "x"'), "services.a.arguments.options"),
    (_args("positional = -1"), "services.a.arguments.positional"),
    (_args('positional = "1"'), "services.a.arguments.positional"),
    (_args('positional_shape = "flag"'), "services.a.arguments.positional_shape"),
    (_args('positional_shape = "zzz"'), "services.a.arguments.positional_shape"),
    (_args('positional_shape = "re:["'), "services.a.arguments.positional_shape"),
    (_args('allow_double_dash = "yes"'), "services.a.arguments.allow_double_dash"),
    (_args("postional = 1"), "services.a.arguments.postional"),
    (
        _svc("[services.b]\ncommand = ['y']\nid = 'B9BDDE76EF886E33C872FD8AFF29CA89'"),
        "services.b.id",
    ),  # id of "a"
]


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS)
def test_config_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_services(text)
    msg = str(info.value)
    assert msg.startswith(f"services.toml: {key}: "), msg
    assert "\n" not in msg


def test_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'timeout'"):
        parse_services(_svc("timout = 5"))


def test_invalid_toml() -> None:
    with pytest.raises(ConfigError, match=r"^x\.toml: invalid TOML"):
        parse_services("a = = 1", source="x.toml")


# --- the policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--stdout", "-v", "en-us", "-s", "140", "This was a triumph"],
        ["This was a triumph"],
        ["-p", "50", "-a", "100"],
        ["--lang", "en-gb"],
        ["--lang=en"],
        [""],
        ["héllo\nworld -x"],
    ],
)
def test_espeak_accepts(args: list[str]) -> None:
    ESPEAK_POLICY.check(args)
    assert ESPEAK.argv(args) == ["espeak-ng", "--stdout", *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "/tmp/x"], "argument 1 ('-w'): option not allowed"),
        (["-s", "fast"], "argument 2 ('fast'): value of -s is not INT"),
        (["one", "two"], "argument 2 ('two'): at most 1 positional arguments allowed"),
        (["-oops"], "argument 1 ('-oops'): option not allowed"),
        (["--stdout", "-", "x"], "argument 2 ('-'): option not allowed"),
        (["--", "-x"], "argument 1 ('--'): option not allowed"),
        (["-v"], "argument 1 ('-v'): option needs a value"),
        (["-v", "-w"], "argument 2 ('-w'): value of -v must not start with '-'"),
        (["-s", "-5"], "argument 2 ('-5'): value of -s must not start with '-'"),
        (["-v", "../../etc"], "argument 2 ('../../etc'): value of -v is not WORD"),
        (["-v", "a/b"], "argument 2 ('a/b'): value of -v is not WORD"),
        (["--lang=EN"], "argument 1 ('--lang=EN'): value of --lang is not /[a-z]{2}(-[a-z]+)?/"),
        (["--stdout=yes"], "argument 1 ('--stdout=yes'): option --stdout takes no value"),
        (["-s=140"], "argument 1 ('-s=140'): option not allowed"),
        (["--std"], "argument 1 ('--std'): option not allowed"),
        (["a\x00b"], "argument 1 ('a\\x00b'): contains a NUL character"),
        (["\udc80"], "argument 1 ('\\udc80'): is not valid Unicode text"),
        (["-" + "x" * 60], f"argument 1 ('-{'x' * 39}...'): option not allowed"),
    ],
)
def test_espeak_refuses(args: list[str], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        ESPEAK.argv(args)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("text", "arguments must be a list of strings"),
        ([b"x"], "argument 1: not a string"),
        (["x"] * 257, "too many arguments (257, at most 256)"),
        (["x" * 4096] * 17, "arguments too long (69632 bytes, at most 65536)"),
        (["a" * 4097], "positional argument is 4097 characters long, at most 4096"),
    ],
)
def test_limits(args: object, message: str) -> None:
    policy = ArgumentPolicy(max_positional=256)
    with pytest.raises(PolicyError, match=re.escape(message)):
        policy.check(args)  # type: ignore[arg-type]


LONG = "a" * 5000
SHOWN = repr("a" * 40 + "...")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Too long for any shape: the limit is named, not "is not TEXT".
        ([LONG], f"argument 1 ({SHOWN}): positional argument is 5000 characters long, at most 4096"),
        (["-m", LONG], f"argument 2 ({SHOWN}): value of -m is 5000 characters long, at most 4096"),
        (
            ["--name=" + LONG],
            f"argument 1 ({'--name=' + 'a' * 33 + '...'!r}): value of --name is 5000 characters long, "
            "at most 4096",
        ),
        # Within the limit, a value is judged by its shape as before.
        (["--name", "a" * 4096], f"argument 2 ({SHOWN}): value of --name is not WORD"),
    ],
)
def test_a_value_over_the_length_limit_is_told_the_limit(args: list[str], message: str) -> None:
    policy = ArgumentPolicy(options=WIDE_POLICY.options, max_positional=1)
    with pytest.raises(PolicyError) as info:
        policy.check(args)
    assert str(info.value) == message
    policy.check(["a" * 4096])
    policy.check(["-m", "a" * 4096])


def test_no_positionals_message() -> None:
    with pytest.raises(PolicyError, match=r"^argument 1 \('x'\): no positional arguments allowed$"):
        ArgumentPolicy().check(["x"])


def test_long_equals_form() -> None:
    WIDE_POLICY.check(["--ratio=1.5", "--name=abc", "--mode=fast", "--ratio=-2"])
    WIDE_POLICY.check(["-m", "two words"])
    for bad in (["--ratio=x"], ["--mode=medium"], ["--verbose=1"], ["--unknown=1"], ["-m=hi"]):
        with pytest.raises(PolicyError):
            WIDE_POLICY.check(bad)


def test_double_dash() -> None:
    WIDE_POLICY.check(["-q", "--", "-rf", "--verbose"])
    WIDE_POLICY.check(["--", "--", "-x"])  # a second `--` is just a positional (shape allowing)
    with pytest.raises(PolicyError, match="at most 3 positional"):
        WIDE_POLICY.check(["a", "--", "b", "c", "d"])
    with pytest.raises(PolicyError, match="is not /"):
        WIDE_POLICY.check(["--", "a b"])
    with pytest.raises(PolicyError, match="option not allowed"):
        WIDE_POLICY.check(["-x", "--"])
    assert WIDE_POLICY.summary() == (
        "-q, --verbose, --ratio NUMBER, --name WORD, -m TEXT, --mode /fast|slow/; "
        "up to 3 /[-a-z]{1,10}/; '--' ends options"
    )


def test_double_dash_parsed_from_toml() -> None:
    cfg = parse_services(_args('options = { "-n" = "int" }\npositional = 2\nallow_double_dash = true'))
    s = cfg.by_name("a")
    assert s is not None and s.policy.allow_double_dash
    assert s.argv(["-n", "3", "--", "-v"]) == ["x", "-n", "3", "--", "-v"]


# --- properties ----------------------------------------------------------------------


def _values(shape: Shape, *, dash_ok: bool = False) -> st.SearchStrategy[str]:
    if shape.spec == "text":  # from_regex would build long strings slowly
        chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
        base = st.text(chars, max_size=40)
    else:
        base = st.from_regex(shape.pattern, fullmatch=True)
    return base.filter(lambda v: shape.matches(v) and (dash_ok or not v.startswith("-")))


@st.composite
def _grammar_args(draw: st.DrawFn, policy: ArgumentPolicy) -> list[str]:
    args: list[str] = []
    names = sorted(policy.options)
    for name in draw(st.lists(st.sampled_from(names), max_size=8)) if names else []:
        shape = policy.options[name]
        if shape is None:
            args.append(name)
        elif name.startswith("--") and draw(st.booleans()):
            args.append(f"{name}={draw(_values(shape, dash_ok=True))}")
        else:
            args += [name, draw(_values(shape))]
    count = draw(st.integers(0, policy.max_positional))
    if policy.allow_double_dash and draw(st.booleans()):
        args.append("--")
        args += [draw(_values(policy.positional_shape, dash_ok=True)) for _ in range(count)]
    else:
        args += [draw(_values(policy.positional_shape)) for _ in range(count)]
    return args


@pytest.mark.parametrize("policy", [ESPEAK_POLICY, WIDE_POLICY], ids=["espeak", "wide"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_grammar_args_are_accepted(policy: ArgumentPolicy, data: st.DataObject) -> None:
    policy.check(data.draw(_grammar_args(policy)))


def _tokens(policy: ArgumentPolicy) -> st.SearchStrategy[str]:
    names = sorted(policy.options)
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from([*names, "--", "-", "---"]),
        st.builds(lambda n, v: f"{n}={v}", st.sampled_from(names), st.text(max_size=6)),
        st.builds(lambda v: "-" + v, st.text(max_size=6)),
    )


def _check_dashes(policy: ArgumentPolicy, args: list[str]) -> None:
    try:
        policy.check(args)
    except PolicyError:
        return
    for i, arg in enumerate(args):
        if policy.allow_double_dash and arg == "--":
            break
        if arg.startswith("-"):
            name, eq, _ = arg.partition("=")
            assert arg in policy.options or (eq and policy.options.get(name) is not None), (i, arg)


@settings(max_examples=300, deadline=None)
@given(st.lists(_tokens(ESPEAK_POLICY), max_size=8))
def test_arbitrary_args_espeak(args: list[str]) -> None:
    _check_dashes(ESPEAK_POLICY, args)


@settings(max_examples=300, deadline=None)
@given(st.lists(_tokens(WIDE_POLICY), max_size=8))
def test_arbitrary_args_wide(args: list[str]) -> None:
    _check_dashes(WIDE_POLICY, args)


# --- organisations ----------------------------------------------------------------------------

_LAB = Identity.from_seed(b"L" * 32)
_OTHER = Identity.from_seed(b"O" * 32)
_CALLER = Identity.from_seed(b"C" * 32).public_key


def _org_service(extra: str) -> Service:
    config = parse_services(f'[services.s]\ncommand = ["true"]\n{extra}\n')
    service = config.by_name("s")
    assert service is not None
    return service


def test_allow_orgs_and_free_orgs_parse_with_roles() -> None:
    service = _org_service(
        f'allow_orgs = ["{_LAB.peer_id}/robot", "{_OTHER.peer_id}"]\nfree_orgs = ["{_LAB.peer_id}"]'
    )
    assert service.allow_orgs == (OrgRule(_LAB.public_key, Role.ROBOT), OrgRule(_OTHER.public_key))
    assert service.free_orgs == (OrgRule(_LAB.public_key),)
    assert service.orgs == {_LAB.public_key, _OTHER.public_key}


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ('allow_orgs = ["nope"]', "allow_orgs: not a peer id"),
        (f'allow_orgs = ["{_LAB.peer_id}/pilot"]', "allow_orgs: not a role: 'pilot'"),
        (f'free_orgs = "{_LAB.peer_id}"', "free_orgs"),
    ],
)
def test_bad_org_rules_are_refused_naming_the_key(extra: str, why: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(why)):
        _org_service(extra)


@pytest.mark.parametrize(
    ("extra", "memberships", "allowed", "free"),
    [
        ("", set(), True, False),  # an open service
        (f'allow_orgs = ["{_LAB.peer_id}"]', set(), False, False),  # members only, a stranger
        (f'allow_orgs = ["{_LAB.peer_id}"]', {(_LAB.public_key, Role.SERVER)}, True, False),
        (f'allow_orgs = ["{_LAB.peer_id}/robot"]', {(_LAB.public_key, Role.SERVER)}, False, False),
        (f'allow_orgs = ["{_LAB.peer_id}/robot"]', {(_LAB.public_key, Role.ROBOT)}, True, False),
        (f'allow_orgs = ["{_LAB.peer_id}"]', {(_OTHER.public_key, Role.ROBOT)}, False, False),
        # allow and allow_orgs together: a caller in either list is let in
        (f'allow = ["{encode_peer_id(_CALLER)}"]\nallow_orgs = ["{_LAB.peer_id}"]', set(), True, False),
        (f'allow = ["{_OTHER.peer_id}"]\nallow_orgs = ["{_LAB.peer_id}"]', set(), False, False),
        # free for members, open to everyone
        (f'free_orgs = ["{_LAB.peer_id}"]', set(), True, False),
        (f'free_orgs = ["{_LAB.peer_id}"]', {(_LAB.public_key, Role.ROBOT)}, True, True),
        (f'free_orgs = ["{_LAB.peer_id}/server"]', {(_LAB.public_key, Role.ROBOT)}, True, False),
    ],
)
def test_the_service_decision_table(
    extra: str, memberships: set[tuple[bytes, Role]], allowed: bool, free: bool
) -> None:
    service = _org_service(extra)
    assert service.allows(_CALLER, memberships) is allowed
    assert service.free_for(memberships) is free


def test_mints_name_the_ecash_a_node_takes() -> None:
    assert parse_services("").mints == ()
    config = parse_services('mints = ["https://mint.example", "http://127.0.0.1:3338/cashu"]')
    assert config.mints == ("https://mint.example", "http://127.0.0.1:3338/cashu")
    for bad in ('"https://mint.example"', '["mint.example"]', '["ftp://mint"]', '["https://"]', "[3]"):
        with pytest.raises(ConfigError, match="mints"):
            parse_services(f"mints = {bad}")
