"""The Python API, blocking form: `hubnet.call` and `hubnet.stream`, without Trio.

A robot's Python code calls a service as `hubnode call` would, with the same home,
identity, client.toml, aliases and discovery (`hubnet.commands` resolves and opens the
call for both), and gets a `Result` back instead of a process's exit status:

    result = hubnet.call("speak", ["Hello Jenny"])
    play(result.stdout)

The call runs on the caller's thread through the blocking client (`hubnet.client`, one
socket and `poll`); `stream` runs the same client on a thread of its own so that stdin can
be written in pieces while stdout is read as it comes. Both are safe to use from many
threads at once: every call has its own socket and machine. The Trio forms are in
`hubnet.trio_api`, the fan-out in `hubnet.fanout`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO

from hubnet.call_machine import DEFAULT_MAX_OUTPUT, CallResult, CollectedOutput
from hubnet.client import OpenCall, finish_call
from hubnet.commands import (
    Context,
    ServiceCall,
    keep_call_receipt,
    naming_missing_services,
    open_paid_service_call,
    service_call,
)
from hubnet.identity.errors import HubnetError, Rejected, TransportError
from hubnet.identity.keys import encode_peer_id

Stdin = bytes | IO[bytes] | None


@dataclass(frozen=True)
class Result:
    """How a remote job ended and what it wrote.

    `exit_code` when the program exited, `signal` when it was killed; `error` says why
    hubnet ended it (timeout, output-limit, cancelled), None if it did not. `provider` is
    the peer id of the node that ran it; `cost` what the node charged, in millisatoshi;
    `receipt` the node's signed receipt (encoded), if it sent one.
    """

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    provider: str
    cost: int = 0
    receipt: bytes | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The program exited 0 and hubnet did not cut it short."""
        return self.exit_code == 0 and self.error is None

    @classmethod
    def of(cls, result: CallResult, stdout: bytes, stderr: bytes) -> Result:
        exit = result.exit
        provider = encode_peer_id(result.node)  # the key its handshake proved
        return cls(
            stdout, stderr, exit.exit_code, exit.signal, provider, exit.cost, result.receipt, exit.error
        )


def call(
    service: str,
    args: Iterable[str] = (),
    stdin: Stdin = b"",
    *,
    server: str | None = None,
    timeout: float | None = None,
    max_cost: int | None = None,
    home: str | os.PathLike[str] | None = None,
    bootstrap: Iterable[str] = (),
    max_output: int | None = DEFAULT_MAX_OUTPUT,
    pay: str | None = None,
) -> Result:
    """Run `service` with `args` on a node, feed it `stdin` (bytes or a binary file), wait
    for it to exit, and return its output and status.

    `server` (PEER_ID@HOST:PORT, or HOST:PORT) calls that node; without it, as with
    `hubnode call`, the alias's or client.toml's server, else the best provider found in
    the DHT (through `bootstrap` or client.toml's). `timeout` bounds the job in seconds
    (it is cancelled when it passes, and TransportError raised); `max_cost` in
    millisatoshi refuses a node whose terms could charge more. `home` is the client's home
    (default: $HUBNET_HOME, else the platform's folders). `max_output` bounds the stdout and
    stderr kept in memory (256 MiB unless said; None: no bound): a node that sends more ends
    the call with OutputTooLarge (a TransportError); `stream` reads output of any size.
    `pay="auto"` pays a node that refuses the call for want of money with a Cashu token from
    the home's wallet (`hubnode wallet`) and keeps the change, as `hubnode call --pay auto`
    does; "never" does not; None: client.toml's `pay`.

    Raises the project's errors (`hubnet.errors`): NotOffered, Rejected, TransportError,
    RemoteProtocolError, HostKeyMismatch, ConfigError.
    """
    ctx, planned = plan_call(service, args, server, home, max_cost)
    deadline = None if timeout is None else time.monotonic() + timeout
    kept = CollectedOutput(max_output)
    with naming_missing_services(ctx, planned):
        opened = _open(ctx, planned, bootstrap, pay)
        _within_budget(opened, max_cost)
        with _stdin_fd(stdin) as fd:
            finished = finish_call(
                opened, stdin_fd=fd, stdout=kept.add_stdout, stderr=kept.add_stderr, deadline=deadline
            )
    # Checked and kept in the home, with any change, as `hubnode call` does.
    keep_call_receipt(ctx, finished, token_sent=opened.machine.call.token is not None)
    return Result.of(finished, bytes(kept.stdout), bytes(kept.stderr))


def stream(
    service: str,
    args: Iterable[str] = (),
    *,
    server: str | None = None,
    timeout: float | None = None,
    max_cost: int | None = None,
    home: str | os.PathLike[str] | None = None,
    bootstrap: Iterable[str] = (),
    pay: str | None = None,
) -> CallStream:
    """Start `service` and return a `CallStream`: write stdin in pieces, read stdout as the
    job writes it (a robot streaming audio). The call is open (accepted) when this returns;
    the arguments are those of `call`."""
    ctx, planned = plan_call(service, args, server, home, max_cost)
    deadline = None if timeout is None else time.monotonic() + timeout
    with naming_missing_services(ctx, planned):
        opened = _open(ctx, planned, bootstrap, pay)
        _within_budget(opened, max_cost)
    return CallStream(opened, deadline, ctx)


def _open(ctx: Context, planned: ServiceCall, bootstrap: Iterable[str], pay: str | None) -> OpenCall:
    """`planned` opened and accepted, paid for as `pay` (else client.toml's) says."""
    return open_paid_service_call(ctx, planned, tuple(bootstrap), ctx.pay(pay), wait_for_accept=True)


_END = object()  # after the last stdout chunk in a CallStream's queue


class CallStream:
    """A running remote job: `write` its stdin, iterate over its stdout, then `result()`.

    The job is driven by a thread of its own, so writing never waits for reading: stdout
    that is not read yet is kept (as `subprocess.Popen.communicate` keeps it). Used as a
    context manager, leaving the block ends stdin, and leaving it on an exception cancels
    the job.
    """

    def __init__(self, opened: OpenCall, deadline: float | None, ctx: Context) -> None:
        self.provider = provider_of(opened)
        self._opened = opened
        self._ctx = ctx
        self._chunks: queue.SimpleQueue[bytes | object] = queue.SimpleQueue()
        self._stderr = bytearray()
        self._finished: CallResult | None = None
        self._failure: BaseException | None = None
        stdin_read, self._stdin = os.pipe()
        self._thread = threading.Thread(target=self._run, args=(stdin_read, deadline), daemon=True)
        self._thread.start()

    def _run(self, stdin_read: int, deadline: float | None) -> None:
        try:
            self._finished = finish_call(
                self._opened,
                stdin_fd=stdin_read,
                stdout=self._chunks.put,
                stderr=self._stderr.extend,
                deadline=deadline,
            )
        except BaseException as exc:  # handed to the caller's thread by `result`
            self._failure = exc
        finally:
            os.close(stdin_read)
            self._chunks.put(_END)

    def write(self, data: bytes) -> None:
        """Send `data` to the job's stdin (blocking while the node is not taking it).

        Raises TransportError once the job no longer reads (it exited, or the call failed)."""
        if self._stdin < 0:
            raise ValueError("stdin is closed")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._stdin, view) :]
        except BrokenPipeError:
            raise TransportError("the job takes no more stdin: it has ended") from None

    def close_stdin(self) -> None:
        """End the job's stdin (as closing a pipe does); idempotent."""
        if self._stdin >= 0:
            os.close(self._stdin)
            self._stdin = -1

    def __iter__(self) -> Iterator[bytes]:
        """The job's stdout, chunk by chunk as it arrives, until it exits."""
        while (chunk := self._chunks.get()) is not _END:
            assert isinstance(chunk, bytes)
            yield chunk
        self._chunks.put(_END)  # a second loop ends at once too

    def read(self) -> bytes:
        """The rest of the job's stdout, once it exits (end stdin first, or this waits for it)."""
        return b"".join(self)

    def cancel(self) -> None:
        """Stop the job now: the connection is shut, and the node kills the job."""
        self.close_stdin()
        with contextlib.suppress(OSError):
            self._opened.secure.sock.shutdown(2)  # socket.SHUT_RDWR, without importing socket here

    def result(self) -> Result:
        """Wait for the job to exit; its Result (stdout: whatever was not read), or its error."""
        rest = self.read()
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        assert self._finished is not None
        keep_call_receipt(self._ctx, self._finished, token_sent=self._opened.machine.call.token is not None)
        return Result.of(self._finished, rest, bytes(self._stderr))

    def __enter__(self) -> CallStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.cancel()
        self.close_stdin()


def provider_of(opened: OpenCall) -> str:
    """The peer id of the node an open call runs on (authenticated by its handshake)."""
    return encode_peer_id(opened.secure.remote_identity)


def plan_call(
    service: str,
    args: Iterable[str],
    server: str | None,
    home: str | os.PathLike[str] | None,
    max_cost: int | None = None,
) -> tuple[Context, ServiceCall]:
    """The home's context, and `service` with `args` resolved as `hubnode call` resolves them
    (the request carries `max_cost`, else client.toml's, for the node to refuse a dearer job)."""
    if isinstance(args, str):
        raise TypeError("args is a sequence of strings, not one string: call('speak', ['Hello'])")
    ctx = Context(None if home is None else os.fspath(home))
    return ctx, service_call(ctx, server, service, tuple(args), max_cost)


def _within_budget(opened: OpenCall, max_cost: int | None) -> None:
    """Refuse an accepted call whose hold (the most the node may charge) exceeds `max_cost`.

    The Call carried `max_cost`, so an honest node refused such a call before running it;
    this is for one that did not. Its job was started with the Accept's round trip (the
    live caller's Start goes out first), so it is cancelled at once.
    """
    accept = opened.machine.accept
    if max_cost is None or accept is None or accept.terms.held <= max_cost:
        return
    with contextlib.suppress(HubnetError, OSError):
        opened.secure.send_all(opened.machine.cancel())
    opened.secure.close()
    raise too_expensive(opened.target.address, accept.terms.held, max_cost)


def too_expensive(address: object, held: int, max_cost: int) -> Rejected:
    """The refusal of a node at `address` whose Accept holds more than the caller's `max_cost`."""
    return Rejected("too-expensive", f"{address} holds {held} msat for the job, above max_cost {max_cost}")


@contextlib.contextmanager
def _stdin_fd(stdin: Stdin) -> Iterator[int | None]:
    """A descriptor the blocking client can read `stdin` from: a file's own, or a pipe or a
    temporary file holding the bytes (a regular file is always ready for `poll`, and needs no
    thread to feed it)."""
    if stdin is None or stdin == b"":
        yield None
        return
    if isinstance(stdin, bytes | bytearray | memoryview):
        # What fits in a pipe's buffer (64 KiB on Linux) is written whole now: no file, no thread.
        reader, writer = os.pipe()
        os.set_blocking(writer, False)
        try:
            fits = os.write(writer, stdin) == len(stdin)
        except BlockingIOError:
            fits = False
        os.close(writer)
        try:
            if fits:
                yield reader
                return
        finally:
            os.close(reader)
        import tempfile  # only here: it costs a blocking call's import ~3 ms

        with tempfile.TemporaryFile() as held:
            held.write(stdin)
            held.seek(0)
            yield held.fileno()
        return
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd >= 0:
        yield fd
        return
    with _stdin_fd(stdin.read()) as fd_of_copy:  # a file-like object without a descriptor
        yield fd_of_copy
