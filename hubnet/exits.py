"""`hubnode`'s exit statuses, and the one place where an error becomes one.

Both entry points import this: `hubnet.main` (which reports every error) and `hubnet.cli`
(click's usage errors). It imports only the error classes, so neither entry point has to
import the other for a constant, and `hubnode call`'s import path stays small.
"""

from __future__ import annotations

from hubnet.identity.errors import (
    ConfigError,
    HostKeyMismatch,
    HubnetError,
    NotOffered,
    PolicyError,
    Rejected,
    RemoteProtocolError,
    TransportError,
)

EXIT_FAILURE = 1
EXIT_USAGE = 2
# A shell's convention for a command that cannot run (126) or does not exist (127): the
# node refused the call; the service is not to be had (no such service on the server,
# nobody in the DHT offers it, or no offer passes client.toml's [select] rules).
EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127
# sysexits' EX_TEMPFAIL: try again later, nothing happened (a node's mint cannot be reached;
# the token is still the caller's).
EXIT_TEMPFAIL = 75
_TEMPORARY_REFUSALS = ("mint-unavailable", "deposit-failed")
# A shell's convention for death by signal N: 128 + N (numbers, not the `signal` module,
# which `hubnode call` would otherwise import for two constants).
EXIT_INTERRUPTED = 128 + 2  # SIGINT
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE
# ssh's convention: the tool's own failures (network, protocol, keys) are 255, so a
# script can tell them from the remote program's exit status.
EXIT_TRANSPORT = 255


def exit_code_for(error: HubnetError) -> int:
    """The exit status for `error`; anything not named here is a plain failure (1).

    The table in docs/getting-started.md ("Exit codes") says the same; keep them in step.
    """
    if isinstance(error, NotOffered):
        return EXIT_NO_SERVICE
    if isinstance(error, Rejected):
        if error.code in _TEMPORARY_REFUSALS:
            return EXIT_TEMPFAIL
        return EXIT_NO_SERVICE if error.code == "no-such-service" else EXIT_REFUSED
    if isinstance(error, TransportError | RemoteProtocolError | HostKeyMismatch):
        return EXIT_TRANSPORT
    if isinstance(error, ConfigError | PolicyError):
        return EXIT_USAGE
    return EXIT_FAILURE
