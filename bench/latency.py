#!/usr/bin/env python
"""Cold-process latency of a tiny `hubnode call`, beside the floors it cannot beat.

Starts a real `hubnode serve` with a `true` service in a temporary home and times whole
processes (fork to exit), interleaved, after warm-ups:

  hubnode call --server PEER@127.0.0.1:PORT true   (pinned key: Noise IK), stdin /dev/null
  hubnode call --server ... paid                   the same node's priced service, from an
                                                   account its operator credited: the node
                                                   holds and settles in its ledger, signs a
                                                   receipt, and the caller checks and spools it
                                                   (target: at most 1.1x the free call)
  hubnode call --server ... members                the same node's members-only service
                                                   (allow_orgs), called from a home that
                                                   joined the organisation: the call carries
                                                   an attestation and the node checks it
  hubnode call true                                discovered: a caller whose client.toml
                                                   names the node only as a DHT bootstrap
                                                   (lookup, offer checks, live probe, call),
                                                   twice: with `offer_cache = 0` (every call
                                                   asks the DHT, with the tokens the last
                                                   call kept), and as client.toml has it by
                                                   default (the calls after the first start
                                                   from the offers it kept, checked again)
  hubnode call true, 12 providers                  the same two on a DHT of 12 more `hubnode
                                                   serve`s that all offer `true`: every node
                                                   holds all 12 offers, two pages of records
                                                   (target for all four: at most 1.2x the
                                                   --server call)
  python -c "import hubnet.cli"                    the import floor of the CLI
  python -c "pass"                                 the interpreter floor
  python -c "<connect, send 1 byte, read 1 byte>"  a plain TCP round trip from a fresh process
  ssh -p PORT -i KEY ... 127.0.0.1 true            against a private sshd (below)

The organisation is made by the bench as a user would: `hubnode org create` in a temporary
admin home, `hubnode org attest` of the caller's `hubnode id`, `hubnode org join` in the
caller's home. The members-only row is printed with its difference from the open row.

The ssh row starts its own `sshd -D -e -f CONFIG` on a free 127.0.0.1 port, with a
temporary ed25519 host key and client key (its public half the only authorized key),
public-key auth only, no PAM, in a temporary directory, and stops it afterwards. It needs
the sshd binary (Debian: openssh-server; this script installs nothing) and is skipped,
saying so, without it. As root it creates sshd's privilege-separation directory
/run/sshd if missing (removing it again afterwards).

Then `-X importtime` breakdowns of `import hubnet.cli` and of a whole call
(`python -X importtime -m hubnet ... call`), to show what to make lazy, and a check that
the members-only call (a home with an attestations file) loads neither Trio nor the
record parsers (hubnet.identity.orgs): it reads the file with hubnet.identity.attest_text.

Last, the node's ledger alone (node/ledger.py, in this process, on a temporary file): jobs
held and settled per second (two transactions each), beside the bare SQLite floor on the
same file settings (one INSERT per transaction).

    .venv/bin/python bench/latency.py [--runs 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HUBNODE,
    PYTHON,
    BenchError,
    Server,
    bytecode_cache,
    children_cpu,
    hubnode_server,
    median,
    percentile,
    ssh_server,
)

SERVICES_TOML = """listen = "127.0.0.1:0"

[services.true]
command = ["true"]
description = "does nothing, successfully"
timeout = 10
"""

PAID_SERVICE = """
[services.paid]
command = ["true"]
description = "does nothing, for 1 msat a call"
timeout = 10
price = { per_call = 1 }
"""

MEMBERS_SERVICE = """
[services.members]
command = ["true"]
description = "does nothing, successfully, for members of the organisation only"
timeout = 10
allow_orgs = ["{org}"]
"""

TCP_CLIENT = """\
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"x")
sys.exit(0 if s.recv(1) == b"x" else 1)
"""
PROVIDERS = 12  # more than one page of provider records (dht.messages.MAX_RECORDS_PER_REPLY)
CALL = "hubnode call (IK)"
MEMBERS_CALL = "hubnode call --server, members-only (attestation checked)"
PAID_CALL = "hubnode call --server, paid (hold, settle, receipt)"
LEDGER_JOBS = 2000  # jobs held and settled in the ledger bench
DISCOVERED = "hubnode call (DHT, probe, IK)"
DISCOVERED_MANY = f"hubnode call (DHT {PROVIDERS}, probe, IK)"
KEPT = "hubnode call (kept offer, probe, IK)"
KEPT_MANY = f"hubnode call ({PROVIDERS} kept offers, probe, IK)"
DISCOVERIES = (DISCOVERED, KEPT, DISCOVERED_MANY, KEPT_MANY)
_RUN_TIMEOUT = 30.0
_PUBLISH_TIMEOUT = 30.0
_IMPORTTIME_REPEATS = 5


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None


def time_process(case: Case, cpu: dict[str, list[float]] | None = None) -> float:
    """Wall seconds of one whole process; BenchError if it fails. With `cpu`, its CPU
    seconds (user + system, its own children included) go into `cpu[case.name]`: what the
    caller's machine pays, which a loaded machine's wall times blur."""
    cpu_before = children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            case.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_RUN_TIMEOUT,
            check=False,
            env=case.env,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{case.name}: took longer than {_RUN_TIMEOUT:.0f} s") from None
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"{case.name}: exit {done.returncode}: {done.stderr.decode(errors='replace')}")
    if cpu is not None:
        cpu.setdefault(case.name, []).append(children_cpu() - cpu_before)
    return elapsed


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A one-byte echo server on 127.0.0.1 in a thread; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if data := conn.recv(1):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def print_target(label: str, times: list[float], base: list[float], target: float) -> None:
    """`times` over `base` (medians, then means), and whether the medians meet `target`."""
    ratio = median(times) / median(base)
    print(
        f"  {label}: {ratio:.3f}x (medians), {statistics.fmean(times) / statistics.fmean(base):.3f}x "
        f"(means); target <= {target}x: {'met' if ratio <= target else 'NOT met'}"
    )


def discovering_home(parent: Path, name: str, bootstrap: str, *, keep_offers: bool = True) -> Path:
    """A caller's home whose client.toml knows only a DHT node (`bootstrap`), not the servers;
    without `keep_offers`, every call asks the DHT (`offer_cache = 0`)."""
    home = parent / name
    home.mkdir()
    rules = "" if keep_offers else "[select]\noffer_cache = 0\n"
    (home / "client.toml").write_text(f'bootstrap = ["{bootstrap}"]\n{rules}', encoding="utf-8")
    return home


@contextlib.contextmanager
def providers(count: int, env: dict[str, str]) -> Iterator[Server]:
    """`count` `hubnode serve`s of SERVICES_TOML joined through the first (yielded), once a
    discovering caller sees all `count` offers; stopped on the way out."""
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(hubnode_server(SERVICES_TOML, env))
        for _ in range(count - 1):
            stack.enter_context(hubnode_server(SERVICES_TOML, env, ["--bootstrap", first.target]))
        home = discovering_home(first.client_home.parent, "waiting", first.target)
        argv = [HUBNODE, "--home", str(home), "services", "true", "--json"]
        deadline = time.monotonic() + _PUBLISH_TIMEOUT
        while True:
            done = subprocess.run(argv, capture_output=True, timeout=_RUN_TIMEOUT, check=False, env=env)
            seen = len(json.loads(done.stdout)) if done.returncode == 0 else 0
            if seen == count:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{seen} of {count} offers discoverable after {_PUBLISH_TIMEOUT:.0f} s")
            time.sleep(0.2)
        yield first


@dataclass(frozen=True)
class Organisation:
    org_id: str
    member_home: Path  # a caller's home that joined the organisation


def run_hubnode(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> str:
    """The stripped stdout of `hubnode ARGV`; BenchError if it fails."""
    done = subprocess.run(
        [HUBNODE, *argv], input=stdin, capture_output=True, timeout=_RUN_TIMEOUT, check=False, env=env
    )
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        raise BenchError(f"hubnode {' '.join(argv)}: exit {done.returncode}: {stderr}")
    return done.stdout.decode().strip()


@contextlib.contextmanager
def organisation(env: dict[str, str]) -> Iterator[Organisation]:
    """An organisation created in a temporary admin home, and a caller's home that joined it,
    as a user makes them: `org create`, the caller's `id`, `org attest`, `org join`. Removed
    on the way out."""
    work = Path(tempfile.mkdtemp(prefix="hubnet-bench-org-"))
    admin, member = ["--home", str(work / "admin")], ["--home", str(work / "member")]
    try:
        created = run_hubnode([*admin, "org", "create", "bench", "--label", "bench lab"], env)
        org_id = created.splitlines()[-1]
        peer_id = run_hubnode([*member, "id"], env)
        text = run_hubnode(
            [*admin, "org", "attest", "bench", peer_id, "--role", "robot", "--label", "bench robot"], env
        )
        # Through stdin: `org join TEXT` first asks whether TEXT names a file, and a name
        # this long makes that stat() fail (ENAMETOOLONG) before the text is read.
        run_hubnode([*member, "org", "join", "-"], env, stdin=text.encode())
        yield Organisation(org_id, work / "member")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fund(server: Server, env: dict[str, str]) -> None:
    """The node's operator credits the client's home enough for every paid call of the bench."""
    client = run_hubnode(["--home", str(server.client_home), "id"], env).strip()
    server_home = server.client_home.parent / "server"  # _common.hubnode_server's layout
    run_hubnode(["--home", str(server_home), "ledger", "credit", client, str(10**12)], env)


def ledger_rates(jobs: int = LEDGER_JOBS) -> tuple[float, float]:
    """(jobs held and settled per second in node.ledger, bare SQLite transactions per second)
    on temporary files with the ledger's settings (WAL, synchronous=NORMAL)."""
    import sqlite3

    from hubnet.node.ledger import Ledger

    with tempfile.TemporaryDirectory(prefix="hubnet-ledger-bench-") as folder:
        with Ledger.open(Path(folder)) as books:
            account = b"a" * 32
            books.credit(account, jobs * 10)
            started = time.perf_counter()
            for n in range(jobs):
                books.hold(account, f"job{n}", 10)
                books.settle(f"job{n}", 7)
            settled = jobs / (time.perf_counter() - started)
            assert books.audit().consistent
        db = sqlite3.connect(Path(folder) / "bare.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (n INTEGER)")
        started = time.perf_counter()
        for n in range(jobs):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (n,))
            db.execute("COMMIT")
        bare = jobs / (time.perf_counter() - started)
        db.close()
    return settled, bare


def check_refused(case: Case) -> None:
    """`case` must be refused as not allowed (exit 126): the service really is members-only."""
    done = subprocess.run(
        case.argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_RUN_TIMEOUT,
        check=False,
        env=case.env,
    )
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 126 or "not-allowed" not in stderr:
        raise BenchError(f"{case.name}: exit {done.returncode}, not refused as not-allowed: {stderr}")


SSH = "ssh 127.0.0.1 true (own sshd)"


@contextlib.contextmanager
def ssh_case() -> Iterator[tuple[Case | None, str]]:
    """The `ssh ... 127.0.0.1 true` case against a private sshd (`_common.ssh_server`), or
    (None, why) when sshd or ssh is missing."""
    with ssh_server() as (server, reason):
        yield (None if server is None else Case(SSH, server.argv("true"))), reason


# --- -X importtime -------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    name: str
    self_us: float
    cumulative_us: float


def importtime(argv: list[str], env: dict[str, str], repeats: int = _IMPORTTIME_REPEATS) -> list[Imported]:
    """Per-module medians over `repeats` runs of `python -X importtime ...` (after one more
    untimed run that fills the bytecode cache), in import order."""
    selfs: dict[str, list[float]] = defaultdict(list)
    cumulatives: dict[str, list[float]] = defaultdict(list)
    order: dict[str, int] = {}
    for run in range(repeats + 1):
        done = subprocess.run(
            [PYTHON, "-X", "importtime", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_RUN_TIMEOUT,
            check=False,
            env=env,
        )
        if done.returncode != 0:
            raise BenchError(f"-X importtime {' '.join(argv)}: exit {done.returncode}")
        if run == 0:
            continue
        for line in done.stderr.decode(errors="replace").splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            self_text, cumulative_text, name = line.removeprefix("import time:").split("|", 2)
            name = name.strip()
            order.setdefault(name, len(order))
            selfs[name].append(float(self_text))
            cumulatives[name].append(float(cumulative_text))
    return [
        Imported(name, statistics.median(selfs[name]), statistics.median(cumulatives[name]))
        for name in sorted(order, key=order.__getitem__)
    ]


def _by_package(modules: list[Imported]) -> list[tuple[str, float, int]]:
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for m in modules:
        top = m.name.split(".")[0]
        totals[top] += m.self_us
        counts[top] += 1
    return sorted(((k, v, counts[k]) for k, v in totals.items()), key=lambda x: -x[1])


def loaded(modules: list[Imported], package: str) -> list[str]:
    """The modules of `package` (itself and everything under it) among `modules`."""
    return [m.name for m in modules if m.name == package or m.name.startswith(package + ".")]


def print_importtime(title: str, modules: list[Imported], top: int = 10) -> None:
    total = sum(m.self_us for m in modules)
    print(f"{title}: {len(modules)} modules, {total / 1000:.1f} ms of import in all")
    print(f"  {'cumul ms':>8} {'self ms':>8}  module (top {top} by cumulative)")
    for m in sorted(modules, key=lambda m: -m.cumulative_us)[:top]:
        print(f"  {m.cumulative_us / 1000:>8.1f} {m.self_us / 1000:>8.1f}  {m.name}")
    print(f"  {'self ms':>8} {'modules':>8}  top-level package (sum of self times)")
    for name, self_us, count in _by_package(modules)[:top]:
        print(f"  {self_us / 1000:>8.1f} {count:>8}  {name}")


# --- main ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="timed runs of each command (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each first (default 3)")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    times: dict[str, list[float]] = {}
    try:
        with (
            ssh_case() as (ssh, ssh_reason),
            bytecode_cache() as env,
            organisation(env) as org,
            hubnode_server(
                SERVICES_TOML + PAID_SERVICE + MEMBERS_SERVICE.format(org=org.org_id), env
            ) as server,
            providers(PROVIDERS, env) as many,
            echo_server() as echo_port,
        ):
            call_argv = ["--home", str(server.client_home), "call", "--server", server.target, "true"]
            paid_argv = [*call_argv[:-1], "paid"]
            fund(server, env)
            members_argv = ["--home", str(org.member_home), "call", "--server", server.target, "members"]
            # The open call's home has no attestation: the members-only service must refuse it.
            stranger = [HUBNODE, *call_argv[:-1], "members"]
            check_refused(Case(f"{MEMBERS_CALL} without attestation", stranger, env))
            homes = {
                name: discovering_home(seed.client_home.parent, folder, seed.target, keep_offers=keep)
                for name, seed, folder, keep in (
                    (DISCOVERED, server, "asking", False),
                    (KEPT, server, "keeping", True),
                    (DISCOVERED_MANY, many, "asking", False),
                    (KEPT_MANY, many, "keeping", True),
                )
            }
            cases = [
                Case(CALL, [HUBNODE, *call_argv], env),
                Case(PAID_CALL, [HUBNODE, *paid_argv], env),
                Case(MEMBERS_CALL, [HUBNODE, *members_argv], env),
                *(
                    Case(name, [HUBNODE, "--home", str(home), "call", "true"], env)
                    for name, home in homes.items()
                ),
                Case('python -c "import hubnet.cli"', [PYTHON, "-c", "import hubnet.cli"], env),
                Case('python -c "pass"', [PYTHON, "-c", "pass"], env),
                Case("python TCP 1-byte round trip", [PYTHON, "-c", TCP_CLIENT, str(echo_port)], env),
            ]
            if ssh is not None:
                cases.append(ssh)
            for case in cases:  # the first call also creates the client's identity key
                for _ in range(args.warmup):
                    time_process(case)
            times = {case.name: [] for case in cases}
            cpus: dict[str, list[float]] = {}
            for _ in range(args.runs):  # interleaved, so drift hits every command alike
                for case in cases:
                    times[case.name].append(time_process(case, cpus))
            call_modules = importtime(["-m", "hubnet", *call_argv], env)
            members_modules = importtime(["-m", "hubnet", *members_argv], env)
            cli_modules = importtime(["-c", "import hubnet.cli"], env)
    except BenchError as exc:
        print(f"latency: FAILED: {exc}", file=sys.stderr)
        return 1

    print(f"latency: whole-process wall time, {args.runs} runs each after {args.warmup} warm-ups, 127.0.0.1")
    print(f"  interpreter: {PYTHON} ({sys.version.split()[0]})")
    print("  bytecode: cached in a private PYTHONPYCACHEPREFIX, as an installed client has it")
    width = max(32, *(len(name) for name in times))
    print(f"  {'':<{width}} {'mean ms':>8} {'median':>8} {'p90':>8} {'min':>8}")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(
            f"  {name:<{width}} {statistics.fmean(ms):>8.1f} {median(ms):>8.1f} "
            f"{percentile(ms, 90):>8.1f} {min(ms):>8.1f}"
        )
    if ssh is None:
        print(f"  {SSH}: SKIPPED: {ssh_reason}")
    call, members = times[CALL], times[MEMBERS_CALL]
    paired = [m - c for m, c in zip(members, call, strict=True)]  # run one after the other
    print(
        f"  members-only minus open hubnode call: {(median(members) - median(call)) * 1000:+.1f} ms "
        f"(medians), {(statistics.fmean(members) - statistics.fmean(call)) * 1000:+.1f} ms (means), "
        f"{median(paired) * 1000:+.1f} ms (median of the {len(paired)} back-to-back pairs)"
    )
    print("  ratios of hubnode call (mean, median):")
    print_target("paid / free hubnode call", times[PAID_CALL], call, 1.1)
    for name in DISCOVERIES:
        print_target(f"{name} / the --server call", times[name], call, 1.2)
    for name in [n for n in times if n not in (CALL, PAID_CALL, MEMBERS_CALL, *DISCOVERIES)]:
        print(
            f"    / {name:<{width}} {statistics.fmean(call) / statistics.fmean(times[name]):>5.2f}x "
            f"{median(call) / median(times[name]):>5.2f}x"
        )
    if SSH in times:
        factor = median(times[SSH]) / median(call)
        verdict = f"{factor:.2f}x faster" if factor >= 1 else f"{1 / factor:.2f}x slower"
        print(f"  hubnode call is {verdict} than ssh 127.0.0.1 true (medians); target <= 0.2x")
    print("  CPU of the calling process (median ms, user + system; not the server's):")
    for name in (CALL, 'python -c "import hubnet.cli"', 'python -c "pass"', SSH):
        if name in cpus:
            print(f"    {name:<{width}} {median(cpus[name]) * 1000:>8.1f}")
    if SSH in cpus:
        print(f"    hubnode call / ssh: {median(cpus[CALL]) / median(cpus[SSH]):.2f}x")
    floor = median(times['python -c "import hubnet.cli"'])
    print(f"  hubnode call median minus import floor median: {(median(call) - floor) * 1000:.1f} ms")
    print()
    print_importtime('python -X importtime -c "import hubnet.cli"', cli_modules)
    print()
    print_importtime("python -X importtime -m hubnet ... call ... true", call_modules)
    cli_names = {m.name for m in cli_modules}
    extra = [m for m in call_modules if m.name not in cli_names]
    print()
    print_importtime("modules the call path adds beyond `import hubnet.cli`", extra)
    trio = loaded(call_modules, "trio")
    found = f"YES ({len(trio)} modules) -- the design says the call path never loads Trio" if trio else "no"
    print(f"  trio on the call path: {found}")
    print()
    print("the members-only call (its home has an attestations file):")
    call_names = {m.name for m in call_modules}
    added = [m.name for m in members_modules if m.name not in call_names]
    print(f"  modules it adds beyond the open call: {', '.join(added) or 'none'}")
    for package, why in (
        ("trio", "the call path never loads Trio"),
        ("hubnet.identity.orgs", "the caller sends its attestations unparsed; the node checks them"),
    ):
        names = loaded(members_modules, package)
        found = f"YES ({', '.join(names)}) -- {why}" if names else "no"
        print(f"  {package} on its path: {found}")
    reader = "yes" if loaded(members_modules, "hubnet.identity.attest_text") else "NO"
    print(f"  hubnet.identity.attest_text (reads DATA/attestations) on its path: {reader}")
    print()
    settled, bare = ledger_rates()
    print(f"the node's ledger ({LEDGER_JOBS} jobs, each a hold and a settle: two transactions):")
    print(f"  {settled:,.0f} jobs settled per second; bare SQLite {bare:,.0f} transactions per second")
    print(f"  ledger transactions / bare transactions: {2 * settled / bare:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
