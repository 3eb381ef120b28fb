"""The `hubnode` entry point: parse, run, and turn errors into one line and an exit code.

`hubnode call` is what a Pi runs many times a minute, and click alone costs it about
20 ms per start, so the plain forms of `call` are parsed here by hand; anything else
(help, other commands, unusual option spellings) goes to the click CLI in
`hubnet.cli`. `tests/unit/test_main.py` checks that both parse alike.
"""

from __future__ import annotations

import os
import sys

from hubnet.exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, exit_code_for
from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import HubnetError

if TYPE_CHECKING:
    from typing import NoReturn

FastCall = tuple[str | None, bool, str | None, int | None, str, tuple[str, ...], tuple[str, ...]]


def parse_fast_call(argv: list[str]) -> FastCall | None:
    """(home, verbose, server, max_cost, service, args, bootstrap) for a plain `call`, or
    None to let click parse.

    Accepts exactly: [--home DIR] [-v|--verbose] call [--server|-s TARGET | --bootstrap|-b
    TARGET | --max-cost MSAT]... SERVICE [ARGS...], the same forms click accepts, so the
    result never differs, only the cost.
    """
    home = os.environ.get("HUBNET_HOME") or None
    verbose = False
    i = 0
    while i < len(argv) and argv[i] != "call":
        if argv[i] == "--home" and i + 1 < len(argv):
            home = argv[i + 1]
            i += 2
        elif argv[i] in ("-v", "--verbose"):
            verbose = True
            i += 1
        else:
            return None
    i += 1
    server: str | None = None
    max_cost: int | None = None
    bootstrap: tuple[str, ...] = ()
    while i + 1 < len(argv) and argv[i] in ("--server", "-s", "--bootstrap", "-b", "--max-cost"):
        if argv[i] == "--max-cost":
            if not argv[i + 1].isdecimal() or not argv[i + 1].isascii():
                return None  # click says what is wrong with it
            max_cost = int(argv[i + 1])
        elif argv[i] in ("--bootstrap", "-b"):
            bootstrap = (*bootstrap, argv[i + 1])
        else:
            server = argv[i + 1]
        i += 2
    if i >= len(argv) or argv[i].startswith("-"):
        return None
    return home, verbose, server, max_cost, argv[i], tuple(argv[i + 1 :]), bootstrap


def _fail(message: str, code: int) -> NoReturn:
    from hubnet.safe_text import printable

    # An error may quote a node (a Reject's reason, its error text): never raw to the terminal.
    print(f"hubnode: {printable(message)}", file=sys.stderr)
    sys.exit(code)


def _exit_at_once(code: int) -> NoReturn:
    """Exit as `sys.exit` would, without tearing the interpreter down module by module:
    that teardown is a tenth of a small call's cost, and the process ends anyway. The
    exit handlers still run and the output is flushed."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    """Entry point of the `hubnode` command."""
    try:
        fast = parse_fast_call(sys.argv[1:])
        if fast is None:
            from hubnet.cli import run_cli

            run_cli()
        else:
            from hubnet.commands import Context, run_call

            home, verbose, server, max_cost, service, args, bootstrap = fast
            _exit_at_once(
                run_call(Context(home, verbose), server, service, args, bootstrap, max_cost=max_cost)
            )
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except HubnetError as exc:
        _fail(str(exc), exit_code_for(exc))
    except BrokenPipeError:
        # Our reader went away (`| head`): exit as a pipeline expects, without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
