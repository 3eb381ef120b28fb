"""Where and how a job runs: bubblewrap namespaces, util-linux limits, cgroups.

Every job runs in a sandbox by default, built only from the platform's own tools. On a node
run by an ordinary user:

    cgexec -g memory,pids:JOB --                  (where the node can make cgroups: libcgroup)
      bwrap --unshare-user --unshare-pid ... --   (bubblewrap: namespaces and mounts)
        prlimit --nproc N --cpu S --core 0 --     (util-linux: the per-process limits)
          PROGRAM ARGS...

On a node run as root, bwrap mounts as root (so it can give the job folders its user could
not reach) and the job then becomes that unprivileged user, in a user namespace of its own:

    cgexec ... -- bwrap --unshare-pid --cap-drop ALL --cap-add CAP_SETUID,... --
      setpriv --reuid U --regid G --clear-groups --bounding-set -all --
        unshare --user --map-user U --map-group G --
          prlimit ... -- PROGRAM ARGS...

Each step configures itself and execs the next, so every limit is in force before the
program's first instruction, and the node never runs Python between fork and exec. (A job
may also start from a spare, `node.spare`: a process of ours already in a fresh job cgroup,
which execs the chain from bwrap on, without cgexec; the only Python it runs is a program
that reads that chain and execs it.) Inside,
the job sees the filesystem read-only except its working directory, a private /tmp and its
service's `writable` folders; no network unless the service says `network = true` (an empty
network namespace of its own: not even the host's loopback); no capabilities; its own PID
namespace, so that when the job's first process (bwrap) dies every process it started dies
with it, `setsid` or not. `prlimit --nproc` is set inside the job's own user namespace,
where the kernel counts only that job's processes (and threads). Where the node can make
cgroups (v1 `memory` and `pids` hierarchies, or a delegated v2 subtree), `memory` caps the
whole job and its processes are counted and killed as a group too; elsewhere `memory` caps
each process's address space (RLIMIT_AS), and the start line says so.

A root node's jobs run as `run_as` (default `nobody`). Folders on the way to what they need
(the program's folder, `writable` folders, the working directory, `Isolation.readable`)
that this user could not pass through (mode 0700 homes: /root) are covered with an empty
tmpfs in the sandbox, in which only what the job needs is bound: it sees nothing there that
it could not see anyway, and reaches what it must.

A service with `sandbox = false` runs as before (the node's user, network and files), still
under the rlimits and, where there are cgroups, in the job's cgroup.

Linux only. `probe_host` runs a sandboxed `true` once, so a node that cannot build its
sandboxes (no bwrap, user namespaces disabled) says so before serving anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pwd
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hubnet.identity.errors import ConfigError

DEFAULT_RUN_AS = "nobody"
DEFAULT_MAX_PROCESSES = 64
# A job's private /tmp and /dev/shm are memory (tmpfs): each gets at most this much, or the
# job's `memory` if smaller.
DEFAULT_TMP_SIZE = 256 * 1024 * 1024
# Besides the job's own processes, its cgroup holds bwrap's monitor and the namespace's init.
_BWRAP_PROCESSES = 2
CGROUP_CONTROLLERS = ("memory", "pids")
# cgroup v1 hierarchies used only to count a job's CPU time (v2 counts it in every cgroup).
_V1_ACCOUNTING = ("cpuacct",)
_JOB_CGROUP_PREFIX = "hubnet-job-"
_INSTALL_BWRAP = "apt-get install bubblewrap"
_INSTALL_CGEXEC = "apt-get install cgroup-tools"
# What a root node's bwrap keeps only so that setpriv can become the job's user; setpriv
# then drops them all (a change of uid from 0 clears the rest).
_SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
_RESOLVED = "/run/systemd/resolve"  # where /etc/resolv.conf points under systemd-resolved


class SandboxError(ConfigError):
    """The node cannot run its services' jobs as their services ask (a tool or a user is missing)."""


@dataclass(frozen=True)
class Isolation:
    """How one service's jobs are isolated (its services.toml keys, but `readable`)."""

    sandbox: bool = True
    network: bool = False
    writable: tuple[str, ...] = ()
    max_processes: int = DEFAULT_MAX_PROCESSES
    run_as: str | int | None = None  # a user name or uid; only used when the node runs as root
    # Folders the jobs read that their user may not reach (an interpreter under /root): set by
    # the node for the example services, not a services.toml key.
    readable: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobUser:
    """The unprivileged user a root node runs jobs as."""

    name: str
    uid: int
    gid: int

    def may(self, path: str, bits: int) -> bool:
        """Whether the mode of `path` grants this user `bits` (of 0o7: r=4, w=2, x=1) by its
        owner, group or other class (ACLs aside: at worst a folder is covered for nothing)."""
        try:
            info = os.stat(path)
        except OSError:
            return False
        if info.st_uid == self.uid:
            granted = (info.st_mode >> 6) & 0o7
        elif info.st_gid == self.gid:
            granted = (info.st_mode >> 3) & 0o7
        else:
            granted = info.st_mode & 0o7
        return granted & bits == bits


@dataclass(frozen=True)
class Cgroups:
    """Where this node makes its jobs' cgroups.

    `folders` maps each controller to the folder under which job cgroups are made; `paths`
    maps it to that folder's path inside its hierarchy, as cgexec names it.
    """

    version: int
    folders: Mapping[str, Path]
    paths: Mapping[str, str]
    cgexec: str

    def describe(self) -> str:
        return f"v{self.version} ({', '.join(sorted(self.folders))})"


@dataclass(frozen=True)
class Host:
    """What this machine offers for isolating jobs, probed once when the node starts."""

    bwrap: str | None  # None: no working bubblewrap (`bwrap_problem` says why)
    prlimit: str
    root: bool
    cgroups: Cgroups | None
    cgroups_note: str = ""  # why there are none
    bwrap_problem: str = ""
    setpriv: str | None = None  # needed as root
    unshare: str | None = None  # needed as root
    hidden: tuple[str, ...] = ()  # folders of the node's own (its key) that jobs must not see

    def job_user(self, isolation: Isolation) -> JobUser | None:
        """The user `isolation`'s jobs run as when this node is root, else None (the node's user)."""
        return job_user(isolation, root=self.root)

    def describe(self, users: Iterable[JobUser] = ()) -> str:
        """One line for the start: which isolation is in force on this machine."""
        if self.bwrap:
            sandbox = f"bwrap {self.bwrap} (read-only files, own PIDs, no network unless asked)"
        else:
            sandbox = f"no bwrap ({self.bwrap_problem})"
        if self.cgroups is not None:
            groups = f"cgroups {self.cgroups.describe()}: memory caps the whole job"
        else:
            groups = f"cgroups none ({self.cgroups_note}): memory caps each process (RLIMIT_AS)"
        names = sorted({user.name for user in users})
        if self.root:
            who = f"jobs run as {', '.join(names)}" if names else "no sandboxed service"
        else:
            who = f"jobs run as this node's user ({pwd_name(os.getuid())})"
        return f"isolation: {sandbox}; {groups}; {who}"


def describe_isolation(host: Host, isolation: Isolation) -> str:
    """One line for `hubnode services`: how this node isolates a service's jobs."""
    if not isolation.sandbox:
        return f"none: runs as {'root' if host.root else 'the node user'} with its network and files"
    if host.bwrap is None:
        return f"not served: no sandbox here ({host.bwrap_problem})"
    writes = "its folder and /tmp" + (f" and {len(isolation.writable)} more" if isolation.writable else "")
    parts = [
        "sandbox",
        "network" if isolation.network else "no network",
        f"writes only {writes}",
        f"at most {isolation.max_processes} processes",
        "memory per job"
        if host.cgroups is not None and "memory" in host.cgroups.folders
        else "memory per process",
    ]
    try:
        user = host.job_user(isolation)
    except SandboxError:
        user = None
    if user is not None:
        parts.append(f"as {user.name}")
    return ", ".join(parts)


def job_user(isolation: Isolation, *, root: bool | None = None) -> JobUser | None:
    """The user a root node (`root`, by default whether this process is) runs `isolation`'s
    jobs as; None when they run as the node's own user. SandboxError if run_as is unknown."""
    if not (os.geteuid() == 0 if root is None else root) or not isolation.sandbox:
        return None
    return resolve_user(isolation.run_as if isolation.run_as is not None else DEFAULT_RUN_AS)


def pwd_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve_user(run_as: str | int) -> JobUser:
    """The user `run_as` names (a name or a uid); SandboxError if unknown or root."""
    if isinstance(run_as, int):
        try:
            entry = pwd.getpwuid(run_as)
            user = JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
        except KeyError:  # a bare uid of its own: its group has the same number
            user = JobUser(str(run_as), run_as, run_as)
    else:
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            raise SandboxError(f"run_as: no user {run_as!r} on this machine") from None
        user = JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    if user.uid == 0 or user.gid == 0:
        raise SandboxError(
            f"run_as: {user.name!r} is root; jobs never run as root (sandbox = false if you must)"
        )
    return user


# --- the exec chain --------------------------------------------------------------------


def _rlimit_value(which: int, wanted: int) -> int:
    """`wanted`, lowered to the hard limit the node inherited (nobody may raise that)."""
    inherited = resource.getrlimit(which)[1]
    return wanted if inherited == resource.RLIM_INFINITY else min(wanted, inherited)


def prlimit_args(
    prlimit: str,
    *,
    cpu_seconds: int | None,
    address_space: int | None,
    max_processes: int | None,
) -> list[str]:
    """`prlimit ... --`: no core dumps, and each limit given; soft CPU first (SIGXCPU says why),
    the hard limit a second later as the SIGKILL backstop."""
    args = [prlimit, "--core=0:0"]
    if cpu_seconds is not None:
        soft = _rlimit_value(resource.RLIMIT_CPU, cpu_seconds)
        args.append(f"--cpu={soft}:{_rlimit_value(resource.RLIMIT_CPU, cpu_seconds + 1)}")
    if address_space is not None:
        value = _rlimit_value(resource.RLIMIT_AS, address_space)
        args.append(f"--as={value}:{value}")
    if max_processes is not None:
        value = _rlimit_value(resource.RLIMIT_NPROC, max_processes)
        args.append(f"--nproc={value}:{value}")
    return [*args, "--"]


def _ancestors(path: str) -> list[str]:
    """/a/b/c -> ["/a", "/a/b"]: the folders passed through on the way to `path`."""
    parts = Path(path).parts[1:-1]
    return [str(Path("/", *parts[: i + 1])) for i in range(len(parts))]


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def _cover_plan(user: JobUser | None, exposed: Iterable[str], tmpfs: Sequence[str]) -> list[str]:
    """bwrap arguments giving the job a way to each path in `exposed` (real paths) that lies
    under one of the fresh `tmpfs` folders, or that `user` (a root node's job user) may not
    reach: an empty tmpfs over each folder on the way that the user may not pass (nothing of it
    shows but the way), and in the tmpfs the folders down to the path, mode 0755."""
    covers: list[str] = []
    for path in sorted(set(exposed)):
        if user is None:
            break  # the node's own user: it reaches what the node reaches
        for folder in _ancestors(path):
            if any(folder == c or _under(folder, c) for c in [*tmpfs, *covers]):
                break  # under a tmpfs already: the way is made below
            if not user.may(folder, 0o1):
                covers.append(folder)
                break
    args: list[str] = []
    for cover in sorted(covers, key=lambda p: p.count("/")):
        args += ["--perms", "0755", "--tmpfs", cover]
    made: set[str] = {*covers, *tmpfs}
    for path in sorted(set(exposed)):
        for folder in _ancestors(path):
            if folder not in made and any(_under(folder, c) for c in [*tmpfs, *covers]):
                args += ["--perms", "0755", "--dir", folder]
                made.add(folder)
    return args


def bwrap_args(
    bwrap: str,
    isolation: Isolation,
    workdir: str | None,
    *,
    tmp_size: int,
    user: JobUser | None = None,
    program: str | None = None,
    hidden: Sequence[str] = (),
) -> list[str]:
    """`bwrap ... --`: the namespaces and the mounts a sandboxed job gets (`workdir` None: none,
    it runs in /). With `user` (a root node) bwrap runs privileged and the chain goes on with
    `setpriv_args` and `unshare_args`; without, it makes the job's user namespace itself."""
    args = [bwrap]
    if user is None:
        # Its own user namespace: no capabilities outside, its own process count; and no
        # further user namespaces inside, to regain capabilities in.
        args += ["--unshare-user", "--disable-userns"]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not isolation.network:
        args.append("--unshare-net")
    args += [
        "--die-with-parent",  # when bwrap is killed, its namespace's init is, and so all in it
        "--new-session",  # no controlling terminal to push input into (TIOCSTI)
        "--cap-drop",
        "ALL",
    ]
    if user is not None:
        for cap in _SETPRIV_CAPS:
            args += ["--cap-add", cap]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    tmpfs = ["/tmp", "/dev/shm"]
    for folder in tmpfs:
        args += ["--size", str(tmp_size), "--perms", "1777", "--tmpfs", folder]
    # The host's sockets (docker's, D-Bus, a user's session bus) stay usable on a read-only
    # mount: /run is an empty folder instead, but for the DNS stub of a job with the network.
    args += ["--perms", "0755", "--tmpfs", "/run"]
    tmpfs.append("/run")
    if isolation.network and os.path.isdir(_RESOLVED):
        args += ["--ro-bind", _RESOLVED, _RESOLVED]
    for folder in hidden:  # the node's key and config: an empty folder in their place
        args += ["--tmpfs", folder]
        tmpfs.append(folder)
    binds = [os.path.realpath(p) for p in (*isolation.writable, *([workdir] if workdir else []))]
    reads = [os.path.realpath(p) for p in isolation.readable]
    if program is not None:
        reads.append(os.path.dirname(os.path.realpath(program)))
    reads = [p for p in set(reads) if not any(_under(p, q) for q in reads)]
    plan = _cover_plan(user, [*binds, *reads], tmpfs)
    args += plan
    covered = [plan[i + 1] for i, a in enumerate(plan[:-1]) if a == "--tmpfs"]
    for path in sorted(reads):  # under a fresh tmpfs (/tmp, a cover) and needed: read-only
        if any(_under(path, c) for c in [*covered, *tmpfs]):
            args += ["--ro-bind", path, path]
    for path in binds:
        args += ["--bind", path, path]
    # A root node's bwrap may not enter the job's folder (its user's, mode 0700): unshare does.
    return [*args, "--chdir", "/" if user is not None else workdir or "/", "--"]


def setpriv_args(setpriv: str, user: JobUser) -> list[str]:
    """`setpriv ... --`: from root to `user`, with no supplementary groups, no inheritable
    capabilities and an empty bounding set (changing uid from 0 drops the others)."""
    return [
        setpriv,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def unshare_args(unshare: str, user: JobUser, workdir: str | None) -> list[str]:
    """`unshare --user ... --`: the job's own user namespace, in which it keeps its uid (so its
    next exec drops the capabilities a new namespace gives) and counts only its processes;
    and its working directory."""
    args = [unshare, "--user", f"--map-user={user.uid}", f"--map-group={user.gid}"]
    return [*args, f"--wd={workdir or '/'}", "--"]


# --- cgroups -----------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _mounts(mountinfo: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of each cgroup mount in /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, after = left.split(), right.split()
        if len(fields) >= 5 and len(after) >= 3 and after[0] in ("cgroup", "cgroup2"):
            point = fields[4].replace("\\040", " ")
            found.append((point, after[0], set(after[2].split(","))))
    return found


def probe_cgroups(
    *,
    mountinfo: str | None = None,
    self_cgroup: str | None = None,
    pid: int | None = None,
    cgexec: str | None = None,
    adopt: bool = False,
) -> tuple[Cgroups | None, str]:
    """Where this process may make job cgroups with the memory and pids controllers, or None
    and why not. The arguments replace the real /proc files and tools, for tests.

    cgroup v1: under this process's own cgroup in each hierarchy, when it may write there.
    cgroup v2: under its own cgroup when that has the controllers and, being delegated to it,
    can give them to children. v2 forbids processes in a cgroup whose controllers are given
    to children, so with `adopt` a node that is alone in its cgroup moves itself into a
    child (`hubnet-node`) first; a cgroup shared with other processes is left alone.
    """
    mountinfo = _read(Path("/proc/self/mountinfo")) if mountinfo is None else mountinfo
    self_cgroup = _read(Path("/proc/self/cgroup")) if self_cgroup is None else self_cgroup
    pid = os.getpid() if pid is None else pid
    cgexec = shutil.which("cgexec") if cgexec is None else cgexec or None
    own: dict[str, str] = {}  # controller (v1) or "" (v2) -> this process's path
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    mounts = _mounts(mountinfo)
    v1 = {
        controller: Path(point)
        for point, kind, options in mounts
        if kind == "cgroup"
        for controller in (*CGROUP_CONTROLLERS, *_V1_ACCOUNTING)
        if controller in options
    }
    if v1:
        folders, paths = {}, {}
        for controller, point in v1.items():
            path = own.get(controller, "/")
            folder = point / path.lstrip("/")
            if os.access(folder, os.W_OK | os.X_OK):
                folders[controller], paths[controller] = folder, path
        if not set(folders) & set(CGROUP_CONTROLLERS):
            return None, f"cgroup v1 ({', '.join(sorted(v1))}) is not writable by this user"
        if cgexec is None:
            return None, f"cgexec is not installed ({_INSTALL_CGEXEC})"
        return Cgroups(1, folders, paths, cgexec), ""
    unified = [point for point, kind, _ in mounts if kind == "cgroup2"]
    if not unified or "" not in own:
        return None, "no cgroup v1 memory or pids hierarchy and no cgroup v2"
    path = own[""]
    folder = Path(unified[0]) / path.lstrip("/")
    available = set(_read(folder / "cgroup.controllers").split()) & set(CGROUP_CONTROLLERS)
    if not available:
        return None, f"cgroup v2 {path} has no memory or pids controller for this node"
    if not os.access(folder, os.W_OK | os.X_OK) or not os.access(folder / "cgroup.subtree_control", os.W_OK):
        return None, f"cgroup v2 {path} is not delegated to this user"
    if cgexec is None:
        return None, f"cgexec is not installed ({_INSTALL_CGEXEC})"
    enabled = set(_read(folder / "cgroup.subtree_control").split())
    if not available <= enabled:
        members = _read(folder / "cgroup.procs").split()
        if path != "/" and members != [str(pid)]:
            return None, f"cgroup v2 {path} is shared with other processes (give hubnode one of its own)"
        if not adopt:
            return None, f"cgroup v2 {path} gives no controllers to children yet"
        try:
            if path != "/":
                (folder / "hubnet-node").mkdir(exist_ok=True)
                (folder / "hubnet-node" / "cgroup.procs").write_text(f"{pid}\n")
            (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(available)))
        except OSError as exc:
            return None, f"cgroup v2 {path}: cannot give controllers to children: {exc.strerror or exc}"
    return Cgroups(
        2, dict.fromkeys(sorted(available), folder), dict.fromkeys(sorted(available), path), cgexec
    ), ""


@dataclass
class JobCgroup:
    """One job's cgroup (one folder per v1 hierarchy, one in v2): made before the job starts,
    killed and removed after it."""

    cgroups: Cgroups
    name: str
    folders: dict[str, Path] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # what its processes used, read when it is removed

    def create(self, *, memory_bytes: int | None, max_tasks: int) -> None:
        """Make the folders and write the limits; SandboxError if the kernel refuses."""
        self.make()
        self.limit(memory_bytes=memory_bytes, max_tasks=max_tasks)

    def make(self) -> None:
        """Make the folders, without limits; SandboxError if the kernel refuses."""
        try:
            for controller, base in self.cgroups.folders.items():
                folder = base / self.name
                if folder not in self.folders.values():
                    folder.mkdir()
                self.folders[controller] = folder
        except OSError as exc:
            raise SandboxError(f"cannot make the job's cgroup {self.name}: {exc.strerror or exc}") from exc

    def limit(self, *, memory_bytes: int | None, max_tasks: int) -> None:
        """Write the job's limits into the made folders; SandboxError if the kernel refuses."""
        try:
            if "pids" in self.folders:
                (self.folders["pids"] / "pids.max").write_text(str(max_tasks))
            if memory_bytes is not None and "memory" in self.folders:
                memory = self.folders["memory"]
                if self.cgroups.version == 1:
                    (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    swap = memory / "memory.memsw.limit_in_bytes"  # only with swap accounting
                    if swap.exists():
                        swap.write_text(str(memory_bytes))
                else:
                    (memory / "memory.max").write_text(str(memory_bytes))
                    with contextlib.suppress(FileNotFoundError):  # no swap at all
                        (memory / "memory.swap.max").write_text("0")
        except OSError as exc:
            raise SandboxError(f"cannot limit the job's cgroup {self.name}: {exc.strerror or exc}") from exc

    def enter(self, pid: int) -> None:
        """Move process `pid` into the made folders, as cgexec moves itself; SandboxError if
        the kernel refuses. On cgroup v1 this may wait ~10 ms (see node.spare)."""
        try:
            for folder in set(self.folders.values()):
                (folder / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            why = exc.strerror or exc
            raise SandboxError(f"cannot move {pid} into the cgroup {self.name}: {why}") from exc

    def cgexec_args(self) -> list[str]:
        if self.cgroups.version == 2:
            controllers = ",".join(sorted(self.folders))
            [path] = {self.cgroups.paths[c] for c in self.folders}
            return [self.cgroups.cgexec, "-g", f"{controllers}:{_join(path, self.name)}", "--"]
        args = [self.cgroups.cgexec]
        for controller in sorted(self.folders):
            args += ["-g", f"{controller}:{_join(self.cgroups.paths[controller], self.name)}"]
        return [*args, "--"]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for folder in self.folders.values():
            found.update(int(p) for p in _read(folder / "cgroup.procs").split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (v2: all at once with cgroup.kill)."""
        if self.cgroups.version == 2:
            try:
                for folder in set(self.folders.values()):  # one: v2 has one tree
                    (folder / "cgroup.kill").write_text("1")
                return
            except OSError:
                pass  # a kernel before 5.14, without cgroup.kill: one by one, as on v1
        # Once, not once per hierarchy: `pids` reads every hierarchy's members already.
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the folders (first reading the CPU time used); False while processes are
        still dying in it."""
        if self.pids():
            return False
        if self.cgroups.version == 1 and "cpuacct" in self.folders:
            with contextlib.suppress(ValueError):
                self.cpu_seconds = int(_read(self.folders["cpuacct"] / "cpuacct.usage")) / 1e9
        elif self.cgroups.version == 2 and self.folders:
            for line in _read(next(iter(self.folders.values())) / "cpu.stat").splitlines():
                if line.startswith("usage_usec "):
                    self.cpu_seconds = int(line.split()[1]) / 1e6
        for controller, folder in list(self.folders.items()):
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    return False
                raise
            del self.folders[controller]
        return True


def job_cgroup(cgroups: Cgroups, name: str) -> JobCgroup:
    """The cgroup (not yet made) of this node's job or spare `name`."""
    # The node's pid in the name: a node started after one that died can tell its leftovers
    # (`sweep_cgroups`) from the live jobs of another node beside it.
    return JobCgroup(cgroups, f"{_JOB_CGROUP_PREFIX}{os.getpid()}-{name}")


def sweep_cgroups(cgroups: Cgroups) -> int:
    """Remove the empty job cgroups left by nodes that died (SIGKILL, a crash: their jobs died
    with them, bwrap's --die-with-parent, but nobody removed the folders); how many."""
    removed = 0
    for base in set(cgroups.folders.values()):
        try:
            children = [p for p in base.iterdir() if p.name.startswith(_JOB_CGROUP_PREFIX)]
        except OSError:
            continue
        for folder in children:
            owner = folder.name[len(_JOB_CGROUP_PREFIX) :].split("-", 1)[0]
            if not owner.isdigit() or _alive(int(owner)):
                continue
            with contextlib.suppress(OSError):  # still populated, or someone else's
                folder.rmdir()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


# --- the probe ---------------------------------------------------------------------------


def probe_host(*, hidden: Sequence[Path] = (), adopt_cgroup: bool = False) -> Host:
    """What this machine can do for isolation; runs one sandboxed `true` to be sure of bwrap.

    `hidden`: folders of the node's own (its key, its config) that jobs see as empty.
    `adopt_cgroup`: may move this process into a child cgroup (cgroup v2; only a serving node).
    """
    root = os.geteuid() == 0
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise SandboxError("prlimit (util-linux) is not installed: jobs cannot be limited")
    cgroups, note = probe_cgroups(adopt=adopt_cgroup)
    if cgroups is not None and adopt_cgroup:  # a serving node: it cleans up after dead ones
        sweep_cgroups(cgroups)
    # A root node's jobs cannot read its key (mode 0600) and may not even reach its folders.
    shown = () if root else tuple(str(p) for p in dict.fromkeys(hidden) if p.is_dir())
    host = Host(
        shutil.which("bwrap"),
        prlimit,
        root,
        cgroups,
        note,
        setpriv=shutil.which("setpriv"),
        unshare=shutil.which("unshare"),
        hidden=shown,
    )
    if host.bwrap is None:
        return _without_bwrap(host, f"is not installed ({_INSTALL_BWRAP})")
    if root and (host.setpriv is None or host.unshare is None):
        return _without_bwrap(host, "needs setpriv and unshare (util-linux) on a root node")
    try:
        true = shutil.which("true") or "/bin/true"
        bare = dataclasses.replace(host, cgroups=None)  # the sandbox alone
        argv = Confinement(bare, Isolation()).command([true], cpu_seconds=None, memory_bytes=None)
        done = subprocess.run(argv, capture_output=True, timeout=30, env={}, check=False, cwd="/")
    except (SandboxError, OSError, subprocess.TimeoutExpired) as exc:
        return _without_bwrap(host, f"does not run: {exc}")
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return _without_bwrap(host, f"fails here: {why[-1] if why else done.returncode}")
    return host


def _without_bwrap(host: Host, why: str) -> Host:
    return Host(
        None,
        host.prlimit,
        host.root,
        host.cgroups,
        host.cgroups_note,
        f"{host.bwrap or 'bwrap'} {why}",
        host.setpriv,
        host.unshare,
        host.hidden,
    )


def check_services(host: Host, services: Iterable[tuple[str, Isolation]]) -> tuple[list[JobUser], list[str]]:
    """The users jobs run as and the warning lines to give, for these (name, isolation) pairs;
    SandboxError when a service cannot be served as it asks."""
    users, warnings, needing = [], [], []
    for name, isolation in services:
        if not isolation.sandbox:
            who = "root" if host.root else "this node's user"
            warnings.append(
                f"service {name}: sandbox = false: its jobs run unconfined as {who}, with the "
                "node's network, files and privileges (only its limits apply)"
            )
            continue
        needing.append(name)
        for path in isolation.writable:
            if not os.path.isdir(path):
                raise SandboxError(f"service {name}: writable folder {path} is not a folder")
        try:
            user = host.job_user(isolation)
        except SandboxError as exc:
            raise SandboxError(f"service {name}: {exc}") from None
        if user is not None:
            users.append(user)
            for path in isolation.writable:
                if not user.may(path, 0o3):
                    raise SandboxError(
                        f"service {name}: writable folder {path} is not writable by {user.name}, "
                        f"whom its jobs run as (chown {user.name} {path}, or choose run_as)"
                    )
        elif isolation.run_as is not None:
            warnings.append(f"service {name}: run_as is ignored: the node does not run as root")
    if needing and host.bwrap is None:
        raise SandboxError(
            f"cannot sandbox {', '.join(needing)}: {host.bwrap_problem}; "
            "or set sandbox = false on each service to run it unconfined"
        )
    return users, warnings


def state_folder(isolation: Isolation, path: Path) -> str | None:
    """Make `path`, a folder where `isolation`'s jobs keep state, theirs: created if missing
    and, on a root node, given to the user they run as. None when done, else why not."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        user = job_user(isolation)
    except SandboxError as exc:
        return str(exc)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return None


# --- one job -----------------------------------------------------------------------------


class Confinement:
    """How one job is started and ended: its exec chain and, where there are cgroups, its cgroup.

    `host` None runs the program under its rlimits only (no sandbox, no cgroup), as a bare
    runner does; otherwise `isolation` says whether it is sandboxed, and the host's cgroups,
    if any, hold it either way.
    """

    def __init__(
        self,
        host: Host | None = None,
        isolation: Isolation = Isolation(sandbox=False),
        *,
        workdir: str | None = None,
        name: str = "",
    ) -> None:
        self.host = host
        self.isolation = isolation
        self.workdir = workdir
        self.sandboxed = host is not None and isolation.sandbox
        self.user: JobUser | None = None
        self.cgroup: JobCgroup | None = None
        if host is not None and host.cgroups is not None:
            self.cgroup = job_cgroup(host.cgroups, name or f"{id(self):x}")
        self._entered = False  # the cgroup already holds the process that execs the chain
        self._prlimit = host.prlimit if host is not None else shutil.which("prlimit") or "prlimit"

    @property
    def memory_is_whole_job(self) -> bool:
        return self.cgroup is not None and "memory" in self.cgroup.cgroups.folders

    def start(self, *, memory_bytes: int | None, cgroup: JobCgroup | None = None) -> None:
        """Get ready to run: the user, the working directory's owner, the job's cgroup with its
        limits. SandboxError if the job cannot be confined as asked (nothing is left behind
        but the cgroup, which `node.spare.remove_cgroup` removes).

        `cgroup`: a job cgroup made ahead of time that already holds the process that will
        exec the chain (node.spare): the job's limits are written into it instead of a new
        one, and the chain starts without cgexec."""
        if cgroup is not None:
            assert self.cgroup is not None, "a cgroup for a job on a host without cgroups"
            self.cgroup, self._entered = cgroup, True
        if self.sandboxed:
            assert self.host is not None
            if self.host.bwrap is None:
                raise SandboxError(f"this node cannot sandbox jobs: {self.host.bwrap_problem}")
            self.user = self.host.job_user(self.isolation)
            if self.user is not None and self.workdir is not None:
                try:  # its own folder is the one place the job's user may always write
                    os.chown(self.workdir, self.user.uid, self.user.gid)
                except OSError as exc:
                    raise SandboxError(f"cannot give {self.workdir} to {self.user.name}: {exc}") from exc
        if self.cgroup is not None:
            tasks = self.isolation.max_processes + (_BWRAP_PROCESSES if self.sandboxed else 0)
            if self._entered:
                self.cgroup.limit(memory_bytes=memory_bytes, max_tasks=tasks)
            else:
                self.cgroup.create(memory_bytes=memory_bytes, max_tasks=tasks)

    def command(self, argv: Sequence[str], *, cpu_seconds: int | None, memory_bytes: int | None) -> list[str]:
        """The exec chain that runs `argv` (its program an absolute path) confined; after `start`
        (the probe calls it without, for a sandbox of its own)."""
        chain: list[str] = []
        if self.cgroup is not None and not self._entered:
            chain += self.cgroup.cgexec_args()
        max_processes = None
        if self.sandboxed:
            host = self.host
            assert host is not None and host.bwrap is not None
            user = self.user or host.job_user(self.isolation)
            tmp_size = min(memory_bytes or DEFAULT_TMP_SIZE, DEFAULT_TMP_SIZE)
            chain += bwrap_args(
                host.bwrap,
                self.isolation,
                self.workdir,
                tmp_size=tmp_size,
                user=user,
                program=argv[0],
                hidden=host.hidden,
            )
            if user is not None:
                assert host.setpriv is not None and host.unshare is not None
                chain += setpriv_args(host.setpriv, user) + unshare_args(host.unshare, user, self.workdir)
                max_processes = self.isolation.max_processes
            else:  # counted in bwrap's user namespace, where its init is one of them
                max_processes = self.isolation.max_processes + 1
        chain += prlimit_args(
            self._prlimit,
            cpu_seconds=cpu_seconds,
            address_space=None if self.memory_is_whole_job else memory_bytes,
            max_processes=max_processes,
        )
        return [*chain, *argv]

    @property
    def cpu_seconds(self) -> float:
        """The CPU time the job's cgroup counted (once removed), or 0.0 without one."""
        return self.cgroup.cpu_seconds if self.cgroup is not None else 0.0

    def kill(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
