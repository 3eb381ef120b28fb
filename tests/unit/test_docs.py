"""The documentation's examples must agree with the code.

Every services.toml in README.md and docs/*.md parses; every `hubnode ...` line in a shell
block names a real command and real options; every documented call passes the documented
service's argument policy; README.md opens with `make demo` and `make test`; relative links
resolve. The checkers are plain functions, and the tests at the bottom feed them broken
documents to show they really fail.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from hubnet.cli import cli
from hubnet.config import load_client_config
from hubnet.identity.errors import ConfigError, PolicyError
from hubnet.identity.keys import decode_peer_id
from hubnet.known_hosts import KnownHosts
from hubnet.node.services import Service, parse_services
from hubnet.select import parse_selection_rules

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_PATHS = [README, *sorted((ROOT / "docs").glob("*.md"))]
EXPECTED_DOCS = ["README.md", "getting-started.md", "services.md", "security.md"]
SHELL_LANGS = {"shell", "sh", "bash", "console"}
_OPERATOR_CHARS = set("();<>|&")


# --- reading markdown -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its language and its (dedented) text."""

    source: str
    line: int
    lang: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def fenced_blocks(text: str, source: str = "<doc>") -> list[Block]:
    """The ``` (or ~~~) blocks of a markdown text, including indented ones in lists."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        fence = stripped[:3]
        if fence not in ("```", "~~~"):
            i += 1
            continue
        indent = len(lines[i]) - len(stripped)
        marker = stripped[: len(stripped) - len(stripped.lstrip(fence[0]))]
        lang = stripped[len(marker) :].strip().split(" ")[0].lower()
        start, i = i + 1, i + 1
        body: list[str] = []
        while i < len(lines) and not (
            lines[i].strip().startswith(marker) and set(lines[i].strip()) == {fence[0]}
        ):
            line = lines[i]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            i += 1
        blocks.append(Block(source, start, lang, "\n".join(body) + "\n"))
        i += 1
    return blocks


def services_blocks(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang == "toml" and "[services." in b.body]


def shell_segments(body: str) -> list[list[str]]:
    """Each simple command of a shell block as words, split at |, &&, ;, > and the like."""
    segments: list[list[str]] = []
    for line in body.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        if words and words[0] == "$":
            words = words[1:]
        current: list[str] = []
        for word in words:
            if set(word) <= _OPERATOR_CHARS:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append(word)
        if current:
            segments.append(current)
    return segments


# --- checking hubnode command lines ---------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """A parsed `hubnode [GLOBAL OPTIONS] COMMAND [OPTIONS] [POSITIONALS]`."""

    command: str | None
    options: dict[str, str | None]
    positionals: list[str]


def _options_of(command: click.Command) -> dict[str, bool]:
    """Every option name of a click command, mapped to whether it takes a value."""
    table = {"-h": False, "--help": False}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                table[name] = not (param.is_flag or param.count)
    return table


def _interspersed(command: click.Command) -> bool:
    """Whether click reads options after the first positional (not for groups, nor for
    `call` and `alias`, whose words after SERVICE belong to the remote program)."""
    return bool(command.context_settings.get("allow_interspersed_args", command.allow_interspersed_args))


def _take_options(
    words: list[str], command: click.Command, problems: list[str]
) -> tuple[dict[str, str | None], list[str]]:
    """Options as click reads them: up to the first positional, or among the positionals of
    a command that takes them anywhere. Returns the options and the other words, as given."""
    table = _options_of(command)
    options: dict[str, str | None] = {}
    positionals: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return options, positionals + words[i + 1 :]
        if not word.startswith("-") or word == "-":
            if not _interspersed(command):
                return options, positionals + words[i:]
            positionals.append(word)
            i += 1
            continue
        name, eq, value = word.partition("=")
        i += 1
        if name not in table:
            problems.append(f"unknown option {name!r} for {command.name!r}")
            continue
        if table[name] and not eq:
            if i >= len(words):
                problems.append(f"option {name!r} of {command.name!r} needs a value")
                break
            value = words[i]
            i += 1
        options[name] = value if table[name] else None
    return options, positionals


def parse_hubnode(words: list[str]) -> tuple[Invocation, list[str]]:
    """Parse the words after `hubnode` against the real CLI; the second item lists problems.

    A group's subcommand is part of the command: `hubnode org create lab` is "org create"."""
    problems: list[str] = []
    _globals, rest = _take_options(words, cli, problems)
    if not rest:
        return Invocation(None, {}, []), problems
    name, rest = rest[0], rest[1:]
    command = cli.commands.get(name)
    while isinstance(command, click.Group) and rest:
        _group_options, rest = _take_options(rest, command, problems)
        if not rest:
            break
        sub = command.commands.get(rest[0])
        if sub is None:
            problems.append(f"no such command: hubnode {name} {rest[0]}")
            return Invocation(f"{name} {rest[0]}", {}, rest[1:]), problems
        name, rest, command = f"{name} {rest[0]}", rest[1:], sub
    if command is None:
        problems.append(f"no such command: hubnode {name}")
        return Invocation(name, {}, rest), problems
    options, positionals = _take_options(rest, command, problems)
    if positionals and not any(isinstance(p, click.Argument) for p in command.params):
        problems.append(f"hubnode {name} takes no arguments, got {positionals}")
    return Invocation(name, options, positionals), problems


def hubnode_invocations(blocks: list[Block]) -> list[tuple[str, Invocation, list[str]]]:
    """Every `hubnode ...` command in the shell blocks: (where, parsed, problems)."""
    found = []
    for block in blocks:
        if block.lang not in SHELL_LANGS:
            continue
        for segment in shell_segments(block.body):
            for i, word in enumerate(segment):
                if Path(word).name == "hubnode":
                    invocation, problems = parse_hubnode(segment[i + 1 :])
                    found.append((block.where, invocation, problems))
                    break
    return found


def documented_services(blocks: list[Block]) -> dict[str, list[tuple[str, Service]]]:
    """Every service defined in a services.toml block, by name, with the document defining it."""
    services: dict[str, list[tuple[str, Service]]] = {}
    for block in services_blocks(blocks):
        for service in parse_services(block.body, source=block.where).services.values():
            services.setdefault(service.name, []).append((block.source, service))
    return services


def documented_calls(blocks: list[Block]) -> list[tuple[str, str, list[str]]]:
    """Every call in the shell blocks as (where, service, arguments), aliases expanded.

    Covers `hubnode call SERVICE ARGS...` and, after `hubnode alias NAME SERVICE ARGS...`
    in the same document, both `hubnode call NAME ...` and the `NAME ...` command.
    """
    calls: list[tuple[str, str, list[str]]] = []
    aliases: dict[str, tuple[str, list[str]]] = {}
    source = None
    for block in blocks:
        if block.source != source:
            source, aliases = block.source, {}
        if block.lang not in SHELL_LANGS:
            continue
        for segment in shell_segments(block.body):
            if segment[0] in aliases:
                service, fixed = aliases[segment[0]]
                calls.append((block.where, service, [*fixed, *segment[1:]]))
                continue
            start = next((i for i, w in enumerate(segment) if Path(w).name == "hubnode"), None)
            if start is None:
                continue
            invocation, problems = parse_hubnode(segment[start + 1 :])
            if problems or not invocation.positionals:
                continue
            if invocation.command == "alias" and len(invocation.positionals) >= 2:
                name, service, *fixed = invocation.positionals
                aliases[name] = (service, fixed)
            elif invocation.command == "call":
                service, *args = invocation.positionals
                if service in aliases:
                    service, fixed = aliases[service]
                    args = [*fixed, *args]
                calls.append((block.where, service, args))
    return calls


def call_problems(
    calls: list[tuple[str, str, list[str]]], services: dict[str, list[tuple[str, Service]]]
) -> tuple[list[str], int]:
    """Calls that no documented service of that name accepts; and how many were checked.

    A call is checked against the services of that name in its own document if there are
    any, else against those in every document.
    """
    problems, checked = [], 0
    for where, name, args in calls:
        everywhere = services.get(name, [])
        here = [s for source, s in everywhere if where.startswith(f"{source}:")]
        candidates = here or [s for _source, s in everywhere]
        if not candidates:
            continue
        checked += 1
        errors = []
        for service in candidates:
            try:
                service.policy.check(args)
                break
            except PolicyError as exc:
                errors.append(str(exc))
        else:
            problems.append(f"{where}: hubnode call {name} {shlex.join(args)}: {'; '.join(errors)}")
    return problems, checked


def readme_opening_problems(text: str) -> list[str]:
    """README must open with one paragraph, then a code block running `make demo` and `make test`."""
    blocks = fenced_blocks(text, "README.md")
    if not blocks:
        return ["README.md has no code block"]
    problems = []
    before = text.split("```", 1)[0]
    paragraphs = [p for p in before.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
    if len(paragraphs) != 1:
        problems.append(f"README.md: want one paragraph before the first code block, found {len(paragraphs)}")
    commands = [segment[:2] for segment in shell_segments(blocks[0].body)]
    for wanted in (["make", "demo"], ["make", "test"]):
        if wanted not in commands:
            problems.append(f"README.md: the first code block does not run `{shlex.join(wanted)}`")
    return problems


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    kept = "".join(c for c in text if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _prose(path: Path) -> str:
    """A markdown file without the contents of its code blocks."""
    text = path.read_text(encoding="utf-8")
    for block in fenced_blocks(text):
        text = text.replace(block.body, "")
    return text


def link_problems(path: Path) -> list[str]:
    """Relative links (and #anchors) in `path` that point nowhere."""
    text = _prose(path)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.name}: link to missing {file_part}")
            continue
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#{1,6} +(.+)$", _prose(linked), re.M)
            if anchor not in {_slug(h) for h in headings}:
                problems.append(f"{path.name}: no heading for #{anchor} in {linked.name}")
    return problems


# --- the documents --------------------------------------------------------------------------


def _all_blocks() -> list[Block]:
    return [b for p in DOC_PATHS for b in fenced_blocks(p.read_text(encoding="utf-8"), p.name)]


ALL_BLOCKS = _all_blocks()


def test_the_documents_exist() -> None:
    for name in EXPECTED_DOCS:
        assert any(p.name == name for p in DOC_PATHS), name


@pytest.mark.parametrize("block", services_blocks(ALL_BLOCKS), ids=lambda b: b.where)
def test_services_toml_examples_parse(block: Block) -> None:
    config = parse_services(block.body, source=block.where)
    assert config.services, f"{block.where}: a services.toml example with no services"


def test_there_are_services_toml_examples() -> None:
    by_doc = {b.source for b in services_blocks(ALL_BLOCKS)}
    assert {"README.md", "getting-started.md", "services.md"} <= by_doc
    assert len(services_blocks([b for b in ALL_BLOCKS if b.source == "services.md"])) >= 4


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "toml"], ids=lambda b: b.where)
def test_every_toml_example_is_valid_toml(block: Block, tmp_path: Path) -> None:
    tomllib.loads(block.body)
    if "client.toml" in block.body.splitlines()[0]:
        path = tmp_path / "client.toml"
        path.write_text(block.body, encoding="utf-8")
        config = load_client_config(path)
        parse_selection_rules(config.select, source=block.where)
        assert config.server or config.bootstrap or config.select, f"{block.where}: an empty client.toml"


@pytest.mark.parametrize(
    "block",
    [b for b in ALL_BLOCKS if b.lang == "text" and b.body.startswith("# known_hosts\n")],
    ids=lambda b: b.where,
)
def test_known_hosts_examples_parse(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(block.body, encoding="utf-8")
    for line in block.body.splitlines()[1:]:
        address, peer_id = line.split()
        assert KnownHosts(path).lookup(address) == decode_peer_id(peer_id)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"], ids=lambda b: b.where)
def test_python_examples_compile(block: Block) -> None:
    compile(block.body, block.where, "exec")


def test_every_hubnode_command_in_shell_blocks_exists() -> None:
    found = hubnode_invocations(ALL_BLOCKS)
    problems = [f"{where}: {p}" for where, _inv, ps in found for p in ps]
    assert not problems, "\n".join(problems)
    used = {inv.command for _where, inv, _ps in found}
    # Guard against an extractor that silently finds nothing.
    assert {"serve", "call", "services", "status", "alias"} <= used, used
    assert len(found) >= 15


def test_documented_calls_pass_the_documented_policies() -> None:
    problems, checked = call_problems(documented_calls(ALL_BLOCKS), documented_services(ALL_BLOCKS))
    assert not problems, "\n".join(problems)
    assert checked >= 8


def test_readme_opens_with_make_demo_and_make_test() -> None:
    problems = readme_opening_problems(README.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOC_PATHS, ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    problems = link_problems(path)
    assert not problems, "\n".join(problems)


def test_the_espeak_example_accepts_the_classic_call() -> None:
    services = documented_services([b for b in ALL_BLOCKS if b.source == "services.md"])
    _source, espeak = services["espeak"][0]
    espeak.policy.check(["--stdout", "-v", "en-us", "-s", "140", "This was a triumph"])
    for refused in (["-w", "/etc/passwd"], ["-v", "../x"], ["-s", "fast"], ["one", "two"]):
        with pytest.raises(PolicyError):
            espeak.policy.check(refused)


# --- the checkers can fail ------------------------------------------------------------------

BROKEN = """\
Intro one.

Intro two.

```shell
make demo
hubnode frobnicate
hubnode call --sever PEER@h:7070 espeak
hubnode --homer x serve
hubnode status extra
hubnode services --server
hubnode org frobnicate lab
hubnode org attest lab PEER_ID --rol robot
echo hi | hubnode call --server PEER@h:7070 espeak -w /etc/passwd
hubnode alias --server PEER@h:7070 say espeak --stdout
say -o out.wav
```

```toml
[services.espeak]
command = ["espeak-ng", "--stdout"]
[services.espeak.arguments]
options = { "--stdout" = "flag", "-v" = "word" }
```

```toml
[services.broken]
command = []
```
"""


def test_the_command_checker_catches_mistakes() -> None:
    problems = [p for _w, _i, ps in hubnode_invocations(fenced_blocks(BROKEN)) for p in ps]
    assert any("no such command: hubnode frobnicate" in p for p in problems)
    assert any("'--sever'" in p for p in problems)
    assert any("'--homer'" in p for p in problems)
    assert any("takes no arguments" in p for p in problems)
    assert any("needs a value" in p for p in problems)
    assert any("no such command: hubnode org frobnicate" in p for p in problems)
    assert any("'--rol'" in p for p in problems)  # an option after the positionals, as click reads it


def test_the_call_checker_catches_refused_arguments() -> None:
    blocks = fenced_blocks(BROKEN)
    services = documented_services(blocks[:2])
    problems, checked = call_problems(documented_calls(blocks), services)
    assert checked == 2  # the well-formed call of espeak and the call through the alias
    assert any("'-w'" in p for p in problems)
    assert any("'-o'" in p for p in problems)


def test_the_services_check_catches_a_broken_example() -> None:
    broken = services_blocks(fenced_blocks(BROKEN))[-1]
    with pytest.raises(ConfigError, match="command"):
        parse_services(broken.body, source=broken.where)


def test_the_readme_check_catches_a_bad_opening() -> None:
    problems = readme_opening_problems(BROKEN)
    assert any("one paragraph" in p for p in problems)
    assert any("make test" in p for p in problems)
    assert readme_opening_problems("Intro.\n\n```shell\nmake demo\nmake test\n```\n") == []


def test_the_link_check_catches_a_dead_link(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n[ok](#title) [gone](missing.md) [no anchor](#nowhere)\n", encoding="utf-8")
    problems = link_problems(doc)
    assert len(problems) == 2
    assert any("missing.md" in p for p in problems)
    assert any("#nowhere" in p for p in problems)
