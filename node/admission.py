"""Admission and settlement: the node's decisions about a call, with no I/O.

The server's driver only sequences them: `admit` -> hold the terms' amount in the ledger
(`payers`; `payment_required` if it cannot) -> Accept -> run the job -> `settle` -> settle
the hold in the ledger -> Exit and a receipt. Organisation rules (free_orgs pay nothing)
and demand pricing (the multiplier, node.pricing) change what `admit` quotes; the caller's
ceiling (`Call.max_cost`) is checked against the worst case before anything is held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hubnet.identity.errors import PolicyError
from hubnet.identity.keys import fingerprint
from hubnet.identity.orgs import Attestation, RevocationList, Role, check
from hubnet.identity.records import InvalidRecord
from hubnet.node.naming import format_service_id, service_id_for_name
from hubnet.node.pricing import scaled
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


@dataclass(frozen=True)
class Standing:
    """What a caller's attestations prove: its memberships, and why the others prove nothing."""

    memberships: frozenset[tuple[bytes, Role]] = frozenset()
    refused: tuple[str, ...] = ()


def standing(
    attestations: Sequence[bytes], caller: bytes, now: int, revocations: Mapping[bytes, RevocationList]
) -> Standing:
    """Check the attestations a call carries against its caller, the time and the revocation
    lists the node holds; one that fails counts as none, and the reason is kept to tell."""
    proven: set[tuple[bytes, Role]] = set()
    refused = []
    for raw in attestations:
        try:
            attestation = Attestation.decode(raw)
        except InvalidRecord as exc:
            refused.append(f"an attestation is damaged ({exc})")
            continue
        why = check(attestation, caller, now, revocations.get(attestation.org))
        if why is None:
            proven.add((attestation.org, attestation.role))
        else:
            refused.append(f"your attestation from {fingerprint(attestation.org)} counts for nothing: {why}")
    return Standing(frozenset(proven), tuple(refused))


def admit(
    call: Call,
    caller: bytes,
    config: NodeConfig,
    occupancy: Occupancy,
    standing: Standing = Standing(),
    multiplier: float = 1.0,
) -> Admitted | Reject:
    """Whether `caller` may run `call` here now, and on what terms.

    `occupancy` and `multiplier` (node.pricing) must be those of the service `find_service`
    gives for the call's id, and `standing` what the call's attestations prove (see
    `standing`). Whether the caller can pay the terms' hold is the ledger's to say.
    """
    service = find_service(config, call.service_id)
    if service is None:
        return Reject(RejectCode.NO_SUCH_SERVICE, f"no service {format_service_id(call.service_id)} here")
    if not service.allows(caller, standing.memberships):
        return Reject(RejectCode.NOT_ALLOWED, _not_allowed(service, caller, standing))
    try:
        argv = service.argv(call.args)
    except PolicyError as exc:
        return Reject(RejectCode.BAD_ARGUMENTS, str(exc))
    if not occupancy.slot_free and occupancy.queued >= config.max_queued:
        return Reject(RejectCode.BUSY, "too many calls are waiting; try again later")
    terms = Terms() if service.free_for(standing.memberships) else terms_for(service, multiplier)
    if call.max_cost is not None and terms.held > call.max_cost:
        return Reject(
            RejectCode.TOO_EXPENSIVE,
            f"{service.name} may cost up to {terms.held} msat here now (held up front), "
            f"above your ceiling of {call.max_cost} msat",
            terms.held,
        )
    return Admitted(service, argv, terms)


def payers(caller: bytes, standing: Standing) -> tuple[bytes, ...]:
    """The accounts a call may be paid from, in order: the caller's own, then those of the
    organisations it is a proven member of (an organisation that keeps an account at a node
    pays for its members' calls there)."""
    return (caller, *sorted({org for org, _ in standing.memberships}))


def payment_required(service: Service, needed: int, available: int) -> Reject:
    """The refusal for a caller whose account cannot cover the hold."""
    has = f"your balance here is {available} msat" if available else "you have no balance here"
    return Reject(
        RejectCode.PAYMENT_REQUIRED,
        f"{service.name} needs {needed} msat held up front and {has}; "
        "ask the node's operator to credit you (hubnode ledger credit) or deposit ecash",
        needed,
    )


def _not_allowed(service: Service, caller: bytes, standing: Standing) -> str:
    """Why `caller` may not call `service`: which organisation it would take, and what was wrong
    with the attestations it presented."""
    if not service.allow_orgs:
        return f"peer {fingerprint(caller)} may not call {service.name}"
    needed = " or ".join(
        fingerprint(rule.org) + (f" (as {rule.role.value})" if rule.role else "")
        for rule in service.allow_orgs
    )
    why = f"{service.name} serves members of organisation {needed} only"
    wanted = {rule.org for rule in service.allow_orgs}
    roles = sorted(
        f"{fingerprint(org)} as {role.value}" for org, role in standing.memberships if org in wanted
    )
    if roles:
        return f"{why}; you are a member of {', '.join(roles)}, another role"
    if standing.refused:
        return f"{why}; {'; '.join(standing.refused)}"
    if not standing.memberships:
        return f"{why}, and the call carried no attestation (see `hubnode org join`)"
    return why


def terms_for(service: Service, multiplier: float = 1.0) -> Terms:
    """The service's prices times the demand `multiplier`, and the most one job can cost
    under its limits (held up front).

    Stdin has no limit of its own, so its MiB are covered by the hold only as far as the
    output cap is: `settle` never charges more than was held.
    """
    price = scaled(service.price, multiplier)
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
