"""Shared helpers for the benchmarks: a real `hubnode serve` in a temporary home, and statistics.

Everything runs the virtualenv's own interpreter and console script (resolved from
`sys.executable`'s directory), never a shim that wraps `python3`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
BIN_DIR = Path(sys.executable).parent
HUBNODE = str(BIN_DIR / "hubnode")
_TARGET_RE = re.compile(r"[a-z2-7]{52}@127\.0\.0\.1:[0-9]+")
_START_TIMEOUT = 15.0


class BenchError(Exception):
    """The benchmark could not run or a correctness check failed."""


@dataclass(frozen=True)
class Server:
    target: str  # PEER_ID@127.0.0.1:PORT
    client_home: Path
    log: Path
    pid: int = 0  # of the `hubnode serve` process


def check_hubnode() -> None:
    path = Path(HUBNODE)
    if not path.is_file():
        raise BenchError(f"{HUBNODE} not found: run with the virtualenv's interpreter (.venv/bin/python)")
    first = path.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    interpreter = first[2:].split()[0] if first.startswith("#!") and first[2:].split() else ""
    if not interpreter or Path(interpreter).parent.resolve() != BIN_DIR.resolve():
        raise BenchError(f"{HUBNODE} does not run this virtualenv's interpreter (first line {first!r})")


@contextmanager
def bytecode_cache() -> Iterator[dict[str, str]]:
    """An environment for child processes that caches bytecode in a private temporary folder.

    An installed client has .pyc files; an editable checkout run with
    PYTHONDONTWRITEBYTECODE=1 recompiles the project's own modules on every start, which
    would inflate every figure. PYTHONPYCACHEPREFIX keeps the cache out of the source tree.
    """
    prefix = tempfile.mkdtemp(prefix="hubnet-bench-pycache-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix
    try:
        yield env
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


@contextmanager
def hubnode_server(
    services_toml: str, env: dict[str, str] | None = None, serve_args: Sequence[str] = ()
) -> Iterator[Server]:
    """Start `hubnode serve` on 127.0.0.1:0 in a temporary home; SIGTERM and wait on the way out."""
    check_hubnode()
    work = Path(tempfile.mkdtemp(prefix="hubnet-bench-"))
    server_home, client_home = work / "server", work / "client"
    server_home.mkdir()
    client_home.mkdir()
    (server_home / "services.toml").write_text(services_toml, encoding="utf-8")
    log = work / "serve.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                # No LAN beacon: a benchmark talks to 127.0.0.1 only.
                [HUBNODE, "--home", str(server_home), "serve", "--no-lan", *serve_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        target = None
        while target is None:
            match = _TARGET_RE.search(log.read_text(encoding="utf-8", errors="replace"))
            if match:
                target = match[0]
            elif proc.poll() is not None:
                raise BenchError(f"hubnode serve exited with {proc.returncode}:\n{log.read_text()}")
            elif time.monotonic() > deadline:
                raise BenchError(f"hubnode serve did not start in {_START_TIMEOUT:.0f} s:\n{log.read_text()}")
            else:
                time.sleep(0.05)
        yield Server(target, client_home, log, proc.pid)
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a server we started and wait for it; SIGKILL if it will not go."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def command_latency(
    prefix: Sequence[str], args: Sequence[str], stdin: bytes, runs: int, env: dict[str, str], expect: int = 0
) -> float:
    """Median wall time in seconds of `prefix + args` with `stdin`, after one warm-up run.

    `prefix` is a local program or `hubnode call --server TARGET SERVICE`, so one service
    is timed alike both ways. Every run must exit with `expect`: a benchmark of failures
    fails loudly.
    """
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run([*prefix, *args], input=stdin, capture_output=True, env=env, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != expect:
            raise BenchError(f"{[*prefix, *args]} exited {proc.returncode}: {proc.stderr.decode()}")
        if i:
            times.append(elapsed)
    return statistics.median(times)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and of the children it has reaped."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(t) for t in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def children_cpu() -> float:
    """CPU seconds of this process's children that it has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


# --- a private sshd, the bar a Pi user would otherwise reach for ---------------------------

_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
_SSHD_START_TIMEOUT = 10.0
_SSH_RUN_TIMEOUT = 30.0
# Where Debian's sshd chroots its pre-auth child when it runs as root; compiled in
# (--with-privsep-path), no sshd_config option moves or disables it, and sshd refuses to
# start without it. systemd's unit creates it (RuntimeDirectory=sshd); we create it if missing.
_PRIVSEP_DIR = Path("/run/sshd")
# MaxStartups: bench/map.py's `parallel -S` opens dozens of logins at once (sshd's default, 10,
# would refuse the rest).
SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {work}/host_ed25519
AuthorizedKeysFile {work}/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
PrintMotd no
MaxStartups 200
"""


@dataclass(frozen=True)
class SshServer:
    """A private sshd on 127.0.0.1:`port` that takes the key `client_key`."""

    port: int
    client_key: Path
    log: Path
    pid: int  # of the listening sshd, which reaps each connection's processes

    def argv(self, *command: str, cipher: str | None = None) -> list[str]:
        """`ssh ... 127.0.0.1 COMMAND` against this sshd; `cipher` as `ssh -c` takes it."""
        return [
            *("ssh", "-p", str(self.port), "-i", str(self.client_key)),
            *(("-c", cipher) if cipher else ()),
            *("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"),
            *("-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"),
            *("127.0.0.1", *command),
        ]


def find_sshd() -> str | None:
    """An absolute path to sshd (it refuses to re-exec otherwise), or None."""
    found = shutil.which("sshd")
    if found:
        return str(Path(found).resolve())
    return next((c for c in _SSHD_CANDIDATES if Path(c).is_file()), None)


def _keygen(path: Path) -> None:
    done = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hubnet-bench", "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_SSH_RUN_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"ssh-keygen {path.name}: exit {done.returncode}: {done.stderr.decode(errors='replace')}"
        )


def _wait_for_sshd(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll until something on 127.0.0.1:port sends an SSH banner, within a bounded time."""
    deadline = time.monotonic() + _SSHD_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise BenchError(f"sshd exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            if sock.recv(8).startswith(b"SSH-"):
                return
        if time.monotonic() > deadline:
            raise BenchError(
                f"sshd not answering on 127.0.0.1:{port} after {_SSHD_START_TIMEOUT:.0f} s:\n"
                f"{log.read_text(errors='replace')}"
            )
        time.sleep(0.02)


@contextmanager
def ssh_server() -> Iterator[tuple[SshServer | None, str]]:
    """A private `sshd -D -e` on 127.0.0.1 (temporary host key, client key, authorized_keys),
    checked with one `ssh ... true`; (None, why) if sshd, ssh or ssh-keygen is missing.
    Installs nothing; SIGTERM and wait on the way out."""
    sshd = find_sshd()
    missing = [name for name, path in (("sshd", sshd), ("ssh", shutil.which("ssh"))) if not path]
    if not shutil.which("ssh-keygen"):
        missing.append("ssh-keygen")
    if missing:
        yield None, f"{', '.join(missing)} not installed (Debian: apt-get install openssh-server)"
        return
    assert sshd is not None
    work = Path(tempfile.mkdtemp(prefix="hubnet-bench-sshd-"))
    made_privsep = False
    proc: subprocess.Popen[bytes] | None = None
    try:
        if os.geteuid() == 0 and not _PRIVSEP_DIR.is_dir():
            _PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
            made_privsep = True
        _keygen(work / "host_ed25519")
        _keygen(work / "client_ed25519")
        (work / "authorized_keys").write_bytes((work / "client_ed25519.pub").read_bytes())
        port = free_port()
        config = work / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, work=work), encoding="utf-8")
        log = work / "sshd.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        _wait_for_sshd(proc, port, log)
        server = SshServer(port, work / "client_ed25519", log, proc.pid)
        done = subprocess.run(
            server.argv("true"), stdin=subprocess.DEVNULL, capture_output=True, timeout=_SSH_RUN_TIMEOUT
        )
        if done.returncode != 0:
            raise BenchError(
                f"ssh 127.0.0.1 true: exit {done.returncode}: {done.stderr.decode(errors='replace')}\n"
                f"sshd log:\n{log.read_text(errors='replace')}"
            )
        yield server, ""
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
        if made_privsep:
            with contextlib.suppress(OSError):
                _PRIVSEP_DIR.rmdir()
