"""hubnet: run command-line programs on other machines as if they were installed here.

From Python (see docs/python-api.md):

    import hubnet
    result = hubnet.call("speak", ["Hello Jenny"])            # blocking, no Trio imported
    with hubnet.stream("listen") as job: ...                   # stdin in pieces, stdout as it comes
    result = await hubnet.trio_api.call("speak", ["Hello"])    # Trio, many at once
    with hubnet.Executor() as pool: pool.map("face", photos)   # fan-out over every provider

Names are imported when first used (PEP 562), so `import hubnet` costs nearly nothing
and `hubnode call`, which imports this package too, pays for none of it.
"""

from __future__ import annotations

# Not `typing.TYPE_CHECKING`: importing typing would cost every `hubnode` start (type
# checkers know the name either way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hubnet import trio_api
    from hubnet.api import CallStream, Result, call, stream
    from hubnet.fanout import Executor
    from hubnet.identity.errors import (
        ClosedEarly,
        ConfigError,
        HostKeyMismatch,
        HubnetError,
        NotOffered,
        OutputTooLarge,
        PolicyError,
        Rejected,
        RemoteProtocolError,
        TransportError,
    )

_ERRORS = "hubnet.identity.errors"
_WHERE = {
    "call": "hubnet.api",
    "stream": "hubnet.api",
    "Result": "hubnet.api",
    "CallStream": "hubnet.api",
    "Executor": "hubnet.fanout",
    "HubnetError": _ERRORS,
    "NotOffered": _ERRORS,
    "Rejected": _ERRORS,
    "TransportError": _ERRORS,
    "ClosedEarly": _ERRORS,
    "OutputTooLarge": _ERRORS,
    "RemoteProtocolError": _ERRORS,
    "HostKeyMismatch": _ERRORS,
    "ConfigError": _ERRORS,
    "PolicyError": _ERRORS,
}

__all__ = [
    "CallStream",
    "ClosedEarly",
    "ConfigError",
    "Executor",
    "HostKeyMismatch",
    "HubnetError",
    "NotOffered",
    "OutputTooLarge",
    "PolicyError",
    "Rejected",
    "RemoteProtocolError",
    "Result",
    "TransportError",
    "call",
    "stream",
    "trio_api",
]


def __getattr__(name: str) -> object:
    if name == "trio_api":
        return __import__("hubnet.trio_api", fromlist=["call"])
    if name not in _WHERE:
        raise AttributeError(f"module 'hubnet' has no attribute {name!r}")
    return getattr(__import__(_WHERE[name], fromlist=[name]), name)
