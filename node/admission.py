"""Admission and settlement: the node's decisions about a call, with no I/O.

The server's driver only sequences them: `admit` -> Accept (or Reject) -> run the job ->
`settle` -> Exit. A ledger, organisation rules and demand pricing change these two
functions and what they are given, never the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hubnet.identity.errors import PolicyError
from hubnet.identity.keys import fingerprint
from hubnet.node.naming import format_service_id, service_id_for_name
from hubnet.node.protocol import Call, Exit, Reject, RejectCode, Terms, Usage
from hubnet.node.runner import JobOutcome
from hubnet.node.services import NodeConfig, Service

MIB = 1 << 20


@dataclass(frozen=True)
class Occupancy:
    """How full the node is as the call arrives."""

    slot_free: bool  # a job of this service could start now
    queued: int  # calls already waiting for a slot


@dataclass(frozen=True)
class Admitted:
    """A call the node will run: the program's argv and the terms it runs on."""

    service: Service
    argv: list[str]
    terms: Terms


def find_service(config: NodeConfig, service_id: bytes) -> Service | None:
    """The service a call's id names: the service with that id, else the one whose *name*
    has that default id.

    A service with its own `id` (say `espeak-private`, answering to espeak's id) is listed
    by its name, and a caller who types that name sends the name's default id: it must
    reach the service all the same. An exact id always wins, so no service can take
    another's id away by its name.
    """
    service = config.services.get(service_id)
    if service is not None:
        return service
    return next(
        (s for s in config.services.values() if service_id_for_name(s.name) == service_id),
        None,
    )


def admit(call: Call, caller: bytes, config: NodeConfig, occupancy: Occupancy) -> Admitted | Reject:
    """Whether `caller` may run `call` here now, and on what terms.

    `occupancy` must be that of the service `find_service` gives for the call's id.
    """
    service = find_service(config, call.service_id)
    if service is None:
        return Reject(RejectCode.NO_SUCH_SERVICE, f"no service {format_service_id(call.service_id)} here")
    if not service.allows(caller):
        return Reject(RejectCode.NOT_ALLOWED, f"peer {fingerprint(caller)} may not call {service.name}")
    try:
        argv = service.argv(call.args)
    except PolicyError as exc:
        return Reject(RejectCode.BAD_ARGUMENTS, str(exc))
    if not occupancy.slot_free and occupancy.queued >= config.max_queued:
        return Reject(RejectCode.BUSY, "too many calls are waiting; try again later")
    return Admitted(service, argv, terms_for(service))


def terms_for(service: Service) -> Terms:
    """The service's prices, and the most one job can cost under its limits (held up front).

    Stdin has no limit of its own, so its MiB are covered by the hold only as far as the
    output cap is: `settle` never charges more than was held.
    """
    price = service.price
    worst_seconds = math.ceil(service.timeout)
    worst_mib = math.ceil(2 * service.max_output / MIB)
    held = price.per_call + price.per_second * worst_seconds + price.per_mib * worst_mib
    return Terms(price.per_call, price.per_second, price.per_mib, held)


def settle(outcome: JobOutcome, terms: Terms) -> Exit:
    """The Exit for a finished job: its usage, and its cost from the terms (never above the hold).

    A program that never started costs nothing.
    """
    usage = Usage(
        wall_ms=round(outcome.wall_seconds * 1000),
        cpu_ms=round(outcome.cpu_seconds * 1000),
        stdin_bytes=outcome.stdin_bytes,
        stdout_bytes=outcome.stdout_bytes,
        stderr_bytes=outcome.stderr_bytes,
    )
    cost = 0 if outcome.error == "failed-to-start" else min(terms.held, cost_of(usage, terms))
    return Exit(outcome.exit_code, outcome.signal, outcome.error, usage, cost)


def cost_of(usage: Usage, terms: Terms) -> int:
    """Millisatoshi for `usage`: every started millisecond and byte is counted, rounded up."""
    moved = usage.stdin_bytes + usage.stdout_bytes + usage.stderr_bytes
    return (
        terms.per_call
        + _ceil_div(terms.per_second * usage.wall_ms, 1000)
        + _ceil_div(terms.per_mib * moved, MIB)
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
