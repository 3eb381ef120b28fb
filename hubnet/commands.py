"""What the commands do, apart from how their arguments are parsed.

`hubnet.cli` (click) and the fast path in `hubnet.main` both end here, so a call
parsed either way runs the same code. Nothing here imports click or Trio.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING

from hubnet.identity.errors import ConfigError, TransportError

if TYPE_CHECKING:
    from hubnet.config import ClientConfig
    from hubnet.home import Home
    from hubnet.identity.keys import Identity
    from hubnet.known_hosts import KnownHosts
    from hubnet.node.naming import Target
    from hubnet.select import SelectionRules

_WHY_HUBNET_ENDED = {
    "timeout": "the job ran out of time",
    "output-limit": "the job's output exceeded the server's limit",
    "failed-to-start": "the server could not start the program",
    "cancelled": "the job was cancelled",
}


class Context:
    """The global options: which home, how loud."""

    def __init__(self, home: str | None, verbose: bool = False) -> None:
        self.home_option = home
        self.verbose = verbose

    @cached_property
    def home(self) -> Home:
        from hubnet.home import Home

        return Home.locate(self.home_option)

    @cached_property
    def client_config(self) -> ClientConfig:
        from hubnet.config import load_client_config

        return load_client_config(self.home.client)

    def identity(self) -> Identity:
        from hubnet.identity.keys import load_or_create_identity

        return load_or_create_identity(self.home.identity_key)

    def known_hosts(self) -> KnownHosts:
        from hubnet.known_hosts import KnownHosts

        return KnownHosts(self.home.known_hosts)

    def bootstrap(self, given: tuple[str, ...]) -> tuple[str, ...]:
        """--bootstrap, else client.toml's `bootstrap`."""
        return given or self.client_config.bootstrap

    def selection_rules(self) -> SelectionRules:
        from hubnet.select import parse_selection_rules

        config = self.client_config
        return parse_selection_rules(config.select, source=config.source)

    def target(self, server: str | None, alias_server: str | None = None) -> Target:
        """--server, else the alias's server, else client.toml's `server`."""
        from hubnet.node.naming import Target

        chosen = server or alias_server or self.client_config.server
        if not chosen:
            raise ConfigError("no server: give --server PEER_ID@HOST:PORT or set server in client.toml")
        return Target.parse(chosen)


def run_call(
    ctx: Context, server: str | None, service: str, args: tuple[str, ...], bootstrap: tuple[str, ...] = ()
) -> int:
    """`hubnode call`: run the job, stream its output here, return the exit status to use.

    With a server (--server, the alias's, or client.toml's) the call goes there; without
    one, the service's offers are discovered in the DHT and the best provider is chosen.
    """
    from hubnet.client import finish_call, open_call
    from hubnet.config import load_aliases
    from hubnet.node.naming import resolve_service_ref
    from hubnet.node.protocol import Call

    alias = load_aliases(ctx.home.aliases).get(service)
    alias_server = None
    if alias is not None:
        service, args, alias_server = alias.service, alias.args + args, alias.server
    request = Call(resolve_service_ref(service), args)
    timeout = ctx.client_config.connect_timeout
    if server or alias_server or ctx.client_config.server:
        opened = open_call(
            ctx.target(server, alias_server), ctx.identity(), ctx.known_hosts(), request, timeout=timeout
        )
    else:
        from hubnet.discover import find_offers, open_discovered_call

        offers = find_offers(ctx.identity(), ctx.bootstrap(bootstrap), request.service_id)
        if not offers:
            raise TransportError(f"nobody offers {service} (no valid offer found in the DHT)")
        opened = open_discovered_call(
            ctx.identity(), offers, ctx.selection_rules(), request, timeout=timeout, verbose=ctx.verbose
        )
    stdin_fd = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.fileno()
    exit = finish_call(opened, stdin_fd=stdin_fd).exit
    if exit.error:
        print(f"hubnode: {_WHY_HUBNET_ENDED.get(exit.error, exit.error)}", file=sys.stderr)
    if exit.signal is not None:
        return 128 + exit.signal
    if exit.error and not exit.exit_code:
        # The program may exit 0 just before hubnet's kill lands (e.g. right after overflowing
        # the output cap): its output was still cut short, so never report success.
        return 1
    return exit.exit_code if exit.exit_code is not None else 1
