"""`hubnode map`: GNU parallel over the network. Inputs in, one job each, across every provider.

    hubnode map sha256sum ::: *.iso                  # each file is a job's stdin
    hubnode map speak --stdout {} ::: hello world     # {} and friends take the input itself

Each input becomes a `hubnet.fanout.Job`; `hubnet.fanout.FanOut` spreads them over the
service's providers as `hubnet.schedule` decides; this module does what GNU parallel's
users expect around it: substitution (`{}` `{.}` `{/}` `{//}` `{/.}`), output in input order
(`--keep-order`) or as it finishes, `--results DIR`, the `--joblog` (GNU parallel's columns,
then the provider and the cost), `--resume`, a progress bar on a terminal, and the exit
status (the number of failed inputs, at most 101).
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trio

from hubnet.call_machine import DEFAULT_MAX_OUTPUT
from hubnet.commands import Context, service_call
from hubnet.fanout import FanOut, Job, Settled, places_for, provider_text
from hubnet.identity.errors import ConfigError
from hubnet.safe_text import printable
from hubnet.schedule import ProviderAvoided, Scheduler
from hubnet.trio_api import Payer, client_for

MAX_FAILED_STATUS = 101  # GNU parallel's cap: 101 means "101 or more failed"
SEPARATOR = ":::"
_REPLACEMENT = re.compile(r"\{(|\.|/|//|/\.)\}")
JOBLOG_COLUMNS = (
    "Seq",
    "Host",
    "Starttime",
    "JobRuntime",
    "Send",
    "Receive",
    "Exitval",
    "Signal",
    "Command",
    "Provider",
    "Cost",
)
NO_EXIT = -1  # the joblog's Exitval for an input that never got one (no provider ran it to the end)


@dataclass(frozen=True)
class MapOptions:
    servers: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    jobs: int | None = None
    retries: int = 0
    redundancy: int = 1
    max_cost: int | None = None
    keep_order: bool = False
    results: Path | None = None
    joblog: Path | None = None
    resume: bool = False
    timeout: float | None = None
    max_output: int | None = DEFAULT_MAX_OUTPUT
    pay: str | None = None


def split_inputs(words: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """ARGS ::: INPUT... -> (ARGS, INPUTS); INPUTS None when there is no `:::`."""
    if SEPARATOR not in words:
        return tuple(words), None
    at = list(words).index(SEPARATOR)
    return tuple(words[:at]), tuple(words[at + 1 :])


def read_inputs(source: str) -> tuple[str, ...]:
    """`--inputs-from`: one input per line of FILE (`-`: stdin); empty lines are skipped."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--inputs-from {source}: cannot read it: {exc}") from exc
    return tuple(line for line in text.splitlines() if line)


def substitute(arg: str, text: str) -> str:
    """GNU parallel's replacement strings in `arg`: {} the input, {.} without its extension,
    {/} its base name, {//} its folder, {/.} its base name without extension."""
    path = Path(text)

    def one(match: re.Match[str]) -> str:
        kind = match[1]
        if kind == ".":
            return text[: -len(path.suffix)] if path.suffix else text
        if kind == "/":
            return path.name
        if kind == "//":
            return str(path.parent)
        if kind == "/.":
            return path.stem
        return text

    return _REPLACEMENT.sub(one, arg)


def jobs_for(args: Sequence[str], inputs: Sequence[str]) -> list[Job]:
    """One job per input: substituted into ARGS if they have a replacement string, else the
    input is a file fed as stdin (read at each attempt, so that a retry can send it again)."""
    if any(_REPLACEMENT.search(arg) for arg in args):
        return [Job(tuple(substitute(arg, text) for arg in args)) for text in inputs]
    missing = [text for text in inputs if not Path(text).is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} input(s) are not readable files, e.g. {missing[0]!r}: each input is fed to "
            "a job as its stdin unless ARGS contain {} (or {.} {/} {//} {/.})"
        )
    return [Job(tuple(args), Path(text)) for text in inputs]


def finished_in_joblog(path: Path) -> set[int]:
    """The Seq of every input the joblog says is finished (what `--resume` skips)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--joblog {path}: cannot read it: {exc}") from exc
    done = set()
    for line in lines[1:]:
        field = line.split("\t", 1)[0]
        if field.isdigit():
            done.add(int(field))
    return done


class JobLog:
    """GNU parallel's joblog, then the provider and the cost: a line per input as it settles,
    flushed at once, so that a run cut short (Ctrl-C, a crash) leaves a log `--resume` trusts."""

    def __init__(self, path: Path, resume: bool) -> None:
        fresh = not resume or not path.exists() or path.stat().st_size == 0
        try:
            self.file: IO[str] = path.open("w" if fresh else "a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--joblog {path}: cannot write it: {exc}") from exc
        if fresh:
            self.file.write("\t".join(JOBLOG_COLUMNS) + "\n")
            self.file.flush()

    def write(self, seq: int, settled: Settled, command: str) -> None:
        attempt = settled.attempt
        result = settled.result
        exit_code = NO_EXIT if result is None or result.exit_code is None else result.exit_code
        signal = 0 if result is None or result.signal is None else result.signal
        received = 0 if result is None else len(result.stdout) + len(result.stderr)
        row = [
            str(seq),
            settled.address or ":",
            f"{attempt.started_at:.3f}" if attempt else f"{time.time():.3f}",
            f"{attempt.runtime:.3f}" if attempt else "0.000",
            str(attempt.sent if attempt else 0),
            str(received),
            str(exit_code),
            str(signal),
            command,
            provider_text(attempt.provider) if attempt else "",
            str(settled.cost),
        ]
        self.file.write("\t".join(field.replace("\t", " ").replace("\n", " ") for field in row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Outputs:
    """Where each settled input's output goes: stdout and stderr (as they finish, or in input
    order), or files under --results."""

    def __init__(self, keep_order: bool, results: Path | None, first_seq: int) -> None:
        self.keep_order = keep_order
        self.results = results
        self._next = first_seq
        self._held: dict[int, Settled | None] = {}
        self._names: set[str] = set()
        if results is not None:
            try:
                results.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--results {results}: cannot make it: {exc}") from exc

    def skip(self, seq: int) -> None:
        """`seq` has no output in this run (resumed): order moves past it."""
        self._held[seq] = None
        self._flush()

    def put(self, seq: int, settled: Settled, name: str) -> None:
        if self.results is not None:
            self._to_files(settled, name)
            return
        self._held[seq] = settled
        if self.keep_order:
            self._flush()
        else:
            self._held.pop(seq)
            _emit(settled)

    def _flush(self) -> None:
        while self._next in self._held:
            settled = self._held.pop(self._next)
            if settled is not None and self.results is None:
                _emit(settled)
            self._next += 1

    def _to_files(self, settled: Settled, name: str) -> None:
        """DIR/NAME.stdout, .stderr, .exit; NAME from the input (a second input of one name
        gets its Seq appended)."""
        assert self.results is not None
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name or name).lstrip(".") or "input"
        if safe in self._names:
            safe = f"{safe}.{settled.seq}"
        self._names.add(safe)
        result = settled.result
        (self.results / f"{safe}.stdout").write_bytes(result.stdout if result else b"")
        (self.results / f"{safe}.stderr").write_bytes(result.stderr if result else settled.reason.encode())
        status = "" if result is None or result.exit_code is None else str(result.exit_code)
        (self.results / f"{safe}.exit").write_text(status + "\n", encoding="utf-8")


def _emit(settled: Settled) -> None:
    result = settled.result
    if result is not None:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.buffer.flush()
    if not settled.ok:
        print(f"hubnode: input {settled.seq} failed: {printable(settled.reason or 'exit')}", file=sys.stderr)


class Progress:
    """A progress bar on stderr when it is a terminal (tqdm, imported only here), else one
    summary line at the end."""

    def __init__(self, total: int, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.started = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]
            except ImportError:  # the `map` extra is not installed: the summary line alone
                return
            self.bar = tqdm(total=total, file=sys.stderr, unit="job", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is None:
            return
        s = self.scheduler
        self.bar.set_postfix_str(
            f"running {s.running}, failed {s.failed_inputs}, retried {s.retried}, "
            f"providers {s.providers_in_use}/{s.providers_left}, cost {s.spent} msat",
            refresh=False,
        )
        self.bar.update(s.done_inputs + s.failed_inputs - self.bar.n)

    def close(self, skipped: int, avoided: list[ProviderAvoided]) -> None:
        if self.bar is not None:
            self.update()
            self.bar.close()
        s = self.scheduler
        print(
            f"hubnode: map: {s.done_inputs} done, {s.failed_inputs} failed, {s.retried} retried, "
            f"{skipped} skipped (resumed), {len(avoided)} provider(s) avoided, {s.spent} msat, "
            f"{time.monotonic() - self.started:.1f}s",
            file=sys.stderr,
        )
        for event in avoided:
            print(f"hubnode: avoided {provider_text(event.provider)}: {event.reason}", file=sys.stderr)


def run_map(
    ctx: Context, service: str, words: Sequence[str], inputs_from: str | None, options: MapOptions
) -> int:
    """`hubnode map`: run every input, report, and return GNU parallel's exit status."""
    args, inputs = split_inputs(words)
    if inputs is None and inputs_from is None:
        raise ConfigError(
            f"no inputs: give them after {SEPARATOR} (hubnode map SERVICE ::: A B) or --inputs-from FILE"
        )
    every = (inputs or ()) + (read_inputs(inputs_from) if inputs_from is not None else ())
    jobs = jobs_for(args, every)
    server = options.servers[0] if len(options.servers) == 1 else None
    planned = service_call(ctx, server, service, ())
    payer = Payer(ctx, planned.label, auto=ctx.pay(options.pay) == "auto")
    places = places_for(ctx, planned, options.bootstrap, options.servers)
    scheduler = Scheduler(
        (),
        jobs=options.jobs,
        retries=options.retries,
        redundancy=options.redundancy,
        max_cost=options.max_cost,
    )
    done_before = finished_in_joblog(options.joblog) if options.resume and options.joblog else set()
    joblog = JobLog(options.joblog, options.resume) if options.joblog else None
    outputs = Outputs(options.keep_order, options.results, first_seq=1)
    progress = Progress(len(jobs) - len(done_before & set(range(1, len(jobs) + 1))), scheduler)
    avoided: list[ProviderAvoided] = []
    words_of = [planned.service, *planned.request.args]

    def command(seq: int) -> str:
        job = jobs[seq - 1]
        line = " ".join([*words_of, *job.args])
        return f"{line} < {job.stdin}" if isinstance(job.stdin, Path) else line

    def settled(result: Settled) -> None:
        outputs.put(result.seq, result, every[result.seq - 1])
        if joblog is not None:
            joblog.write(result.seq, result, command(result.seq))
        progress.update()

    interrupted = False

    async def drive() -> None:
        fanout = FanOut(
            client_for(ctx, named=bool(options.servers) or bool(planned.server)),
            planned.request,
            places,
            scheduler,
            settled,
            timeout=options.timeout,
            max_output=options.max_output,
            avoided=avoided.append,
            payer=payer,
        )
        for seq, job in enumerate(jobs, start=1):
            if seq in done_before:
                outputs.skip(seq)
            else:
                fanout.add(seq, job)
        fanout.close()
        # Ctrl-C cancels the run, as SIGINT and SIGTERM cancel a node's (node.run): the jobs
        # running are ended at their nodes, and the interrupt is then reported. Left to Trio,
        # the KeyboardInterrupt could land inside its own machinery, which then ended the run
        # with an internal error instead (seen once in tests/e2e/test_map.py's resume test).
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def cancel_at_ctrl_c() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_at_ctrl_c)
                await fanout.run()
                nursery.cancel_scope.cancel()

    try:
        try:
            trio.run(drive)
        except BaseExceptionGroup as group:
            raise _single(group) from None
        if interrupted:
            raise KeyboardInterrupt
    finally:
        if joblog is not None:
            joblog.close()
        progress.close(len(done_before), avoided)
    return min(scheduler.failed_inputs, MAX_FAILED_STATUS)


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error out of the run's nurseries (a closed stdout, an interrupt), as itself, so
    that `hubnet.main` reports it as it reports any error; a group of several stays a group."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group
