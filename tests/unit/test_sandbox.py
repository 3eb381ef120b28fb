"""node.sandbox without running jobs: the services.toml keys, the exec chain, the cgroup probe.

The chains are checked argument by argument (the order is the point: each tool execs the
next, so every limit is set before the program runs); tests/e2e/test_sandbox.py runs them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from hubnet.identity.errors import ConfigError
from hubnet.node.sandbox import (
    DEFAULT_MAX_PROCESSES,
    Cgroups,
    Confinement,
    Host,
    Isolation,
    JobCgroup,
    JobUser,
    SandboxError,
    bwrap_args,
    check_services,
    prlimit_args,
    probe_cgroups,
    resolve_user,
    sweep_cgroups,
)
from hubnet.node.services import parse_services

NOBODY = JobUser("nobody", 65534, 65534)
USER_HOST = Host("/usr/bin/bwrap", "/usr/bin/prlimit", False, None, "no cgroups here")
ROOT_HOST = dataclasses.replace(USER_HOST, root=True, setpriv="/usr/bin/setpriv", unshare="/usr/bin/unshare")


def isolation_of(body: str) -> Isolation:
    service = parse_services(f'[services.s]\ncommand = ["cat"]\n{body}').by_name("s")
    assert service is not None
    return service.isolation


# --- services.toml -------------------------------------------------------------------------


def test_every_job_is_sandboxed_without_network_by_default() -> None:
    assert isolation_of("") == Isolation(
        sandbox=True, network=False, writable=(), max_processes=DEFAULT_MAX_PROCESSES, run_as=None
    )


def test_the_sandbox_keys_are_read() -> None:
    isolation = isolation_of(
        'network = true\nwritable = ["/srv/state/", "/var/lib/x"]\nmax_processes = 8\nrun_as = "hubjobs"'
    )
    assert isolation == Isolation(True, True, ("/srv/state", "/var/lib/x"), 8, "hubjobs")
    assert isolation_of("run_as = 1234\nsandbox = false").run_as == 1234
    assert not isolation_of("sandbox = false").sandbox


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("network = 1", "network: must be true or false"),
        ('sandbox = "no"', "sandbox: must be true or false"),
        ('writable = ["state"]', "writable: 'state': give absolute paths"),
        ('writable = ["/"]', "writable: '/': give absolute paths of folders (not / itself)"),
        ('writable = "/srv"', "writable: must be a list of strings"),
        ("max_processes = 0", "max_processes: must be an integer >= 1"),
        ('run_as = "root"', "run_as: jobs never run as root"),
        ("run_as = 0", "run_as: a uid must be between 1"),
        ('run_as = "a b"', "run_as: must be a user name or a uid"),
        ("max_process = 3", "unknown key (did you mean 'max_processes'?)"),
    ],
)
def test_bad_sandbox_keys_are_named(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"services\.toml: services\.s\.") as caught:
        parse_services(f'[services.s]\ncommand = ["cat"]\n{body}')
    assert message in str(caught.value)


def test_run_as_never_resolves_to_root() -> None:
    with pytest.raises(SandboxError, match="never run as root"):
        resolve_user(0)
    with pytest.raises(SandboxError, match="no user 'no-such-user-here'"):
        resolve_user("no-such-user-here")
    assert resolve_user(4000123) == JobUser("4000123", 4000123, 4000123)  # a uid of its own


# --- the exec chain ------------------------------------------------------------------------


def test_prlimit_sets_core_cpu_memory_and_processes() -> None:
    assert prlimit_args("prlimit", cpu_seconds=None, address_space=None, max_processes=None) == [
        "prlimit",
        "--core=0:0",
        "--",
    ]
    args = prlimit_args("prlimit", cpu_seconds=2, address_space=1 << 20, max_processes=9)
    assert args[2:] == ["--cpu=2:3", f"--as={1 << 20}:{1 << 20}", "--nproc=9:9", "--"]


def test_network_is_unshared_unless_asked() -> None:
    assert "--unshare-net" in bwrap_args("bwrap", Isolation(), "/w", tmp_size=1)
    assert "--unshare-net" not in bwrap_args("bwrap", Isolation(network=True), "/w", tmp_size=1)


def test_the_filesystem_is_read_only_but_for_tmp_the_workdir_and_writable() -> None:
    args = bwrap_args("bwrap", Isolation(writable=("/srv/state",)), "/tmp/job", tmp_size=1 << 20)
    text = " ".join(args)
    assert "--ro-bind / /" in text
    assert f"--size {1 << 20} --perms 1777 --tmpfs /tmp" in text
    assert "--perms 0755 --tmpfs /run" in text  # no host sockets (docker's, D-Bus)
    assert "--bind /srv/state /srv/state --bind /tmp/job /tmp/job --chdir /tmp/job --" in text
    assert [a for a in args if a == "--bind"] == ["--bind", "--bind"]


def test_an_ordinary_node_lets_bwrap_make_the_user_namespace() -> None:
    args = bwrap_args("bwrap", Isolation(), "/w", tmp_size=1)
    assert args[1:3] == ["--unshare-user", "--disable-userns"]
    assert "--cap-add" not in args


def test_a_root_node_keeps_only_what_setpriv_needs_and_unshare_enters_the_workdir() -> None:
    args = bwrap_args("bwrap", Isolation(), "/tmp/w", tmp_size=1, user=NOBODY)
    assert "--unshare-user" not in args
    text = " ".join(args)
    assert "--cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID --cap-add CAP_SETPCAP" in text
    assert text.endswith("--bind /tmp/w /tmp/w --chdir / --")


def test_folders_the_job_user_cannot_pass_are_covered_and_only_the_way_is_made(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    wanted = closed / "a" / "b" / "state"
    wanted.mkdir(parents=True)
    (closed / "secret").write_text("x")
    closed.chmod(0o700)  # root's, say: nobody may not pass
    for folder in (tmp_path, closed / "a", closed / "a" / "b"):
        folder.chmod(0o755)
    try:
        args = bwrap_args(
            "bwrap", Isolation(writable=(str(wanted),)), None, tmp_size=1, user=JobUser("u", 4000123, 4000123)
        )
    finally:
        closed.chmod(0o755)
    text = " ".join(args)
    if str(tmp_path).startswith("/tmp/"):  # under the job's fresh /tmp: the way is made there
        assert f"--perms 0755 --dir {closed}" in text
    else:
        assert f"--perms 0755 --tmpfs {closed}" in text
    assert f"--perms 0755 --dir {closed / 'a'} --perms 0755 --dir {closed / 'a' / 'b'}" in text
    assert text.endswith(f"--bind {wanted} {wanted} --chdir / --")


def test_the_programs_folder_is_shown_read_only_when_covered(tmp_path: Path) -> None:
    prefix = tmp_path / "home" / "py"
    (prefix / "bin").mkdir(parents=True)
    program = prefix / "bin" / "python3"
    program.write_text("")
    (tmp_path / "home").chmod(0o700)
    try:
        args = bwrap_args(
            "bwrap",
            Isolation(readable=(str(prefix),)),
            None,
            tmp_size=1,
            user=JobUser("u", 4000123, 4000123),
            program=str(program),
        )
    finally:
        (tmp_path / "home").chmod(0o755)
    text = " ".join(args)
    assert f"--ro-bind {prefix} {prefix}" in text  # the program's folder is inside: bound once
    assert f"--ro-bind {prefix / 'bin'}" not in text


def test_the_nodes_own_folders_are_hidden_from_its_jobs() -> None:
    host = dataclasses.replace(USER_HOST, hidden=("/home/n/.local/share/hubnet",))
    args = Confinement(host, Isolation(), workdir="/tmp/w").command(
        ["/bin/cat"], cpu_seconds=None, memory_bytes=None
    )
    assert " --tmpfs /home/n/.local/share/hubnet " in " ".join(args)


def test_the_chain_as_an_ordinary_user() -> None:
    confinement = Confinement(USER_HOST, Isolation(max_processes=10), workdir="/tmp/w")
    confinement.start(memory_bytes=None)
    argv = confinement.command(["/bin/cat", "-n"], cpu_seconds=5, memory_bytes=1 << 30)
    assert argv[0] == "/usr/bin/bwrap"
    prlimit = argv.index("/usr/bin/prlimit")
    assert argv[prlimit - 1] == "--" and argv[prlimit:] == [
        "/usr/bin/prlimit",
        "--core=0:0",
        "--cpu=5:6",
        f"--as={1 << 30}:{1 << 30}",  # no cgroup: memory is each process's
        "--nproc=11:11",  # bwrap's init counts in its user namespace
        "--",
        "/bin/cat",
        "-n",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="a root node's chain chowns the workdir")
def test_the_chain_as_root(tmp_path: Path) -> None:
    confinement = Confinement(ROOT_HOST, Isolation(run_as="nobody"), workdir=str(tmp_path))
    confinement.start(memory_bytes=None)
    assert tmp_path.stat().st_uid == NOBODY.uid  # the job's folder is its user's
    argv = confinement.command(["/bin/cat"], cpu_seconds=None, memory_bytes=None)
    setpriv, unshare = argv.index("/usr/bin/setpriv"), argv.index("/usr/bin/unshare")
    assert argv[0] == "/usr/bin/bwrap" and argv[setpriv - 1] == "--"
    assert argv[setpriv:unshare] == [
        "/usr/bin/setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    assert argv[unshare:] == [
        "/usr/bin/unshare",
        "--user",
        "--map-user=65534",
        "--map-group=65534",
        f"--wd={tmp_path}",
        "--",
        "/usr/bin/prlimit",
        "--core=0:0",
        f"--nproc={DEFAULT_MAX_PROCESSES}:{DEFAULT_MAX_PROCESSES}",  # its own namespace: only it
        "--",
        "/bin/cat",
    ]


def test_an_unsandboxed_job_gets_its_limits_and_nothing_else() -> None:
    argv = Confinement(USER_HOST, Isolation(sandbox=False)).command(
        ["/bin/cat"], cpu_seconds=1, memory_bytes=None
    )
    assert argv == ["/usr/bin/prlimit", "--core=0:0", "--cpu=1:2", "--", "/bin/cat"]


def test_a_node_without_bwrap_refuses_to_start_a_sandboxed_job() -> None:
    host = dataclasses.replace(USER_HOST, bwrap=None, bwrap_problem="bwrap is not installed")
    with pytest.raises(SandboxError, match="bwrap is not installed"):
        Confinement(host, Isolation()).start(memory_bytes=None)


# --- the start line and the checks -----------------------------------------------------------


def test_sandbox_false_is_a_warning_and_a_missing_bwrap_an_error(tmp_path: Path) -> None:
    users, warnings = check_services(USER_HOST, [("open", Isolation(sandbox=False)), ("boxed", Isolation())])
    assert users == []
    assert warnings == [
        "service open: sandbox = false: its jobs run unconfined as this node's user, with the "
        "node's network, files and privileges (only its limits apply)"
    ]
    no_bwrap = dataclasses.replace(USER_HOST, bwrap=None, bwrap_problem="bwrap is not installed")
    with pytest.raises(SandboxError, match="cannot sandbox boxed: bwrap is not installed"):
        check_services(no_bwrap, [("open", Isolation(sandbox=False)), ("boxed", Isolation())])
    with pytest.raises(SandboxError, match="writable folder /no/such/folder is not a folder"):
        check_services(USER_HOST, [("s", Isolation(writable=("/no/such/folder",)))])


def test_a_root_nodes_writable_folders_must_be_its_job_users(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with pytest.raises(SandboxError, match=f"writable folder {tmp_path} is not writable by nobody"):
        check_services(ROOT_HOST, [("s", Isolation(writable=(str(tmp_path),)))])
    tmp_path.chmod(0o777)
    users, _ = check_services(ROOT_HOST, [("s", Isolation(writable=(str(tmp_path),)))])
    assert [u.uid for u in users] == [65534]


def test_the_start_line_names_sandbox_cgroups_and_user() -> None:
    assert USER_HOST.describe() == (
        "isolation: bwrap /usr/bin/bwrap (read-only files, own PIDs, no network unless asked); cgroups none "
        f"(no cgroups here): memory caps each process (RLIMIT_AS); jobs run as this node's user "
        f"({USER_HOST.describe().rsplit('(', 1)[1]}"
    )
    cgroups = Cgroups(1, {"memory": Path("/m"), "pids": Path("/p")}, {"memory": "/", "pids": "/"}, "cgexec")
    line = dataclasses.replace(ROOT_HOST, cgroups=cgroups).describe([NOBODY])
    assert "cgroups v1 (memory, pids): memory caps the whole job; jobs run as nobody" in line


# --- cgroups ---------------------------------------------------------------------------------

MOUNTINFO_V1 = """\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def _v1_tree(tmp_path: Path) -> tuple[str, str]:
    mountinfo = MOUNTINFO_V1.replace("/sys/fs/cgroup", str(tmp_path))
    (tmp_path / "memory" / "node").mkdir(parents=True)
    (tmp_path / "pids").mkdir()
    return mountinfo, "4:memory:/node\n8:pids:/\n0::/\n"


def test_cgroup_v1_hierarchies_are_found_under_the_nodes_own_cgroup(tmp_path: Path) -> None:
    mountinfo, own = _v1_tree(tmp_path)
    cgroups, why = probe_cgroups(mountinfo=mountinfo, self_cgroup=own, cgexec="/usr/bin/cgexec")
    assert why == "" and cgroups is not None
    assert cgroups.version == 1
    assert cgroups.folders == {"memory": tmp_path / "memory" / "node", "pids": tmp_path / "pids"}
    job = JobCgroup(cgroups, "hubnet-job-1")
    job.create(memory_bytes=64 << 20, max_tasks=18)
    assert (tmp_path / "pids" / "hubnet-job-1" / "pids.max").read_text() == "18"
    assert (tmp_path / "memory" / "node" / "hubnet-job-1" / "memory.limit_in_bytes").read_text() == str(
        64 << 20
    )
    assert job.cgexec_args() == [
        "/usr/bin/cgexec",
        "-g",
        "memory:/node/hubnet-job-1",
        "-g",
        "pids:/hubnet-job-1",
        "--",
    ]


def test_no_cgexec_or_no_cgroups_is_said(tmp_path: Path) -> None:
    mountinfo, own = _v1_tree(tmp_path)
    assert probe_cgroups(mountinfo=mountinfo, self_cgroup=own, cgexec="") == (
        None,
        "cgexec is not installed (apt-get install cgroup-tools)",
    )
    assert probe_cgroups(mountinfo="", self_cgroup="0::/\n", cgexec="cgexec")[0] is None


def _v2_tree(tmp_path: Path, members: str) -> tuple[str, str, Path]:
    own = tmp_path / "user.slice" / "hubnode.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(members)
    return f"40 1 0:30 / {tmp_path} rw - cgroup2 cgroup2 rw\n", "0::/user.slice/hubnode.service\n", own


def test_cgroup_v2_a_node_alone_in_its_delegated_cgroup_moves_into_a_leaf(tmp_path: Path) -> None:
    mountinfo, own, folder = _v2_tree(tmp_path, "4242\n")
    probe = {"mountinfo": mountinfo, "self_cgroup": own, "pid": 4242, "cgexec": "cgexec"}
    assert probe_cgroups(**probe)[0] is None  # without adopt: nothing moved, nothing used
    cgroups, why = probe_cgroups(**probe, adopt=True)
    assert why == "" and cgroups is not None and cgroups.version == 2
    assert (folder / "hubnet-node" / "cgroup.procs").read_text() == "4242\n"
    assert (folder / "cgroup.subtree_control").read_text() == "+memory +pids"
    job = JobCgroup(cgroups, "hubnet-job-2")
    job.create(memory_bytes=1 << 20, max_tasks=5)
    assert (folder / "hubnet-job-2" / "memory.max").read_text() == str(1 << 20)
    assert job.cgexec_args() == ["cgexec", "-g", "memory,pids:/user.slice/hubnode.service/hubnet-job-2", "--"]


def test_cgroup_v2_shared_with_other_processes_is_left_alone(tmp_path: Path) -> None:
    mountinfo, own, folder = _v2_tree(tmp_path, "4242\n17\n")
    cgroups, why = probe_cgroups(mountinfo=mountinfo, self_cgroup=own, pid=4242, cgexec="cgexec", adopt=True)
    assert cgroups is None and "shared with other processes" in why
    assert not (folder / "hubnet-node").exists()


def test_a_program_under_tmp_is_shown_in_the_jobs_own_tmp() -> None:
    args = bwrap_args("bwrap", Isolation(), "/tmp/w", tmp_size=1, program="/tmp/tools/bin/run")
    text = " ".join(args)
    assert "--perms 0755 --dir /tmp/tools --ro-bind /tmp/tools/bin /tmp/tools/bin" in text


def test_a_node_sweeps_the_job_cgroups_of_dead_nodes_only(tmp_path: Path) -> None:
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    for name in (f"hubnet-job-{dead}-a", f"hubnet-job-{os.getpid()}-b", "other"):
        (tmp_path / name).mkdir()
    cgroups = Cgroups(1, {"pids": tmp_path}, {"pids": "/"}, "cgexec")
    assert sweep_cgroups(cgroups) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"hubnet-job-{os.getpid()}-b", "other"]
