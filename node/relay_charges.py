"""What relaying costs: the relay's decisions about charging a reservation's holder, no I/O.

A relay with `price_per_mib > 0` charges the node that holds the reservation (the private
node, which earns from the calls relayed to it) for the bytes its circuits carry, from
that node's account in the relay's ledger. The driver (`node.relay.Relay`) only sequences
these: at Reserve, `circuit_hold` must find the account able to cover one circuit (else
the reservation is refused); at each Linked it holds `circuit_hold`'s amount; at the
circuit's end it settles `circuit_cost` of the bytes spliced and releases the rest.

A circuit holds the price of its whole byte limit (in started MiB) and is cut at that
limit, so it can never cost more than was held. Its cost is the price times the bytes it
carried (both directions together, the caller's and the target's ciphertext), rounded up
to the millisatoshi: `ceil(price_per_mib * bytes / 2**20)`. A circuit that carried
nothing costs 0. A free relay (price 0) holds and charges nothing.
"""

from __future__ import annotations

from hubnet.node.relay_protocol import RefusalCode, Refused
from hubnet.node.services import RelayConfig

MIB = 1 << 20


def circuit_hold(config: RelayConfig, available: int) -> int | Refused:
    """What one circuit holds of its target's account (0 at a free relay), or the refusal
    for an account of `available` msat that cannot cover it."""
    needed = config.price_per_mib * _ceil_div(config.max_circuit_bytes, MIB)
    if needed <= available:
        return needed
    has = f"your balance here is {available} msat" if available else "you have no balance here"
    return Refused(
        RefusalCode.PAYMENT_REQUIRED,
        f"this relay charges {config.price_per_mib} msat per MiB relayed and holds {needed} msat "
        f"for each circuit (its limit of {config.max_circuit_bytes} bytes); {has}: ask the relay's "
        "operator to credit you (hubnode ledger credit) or deposit ecash (hubnode deposit)",
        needed,
    )


def circuit_cost(config: RelayConfig, carried: int, held: int) -> int:
    """What a circuit that carried `carried` bytes costs its target: never above `held`."""
    return min(held, _ceil_div(config.price_per_mib * carried, MIB))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
