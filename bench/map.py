#!/usr/bin/env python
"""`hubnode map` and the Python API, beside what a user would reach for instead.

1. Import cost: `python -c pass` (the floor), `import hubnet`, `import hubnet; hubnet.call`
   (the blocking API: no Trio), what `hubnode call` itself imports, and `import
   hubnet.trio_api`; median wall time of whole processes, and the modules they import.
2. Many tiny jobs (`echo N`, --jobs of them) through `hubnode map` over 8 local providers
   (each `hubnode serve` with 4 job slots, every job in its sandbox as by default), against
   GNU parallel running the same command locally (`parallel -j 32`), and against `parallel
   -S` over a private sshd on 127.0.0.1 (bench/_common.ssh_server): jobs per second and
   the wall time per job each adds over the local run.
3. --faces face identifications (`hubnode map face identify`) on 1 provider against 4,
   each provider with one job slot (a desktop doing one identification at a time), every
   result checked: the speed-up. All providers share this machine's cores, printed beside.

    .venv/bin/python bench/map.py [--jobs 1000] [--faces 100]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HUBNODE, PYTHON, BenchError, Server, bytecode_cache, hubnode_server, median, ssh_server

PROVIDERS = 8
SLOTS = 4  # job slots per provider
IMPORT_RUNS = 15
SSH_JOBS = 100  # `parallel -S` runs at most this many (a few per second here)
ECHO_TOML = f"""listen = "127.0.0.1:0"
max_jobs = {SLOTS}

[services.echo]
command = ["echo"]
arguments = {{ positional = 1 }}
"""
FACE_TOML = 'listen = "127.0.0.1:0"\nmax_jobs = 1\n'


def timed(argv: Sequence[str], env: dict[str, str], stdin: bytes | None = None) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(list(argv), input=stdin, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])} ...: exit {done.returncode}: {done.stderr.decode()[-2000:]}")
    return elapsed, done.stdout


# --- 1. import cost ----------------------------------------------------------------------------


def import_cost(env: dict[str, str]) -> None:
    print("import cost (median wall time of a whole process, and what -X importtime counts):")
    cases = {
        "python -c pass (floor)": "pass",
        "import hubnet": "import hubnet",
        "import hubnet; hubnet.call": "import hubnet; hubnet.call",
        "hubnode call's own imports": "import hubnet.main, hubnet.commands, hubnet.client",
        "import hubnet.trio_api": "import hubnet.trio_api",
    }
    # Interleaved rounds (one run of each case per round, the first round untimed), so that a
    # busy moment of a shared machine weighs on every case alike.
    walls: dict[str, list[float]] = {label: [] for label in cases}
    for round_number in range(IMPORT_RUNS + 1):
        for label, code in cases.items():
            wall = timed([PYTHON, "-c", code], env)[0]
            if round_number:
                walls[label].append(wall)
    floor = median(walls["python -c pass (floor)"])
    for label, code in cases.items():
        wall = median(walls[label])
        traced = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", code], capture_output=True, env=env, check=True
        )
        lines = [line for line in traced.stderr.decode().splitlines() if line.startswith("import time:")]
        trio = any(line.rstrip().endswith(" trio") for line in lines)
        print(
            f"  {label:30} {wall * 1000:6.1f} ms  (+{(wall - floor) * 1000:5.1f} ms over the floor; "
            f"{len(lines)} modules imported, trio {'imported' if trio else 'not imported'})"
        )


# --- 2. many tiny jobs --------------------------------------------------------------------------


@contextlib.contextmanager
def providers(
    count: int, toml: str, env: dict[str, str], serve_args: Sequence[str] = ()
) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(hubnode_server(toml, env, serve_args)) for _ in range(count)]


def tiny_jobs(jobs: int, env: dict[str, str]) -> None:
    parallel = shutil.which("parallel")
    if parallel is None:
        raise BenchError("GNU parallel is not installed (Debian: apt-get install parallel)")
    numbers = [str(i) for i in range(jobs)]
    print(f"\n{jobs} tiny jobs (echo N), outputs checked:")
    rates: dict[str, float] = {}  # seconds per job

    def report(label: str, elapsed: float, output: bytes, count: int = jobs) -> None:
        lines = collections.Counter(output.decode().splitlines())
        missing = collections.Counter(numbers[:count]) - lines
        # Extra lines are allowed: a remote login shell may print its own (root's here does).
        if missing:
            raise BenchError(
                f"{label}: {sum(missing.values())} of {count} outputs missing, e.g. {list(missing)[:3]}"
            )
        rates[label] = elapsed / count
        base = rates.get("GNU parallel, local")
        extra = "" if base is None else f", +{(elapsed / count - base) * 1000:6.2f} ms per job over local"
        print(f"  {label:42} {count:5} jobs {elapsed:6.2f} s {count / elapsed:7.1f} jobs/s{extra}")

    slots = PROVIDERS * SLOTS
    elapsed, out = timed([parallel, "-j", str(slots), "echo", ":::", *numbers], env)
    report("GNU parallel, local", elapsed, out)
    with ssh_server() as (sshd, why):
        if sshd is None:
            print(f"  parallel -S over ssh: skipped ({why})")
        else:
            ssh = " ".join(sshd.argv()[:-1])  # the ssh command without its host
            # A login per job, each a remote shell (here root's, whose startup files take their
            # time): at most SSH_JOBS of them, and the rate compared. (--controlmaster, one login
            # for many sessions, lost most outputs here while still exiting 0.)
            argv = [parallel, "--ssh", ssh, "-S", f"{slots}/127.0.0.1", "echo", ":::"]
            count = min(jobs, SSH_JOBS)
            elapsed, out = timed([*argv, *numbers[:count]], env)
            report("parallel -S, private sshd", elapsed, out, count)
    with providers(PROVIDERS, ECHO_TOML, env) as servers:
        client = Path(tempfile.mkdtemp(prefix="hubnet-bench-map-"))
        try:
            targets = [arg for server in servers for arg in ("-s", server.target)]
            argv = [HUBNODE, "--home", str(client), "map", *targets, "echo", "{}", ":::", *numbers]
            timed([HUBNODE, "--home", str(client), "map", *targets, "echo", "{}", ":::", "warm"], env)
            elapsed, out = timed(argv, env)
            report(f"hubnode map, {PROVIDERS} providers x {SLOTS} slots", elapsed, out)
        finally:
            shutil.rmtree(client, ignore_errors=True)
    local = rates["GNU parallel, local"]
    mapped = rates[f"hubnode map, {PROVIDERS} providers x {SLOTS} slots"]
    print(f"  ratio (time per job): hubnode map {mapped / local:.1f}x GNU parallel local", end="")
    over_ssh = next((v for k, v in rates.items() if k.startswith("parallel -S")), None)
    print(f", {mapped / over_ssh:.2f}x parallel -S" if over_ssh else "")


# --- 3. faces, 1 provider against 4 --------------------------------------------------------------


def astronaut_png() -> bytes:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("scikit-image is not installed (the photos extra): no photo to identify")
    return (Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png").read_bytes()


def faces(count: int, env: dict[str, str]) -> None:
    print(f"\n{count} face identifications (hubnode map face identify), one job slot per provider:")
    folder = Path(tempfile.mkdtemp(prefix="hubnet-bench-faces-"))
    try:
        photo = astronaut_png()
        paths = []
        for i in range(count):
            path = folder / f"still{i:03}.png"
            path.write_bytes(photo)
            paths.append(str(path))
        times = {}
        for n in (1, 4):
            with providers(n, FACE_TOML, env, ("--example-services",)) as servers:
                client = folder / f"client{n}"
                targets = [arg for server in servers for arg in ("-s", server.target)]
                timed(
                    [HUBNODE, "--home", str(client), "map", *targets, "face", "identify", ":::", paths[0]],
                    env,
                )
                elapsed, out = timed(
                    [HUBNODE, "--home", str(client), "map", *targets, "face", "identify", ":::", *paths], env
                )
                names = [line.split("\t")[0] for line in out.decode().splitlines()]
                if names != ["unknown"] * count:
                    raise BenchError(f"{n} provider(s): unexpected answers {sorted(set(names))}")
                times[n] = elapsed
                print(f"  {n} provider(s): {elapsed:6.2f} s, {count / elapsed:5.2f} identifications/s")
        cores = os.cpu_count()
        print(f"  speed-up 1 -> 4 providers: {times[1] / times[4]:.2f}x (this machine has {cores} cores)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="tiny jobs (default 1000)")
    parser.add_argument("--faces", type=int, default=100, help="face identifications (default 100)")
    options = parser.parse_args()
    try:
        with bytecode_cache() as env:
            import_cost(env)
            tiny_jobs(options.jobs, env)
            faces(options.faces, env)
    except BenchError as exc:
        print(f"bench/map.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
