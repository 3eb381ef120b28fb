"""The serving node's Trio driver: one TCP port, many services.

Each connection is one secure session carrying one request (see `node.protocol`).
Everything the peer sends is checked by the sans-IO machines, and what a call may do
and cost is decided by `node.admission`; this module only sequences (admit -> Start ->
fund and hold -> Accept -> run -> settle -> Exit and receipt) and owns the sockets, the
timeouts, the job slots, the runner and the ledger's transactions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import trio

from hubnet.identity.errors import HubnetError, RemoteProtocolError, TransportError
from hubnet.identity.keys import Identity, encode_peer_id, fingerprint
from hubnet.identity.orgs import RevocationList
from hubnet.identity.secure import SecureStream, accept_secure
from hubnet.identity.session import MAX_BUFFER, MAX_RECEIVE
from hubnet.node.admission import (
    Admitted,
    Occupancy,
    admit,
    find_service,
    payers,
    payment_required,
    settle,
    standing,
)
from hubnet.node.cashier import Cashier
from hubnet.node.connections import (
    MAX_CONNECTIONS,
    PRESSED_WAIT,
    Connection,
    ConnectionTable,
    Phase,
    source_of,
)
from hubnet.node.funding import CallFunding
from hubnet.node.ledger import InsufficientFunds, Ledger, Settlement
from hubnet.node.naming import format_service_id
from hubnet.node.offers import Load
from hubnet.node.pricing import multiplier, scaled
from hubnet.node.protocol import (
    DATA_CHUNK,
    KEEPALIVE,
    MAX_MESSAGE,
    MAX_PEERS,
    MAX_STDIN_WINDOW,
    MAX_TEXT,
    STDIN_WINDOW,
    Accept,
    BalanceReply,
    Call,
    Cancel,
    ConnectionClosed,
    Credit,
    Deposit,
    Event,
    Exit,
    GetBalance,
    GetPeers,
    GetStatus,
    JobConnection,
    ListServices,
    Message,
    PeerInfo,
    Peers,
    ReachStatus,
    Receipt,
    Reject,
    RejectCode,
    Role,
    ServiceInfo,
    Services,
    Start,
    State,
    StatusReply,
    Stderr,
    Stdin,
    StdinEnd,
    Stdout,
)
from hubnet.node.receipts import JobReceipt
from hubnet.node.relay import Relay
from hubnet.node.relay_protocol import is_relay_request
from hubnet.node.runner import Job, JobLimits, JobOutcome, SpawnError
from hubnet.node.sandbox import Confinement, Host, describe_isolation, probe_host
from hubnet.node.services import NodeConfig, Service
from hubnet.node.spare import Spares

log = logging.getLogger("hubnet.node")

# The most a connection's buffers hold, whatever its peer does (docs/running-a-node.md,
# Memory): the session's undecoded input and one batch decrypted from it, the job
# protocol's decoder, the stdin a caller may send ahead of its job, and for each of stdout
# and stderr one read in flight with its message and its frames. Each part is capped where
# it lives; tests/unit/test_memory_bound.py checks the caps.
CONNECTION_BUFFERS = 2 * MAX_BUFFER + 2 * MAX_MESSAGE + MAX_STDIN_WINDOW + 2 * 3 * DATA_CHUNK

# A job's environment is built from nothing: only these come from the node's own.
_PASSED_ENV = ("PATH",)
_CANCELLED_EARLY = Reject(RejectCode.CANCELLED, "the caller cancelled before the job started")


class Node:
    """A node serving `config`'s services as `identity` on one TCP port.

    With a `ledger` a priced call is paid from an account there (held at the start, settled
    at the exit, with a signed receipt); without one (tests of the job path) nothing is held
    or charged, and the Exit only says what the job would have cost.
    """

    # How this machine isolates jobs (`node.sandbox.probe_host`): set by whoever runs the node
    # (`node.run`, which says it at start); if nobody did, the first job probes it.
    host: Host | None = None
    # Where jobs start from a spare already in its cgroup (`node.spare`): set, and run, by
    # whoever runs the node on a host with cgroups; without, each job starts through cgexec.
    spares: Spares | None = None

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        *,
        handshake_timeout: float = 10.0,
        start_timeout: float = 30.0,
        max_connections: int | None = None,
        pressed_wait: float = PRESSED_WAIT,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        # Pay-per-call (node.funding): set by whoever runs the node with an ecash backend.
        self.funding: CallFunding | None = None
        self.identity = identity
        self.handshake_timeout = handshake_timeout
        self.start_timeout = start_timeout
        self.running = 0
        # What `hubnode peers --server` is told: set by whoever runs the node's DHT peer.
        self.peers: Callable[[], Sequence[PeerInfo]] = tuple
        # What `hubnode status` says of reachability and the DHT: set likewise (none without one).
        self.reach_status: Callable[[], ReachStatus | None] = lambda: None
        # The newest revocation lists of the organisations the services rely on: set by whoever
        # keeps them fresh (`node.org_watch.OrgWatch`).
        self.revocations: Callable[[], Mapping[bytes, RevocationList]] = dict
        self.queued = 0
        # Ecash deposits (node.cashier): set by whoever runs the node with `mints` and a ledger.
        self.cashier: Cashier | None = None
        self._last_busy = time.monotonic()  # when a job last ran or waited (the idle price)
        # Connections hold memory and a socket: bounded in all and per source, and those that
        # have not started a job are shed first (node.connections).
        self.connections = ConnectionTable(
            max_connections or config.max_connections or MAX_CONNECTIONS,
            config.max_connections_per_address,
            pressed_wait=pressed_wait,
        )
        # Relay requests come to the same port (node.relay); without [relay] they are refused.
        self.relay = Relay(config.relay, ledger=ledger)
        self._slots = trio.CapacityLimiter(config.max_jobs)
        self._service_slots = {
            sid: trio.CapacityLimiter(svc.max_concurrent) for sid, svc in config.services.items()
        }

    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the config's TCP port and serve forever; `nursery.start` returns the bound addresses."""
        host = self.config.listen_host or None
        listeners = await trio.open_tcp_listeners(self.config.listen_port, host=host)
        task_status.started([listener.socket.getsockname()[:2] for listener in listeners])
        await self.serve_listeners(listeners)

    async def serve_listeners(self, listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> None:
        """Serve every connection that any of `listeners` accepts (TCP ports, relay reservations)."""
        await trio.serve_listeners(self.handle_connection, list(listeners))

    async def handle_connection(self, transport: trio.abc.Stream) -> None:
        """Serve one connection; a misbehaving peer only ends its own connection.

        The connection table may refuse it at once, or shed it later for a newer one while it
        has not started a job (see node.connections)."""
        async with transport:
            tracked = self.connections.admit(*source_of(transport))
            if tracked is None:
                return
            try:
                with tracked.scope:
                    await self._serve(transport, tracked)
            except* trio.TooSlowError:
                # Each call's outcome has a line of its own; how a connection ended is detail.
                log.debug("connection timed out")
            except* (HubnetError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
                log.debug("connection ended: %s", "; ".join(str(e) for e in group.exceptions))
            except* Exception:
                # A bug must cost one connection, never the node and every other caller's job.
                log.exception("internal error while serving a connection")
            finally:
                self.connections.release(tracked)

    async def _serve(self, transport: trio.abc.Stream, tracked: Connection | None = None) -> None:
        with self.connections.waiting(tracked, self.handshake_timeout):
            stream, first_data = await accept_secure(transport, self.identity)
        if tracked is not None:
            tracked.phase = Phase.REQUEST
        replayable = bool(first_data)
        if not replayable:
            # Only a relay request comes after the handshake rather than in its first message
            # (which anyone who recorded it can replay): see node.relay_protocol.
            with self.connections.waiting(tracked, self.start_timeout):
                first_data = bytes(await stream.receive_some())
            if is_relay_request(first_data):
                await self.relay.serve(stream, first_data, tracked)
                return
        conn = JobConnection(Role.SERVER)
        request: Event | None = None
        if first_data:  # (an empty feed would mean the end of the stream)
            conn.receive_data(first_data)
            request = conn.next_event()
            if request is not None and conn.buffered and replayable:
                # Anyone who recorded an IK first message can replay it: only the request may
                # ride there, never the Start that proves the caller live.
                raise RemoteProtocolError("only the request may ride in the handshake")
        if request is None:
            with self.connections.waiting(tracked, self.start_timeout):
                request = await _next_event(stream, conn)
        if isinstance(request, ListServices):
            await _reply(stream, conn, self._services())
        elif isinstance(request, GetStatus):
            status = self.status()
            await _reply(stream, conn, status)
            if status.calls:
                # A prober calls the node it chose on this connection, or closes it; until
                # then the connection is still in its REQUEST phase, and sheddable.
                with self.connections.waiting(tracked, self.start_timeout):
                    follow = await _next_event(stream, conn)
                if isinstance(follow, Call):
                    await self._call(stream, conn, follow, tracked)
        elif isinstance(request, GetPeers):
            await _reply(stream, conn, Peers(tuple(self.peers()[:MAX_PEERS])))
        elif isinstance(request, GetBalance):
            await _reply(stream, conn, self.balance_of(stream.remote_identity))
        elif isinstance(request, Call):
            await self._call(stream, conn, request, tracked)
        elif isinstance(request, Deposit):
            if tracked is not None:
                tracked.phase = Phase.ACTIVE  # money is moving: never shed
            await _reply(stream, conn, await self._deposit(request, stream.remote_identity))
        if tracked is not None:
            tracked.phase = Phase.LINGER
        await _linger(stream)

    async def _deposit(self, deposit: Deposit, peer: bytes) -> Receipt | Reject:
        if self.cashier is None:
            return Reject(
                RejectCode.UNTRUSTED_MINT, "this node takes no ecash: its services.toml names no mints"
            )
        # Shielded: a swap cut off half way leaves the token's fate unknown until the next start
        # (node.cashier); the helper's own timeout bounds the wait.
        with trio.CancelScope(shield=True):
            answer = await self.cashier.deposit(deposit.token, peer)
        return answer if isinstance(answer, Reject) else Receipt(answer)

    def balance_of(self, peer: bytes) -> BalanceReply:
        """`peer`'s own account here (nothing, on a node without a ledger)."""
        if self.ledger is None:
            return BalanceReply(0, 0)
        balance = self.ledger.balance(peer)
        return BalanceReply(balance.available, balance.held)

    def multiplier(self, service: Service) -> float:
        """The demand multiplier on `service`'s prices now (node.pricing): what offers carry
        and Accept quotes."""
        busy = self.running + self.queued
        idle_for = 0.0 if busy else time.monotonic() - self._last_busy
        load = Load(self.running, self.queued, self.config.max_jobs)
        return multiplier(service.surge, load, self.config.max_queued, idle_for)

    def status(self) -> StatusReply:
        one, five, fifteen = os.getloadavg()
        reach = self.reach_status()
        # `calls` rides after `reach`, which a node without a DHT (never probed by a
        # discovery) leaves out.
        loads = (one, five, fifteen)
        return StatusReply(self.running, self.queued, self.config.max_jobs, loads, reach, reach is not None)

    def _services(self) -> Services:
        if self.host is None:
            self.host = probe_host()
        host = self.host
        return Services(
            tuple(
                ServiceInfo(
                    svc.name,
                    svc.id,
                    svc.description[:MAX_TEXT],
                    svc.policy.summary()[:MAX_TEXT],
                    describe_isolation(host, svc.isolation)[:MAX_TEXT],
                    _price_now(svc, self.multiplier(svc)),
                    self.multiplier(svc),
                )
                for svc in sorted(self.config.services.values(), key=lambda s: s.name)
            )
        )

    async def _call(
        self, stream: SecureStream, conn: JobConnection, call: Call, tracked: Connection | None = None
    ) -> None:
        peer = stream.remote_identity
        found = find_service(self.config, call.service_id)  # by its id, or by its name's default id
        occupancy = Occupancy(self._slot_free(found.id if found else call.service_id), self.queued)
        proven = standing(call.attestations, peer, int(time.time()), self.revocations())
        factor = self.multiplier(found) if found else 1.0
        admitted = admit(call, peer, self.config, occupancy, proven, factor)
        if isinstance(admitted, Reject):
            # The reasons for these two would only repeat the line's service and caller.
            plain = admitted.code in (RejectCode.NO_SUCH_SERVICE, RejectCode.NOT_ALLOWED)
            log.log(
                logging.WARNING if admitted.code == RejectCode.BUSY else logging.INFO,
                "refused %s from %s: %s%s",
                self._service_name(call.service_id),
                fingerprint(peer),
                admitted.code,
                "" if plain else f" ({admitted.reason})",
            )
            await _reply(stream, conn, admitted)
            return
        # The request may be a replay of a recorded handshake; only the live caller can send Start.
        with self.connections.waiting(tracked, self.start_timeout):
            go = await _next_event(stream, conn)
        if isinstance(go, Cancel):
            log.info(
                "call of %s from %s cancelled before it started", admitted.service.name, fingerprint(peer)
            )
            await _reply(stream, conn, _CANCELLED_EARLY)
            return
        if not isinstance(go, Start):
            log.debug("call of %s from %s abandoned before Start", admitted.service.name, fingerprint(peer))
            return
        if tracked is not None:
            tracked.phase = Phase.ACTIVE  # a live caller: never shed from now on
        job_id = secrets.token_hex(8)
        payment = await self._hold(call, peer, admitted, payers(peer, proven), job_id)
        if isinstance(payment, Reject):
            log.info(
                "refused %s from %s: %s (%s)",
                admitted.service.name,
                fingerprint(peer),
                payment.code,
                payment.reason,
            )
            await _reply(stream, conn, payment)
            return
        caller = _Caller(stream, conn)
        try:
            async with trio.open_nursery() as nursery:
                # From Start on the caller is heard at once: a Cancel or a vanished caller ends the
                # job, or its wait for a slot, even while the job does not read its stdin.
                nursery.start_soon(caller.pump)
                nursery.start_soon(caller.send_credit)
                with caller.waiting:
                    async with self._job_slot(admitted.service):
                        await self._run(caller, admitted, job_id, call, payment)
                nursery.cancel_scope.cancel()
        finally:
            if payment is not None and not caller.settled:
                # Never settled (cancelled while queued, the node stopping): it costs nothing.
                assert self.ledger is not None
                self.ledger.release(job_id, note="the job did not run to its end")
        if caller.left_while_queued is not None:
            with contextlib.suppress(TransportError):
                await caller.reply(_CANCELLED_EARLY)
            log.info(
                "call of %s from %s %s while queued",
                admitted.service.name,
                fingerprint(peer),
                caller.left_while_queued,
            )

    async def _hold(
        self, call: Call, peer: bytes, admitted: Admitted, accounts: Sequence[bytes], job_id: str
    ) -> bytes | Reject | None:
        """Hold the call's worst case from the first of `accounts` that can pay it, after
        letting pay-per-call fund it: the payer, a refusal, or None for a call that holds
        nothing (free, or a node without a ledger)."""
        needed = admitted.terms.held
        if self.ledger is None or needed == 0:
            return None
        if self.funding is not None:
            refused = await self.funding.fund(self.ledger, call, accounts[0], needed)
            if refused is not None:
                return refused
        try:
            payer, _ = self.ledger.hold_first(accounts, job_id, needed)
        except InsufficientFunds as exc:
            return payment_required(admitted.service, needed, exc.available)
        return payer

    def _settle(self, job_id: str, payer: bytes | None, admitted: Admitted, exit: Exit) -> Settlement | None:
        """Charge the job's cost (held: the Exit's cost is never more) and release the rest."""
        if payer is None:
            return None
        assert self.ledger is not None
        return self.ledger.settle(job_id, exit.cost, note=admitted.service.name)

    async def _receipt(
        self, job_id: str, call: Call, peer: bytes, admitted: Admitted, exit: Exit, settlement: Settlement
    ) -> Receipt:
        """The signed receipt for a settled job, with what pay-per-call adds to it."""
        extra = {}
        if self.funding is not None:
            assert self.ledger is not None
            extra = dict(await self.funding.after_settle(self.ledger, call, settlement.account, settlement))
        receipt = JobReceipt(
            job_id=job_id,
            service_id=admitted.service.id,
            service=admitted.service.name,
            caller=peer,
            node=self.identity.public_key,
            payer=settlement.account,
            usage=exit.usage,
            terms=admitted.terms,
            cost=exit.cost,
            balance=settlement.balance,
            time=int(time.time()),
            extra=extra,
        )
        return Receipt(receipt.sign(self.identity))

    def _service_name(self, service_id: bytes) -> str:
        """The service's name for the log; an id this node does not serve has only its hex."""
        service = find_service(self.config, service_id)
        return service.name if service is not None else f"unknown service {format_service_id(service_id)}"

    def _slot_free(self, service_id: bytes) -> bool:
        service_slots = self._service_slots.get(service_id)
        return bool(self._slots.available_tokens and service_slots and service_slots.available_tokens)

    @asynccontextmanager
    async def _job_slot(self, service: Service) -> AsyncIterator[None]:
        self.queued += 1
        try:
            await self._service_slots[service.id].acquire()
        except BaseException:
            self.queued -= 1
            raise
        try:
            async with self._slots:
                self.queued -= 1
                self.running += 1
                try:
                    yield
                finally:
                    self.running -= 1
        finally:
            self._service_slots[service.id].release()
            self._last_busy = time.monotonic()

    async def _run(
        self, caller: _Caller, admitted: Admitted, job_id: str, call: Call, payer: bytes | None
    ) -> None:
        service, peer = admitted.service, caller.stream.remote_identity
        workdir = tempfile.mkdtemp(prefix=f"hubnet-{service.name}-")
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env |= {"LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        env |= dict(service.env)
        env |= {"HUBNET_CLIENT": encode_peer_id(peer), "HUBNET_JOB": job_id, "HUBNET_SERVICE": service.name}
        limits = JobLimits(service.timeout, service.max_output, service.cpu_seconds, service.memory_bytes)
        if self.host is None:
            self.host = probe_host()
        confinement = Confinement(self.host, service.isolation, workdir=workdir, name=job_id)
        job = Job(
            admitted.argv,
            env=env,
            cwd=workdir,
            limits=limits,
            read_size=DATA_CHUNK,
            confinement=confinement,
            spares=self.spares,
        )
        output = _JobOutput(caller.stream, caller.conn)
        started = trio.current_time()
        try:
            caller.job = job  # a Cancel from now on ends this job (at once, if it comes first)
            await caller.reply(Accept(job_id, admitted.terms))
            log.debug("started a call of %s from %s as job %s", service.name, fingerprint(peer), job_id)
            spawn_error = ""
            try:
                outcome = await job.run(caller.stdin, output)
            except SpawnError as exc:
                spawn_error = f": {exc}"
                await output.send_stderr(f"hubnode: {exc}\n".encode())
                outcome = JobOutcome(127, None, "failed-to-start", 0.0, 0.0, 0, 0, 0)
            except BaseException as exc:
                # The runner killed and reaped the job (its output could not be sent, its
                # connection failed, or the node is stopping); it still gets its line.
                stopped = "the connection failed or the node is stopping"
                why = stopped if isinstance(exc, trio.Cancelled) else str(exc) or type(exc).__name__
                elapsed = trio.current_time() - started
                log.info(
                    "job %s %s for %s: killed after %.2fs (%s)",
                    job_id,
                    service.name,
                    fingerprint(peer),
                    elapsed,
                    why,
                )
                raise
            exit_message = settle(outcome, admitted.terms)
            # Settled before the Exit goes out: a caller that vanishes now has still used the job.
            settlement = self._settle(job_id, payer, admitted, exit_message)
            caller.settled = True
            log.log(
                logging.WARNING if spawn_error else logging.INFO,
                "job %s %s for %s: %s%s",
                job_id,
                service.name,
                fingerprint(peer),
                describe_outcome(outcome, exit_message.cost),
                spawn_error,
            )
            if settlement is None:
                await caller.reply(exit_message)
            else:
                receipt = await self._receipt(job_id, call, peer, admitted, exit_message, settlement)
                # One write for both: the caller waits for the receipt of a paid job.
                await caller.stream.send_all(caller.conn.send(exit_message) + caller.conn.send(receipt))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if self.spares is not None:
                # Only now, with the Exit out: making the next spare (three cgroup folders, a
                # fork and exec from a worker thread, which wants the GIL and a core) as the
                # job ended held the Exit back, by 0.5-2 ms of a `true` call in paired runs.
                self.spares.job_ended()


def _price_now(service: Service, factor: float) -> tuple[int, int, int]:
    price = scaled(service.price, factor)
    return (price.per_call, price.per_second, price.per_mib)


def describe_outcome(outcome: JobOutcome, cost: int) -> str:
    """How a job ended, for its log line.

    E.g. `exit 0 after 0.42s, stdin 12 B, stdout 20.1 KiB, stderr 0 B, cost 3 msat`, or
    `signal 9 (timeout) after 1.00s, ...` when hubnet ended it.
    """
    ended = f"exit {outcome.exit_code}" if outcome.signal is None else f"signal {outcome.signal}"
    why = f" ({outcome.error})" if outcome.error else ""
    return (
        f"{ended}{why} after {outcome.wall_seconds:.2f}s, stdin {_size(outcome.stdin_bytes)}, "
        f"stdout {_size(outcome.stdout_bytes)}, stderr {_size(outcome.stderr_bytes)}, cost {cost} msat"
    )


def _size(count: int) -> str:
    if count < 10 * 1024:
        return f"{count} B"
    if count < 10 * 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


class _Caller:
    """The caller's side of a call from Start on: its messages, its stdin and its credit.

    Its messages are read all the time, never held up by the job: stdin goes into a buffer
    that the protocol bounds (the caller may not send more than its window that the job
    has not taken), and credit is granted back as the job takes it. The window is
    STDIN_WINDOW until the job has taken that much: then a bulk stream is under way, and
    the caller gets the rest of the window its Start asked for (`JobConnection.stdin_cap`),
    so that a queued or small call never makes the node hold more.
    """

    def __init__(self, stream: SecureStream, conn: JobConnection) -> None:
        self.stream = stream
        self.conn = conn
        self.job: Job | None = None  # set once the job runs
        self.waiting = trio.CancelScope()  # the wait for a slot, cancelled if the caller goes first
        self.left_while_queued: str | None = None
        self.settled = False  # the job's hold, if any, was settled
        self._stdin_send, stdin_receive = trio.open_memory_channel[bytes](math.inf)
        self.stdin = _CreditedStdin(stdin_receive, self._credit)
        self._uncredited = 0
        self._until_widened = STDIN_WINDOW  # stdin the job takes before the window widens
        self._credit_due = trio.Event()

    async def reply(self, message: Message) -> None:
        await _reply(self.stream, self.conn, message)

    def _end(self, reason: str) -> None:
        if self.job is not None:
            self.job.cancel(reason)
        else:
            self.left_while_queued = reason
            self.waiting.cancel()

    async def pump(self) -> None:
        """Caller -> job: stdin, end of stdin, cancel; a vanished caller ends the job."""
        async with self._stdin_send:
            while True:
                try:
                    event = await _next_event(self.stream, self.conn)
                except TransportError as exc:
                    # A reset (a killed caller with unread data sends one) is as much a vanished
                    # caller as a clean close: end the job the same way, so it is reported.
                    log.debug("caller lost: %s", exc)
                    event = ConnectionClosed()
                except HubnetError:
                    self._end("disconnected")
                    raise
                if isinstance(event, ConnectionClosed):
                    self._end("disconnected")
                    return
                if isinstance(event, Stdin):
                    try:
                        self._stdin_send.send_nowait(event.data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        # The program closed its stdin: the rest is dropped, as a pipe would, and
                        # still credited, so that the caller can finish sending it.
                        self._credit(len(event.data))
                elif isinstance(event, StdinEnd):
                    await self._stdin_send.aclose()
                elif isinstance(event, Cancel):
                    self._end("cancelled")

    def _credit(self, size: int) -> None:
        # Neither the pump nor the job's stdin feeder may wait on the network (a caller that
        # does not read its output would stall its own stdin), so credit goes out from a task
        # of its own, in quarters of the window: the caller always has three quarters left.
        # A quarter of the widest window is at most the first whole window (protocol's
        # MAX_STDIN_WINDOW), so a job that wants more stdin always finds enough sent to earn it.
        self._uncredited += size
        if self._until_widened > 0:
            self._until_widened -= size
            if self._until_widened <= 0:
                self._uncredited += self.conn.stdin_cap - STDIN_WINDOW
        if self._uncredited >= self.conn.stdin_cap // 4:
            self._credit_due.set()

    async def send_credit(self) -> None:
        """Grant the caller the stdin credit the job has earned, for as long as the job runs;
        and an empty Credit every KEEPALIVE seconds, so that the caller knows the node lives."""
        while True:
            size = 0
            with trio.move_on_after(KEEPALIVE):
                await self._credit_due.wait()
                self._credit_due = trio.Event()
                size, self._uncredited = self._uncredited, 0
            if self.conn.our_state is State.RUNNING:
                await self.reply(Credit(size))


class _CreditedStdin(trio.abc.ReceiveChannel[bytes]):
    """The job's stdin: each chunk the runner takes is credited back to the caller."""

    def __init__(self, chunks: trio.MemoryReceiveChannel[bytes], credit: Callable[[int], None]) -> None:
        self._chunks = chunks
        self._credit = credit

    async def receive(self) -> bytes:
        chunk = await self._chunks.receive()
        self._credit(len(chunk))
        return chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()


class _JobOutput:
    """Sends a job's output to the client as protocol messages."""

    def __init__(self, stream: SecureStream, conn: JobConnection) -> None:
        self._stream = stream
        self._conn = conn

    async def send_stdout(self, data: bytes) -> None:
        await self._stream.send_parts(self._conn.send_parts(Stdout(data)))

    async def send_stderr(self, data: bytes) -> None:
        await self._stream.send_parts(self._conn.send_parts(Stderr(data)))


async def _reply(stream: SecureStream, conn: JobConnection, message: Message) -> None:
    await stream.send_all(conn.send(message))


async def _linger(stream: SecureStream, timeout: float = 5.0) -> None:
    """Let the client read our last reply before we close.

    Closing a TCP socket with unread input sends a reset, which can destroy the reply
    still in flight (an Exit after a job that ignored part of its stdin, a Reject that
    crossed the client's stdin). So we half-close and discard input until the client
    closes, for a bounded time.
    """
    transport = stream.transport
    with trio.move_on_after(timeout), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        if isinstance(transport, trio.abc.HalfCloseableStream):
            await transport.send_eof()
        while await transport.receive_some(MAX_RECEIVE):
            pass


async def _next_event(stream: SecureStream, conn: JobConnection) -> Event:
    """The peer's next protocol message, or ConnectionClosed."""
    while (event := conn.next_event()) is None:
        conn.receive_data(await stream.receive_some())
    return event
