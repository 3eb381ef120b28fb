"""What the commands do, apart from how their arguments are parsed.

`hubnet.cli` (click) and the fast path in `hubnet.main` both end here, so a call
parsed either way runs the same code. Nothing here imports click or Trio.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from functools import cached_property

from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import ConfigError, HubnetError, NotOffered, Rejected, TransportError
from hubnet.identity.frozen import frozen

if TYPE_CHECKING:
    from pathlib import Path

    from hubnet.call_machine import CallResult
    from hubnet.client import OpenCall
    from hubnet.config import ClientConfig
    from hubnet.dialer import TcpDialer
    from hubnet.discover import Found
    from hubnet.home import Home
    from hubnet.identity.keys import Identity
    from hubnet.known_hosts import KnownHosts
    from hubnet.node.naming import Target
    from hubnet.node.protocol import Call
    from hubnet.node.receipts import JobReceipt
    from hubnet.punching import Punching
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

    def say(self, line: str) -> None:
        """Tell the user `line` on stderr, with -v only."""
        if self.verbose:
            print(f"hubnode: {line}", file=sys.stderr)

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

    def punching(self) -> Punching | None:
        """Whether calls through a relay ask to hole-punch (client.toml's `punch`), with the
        home's record of the targets it failed for; `-v` says how each punch went."""
        if not self.client_config.punch:
            return None
        from hubnet import punching

        announce = (lambda line: print(line, file=sys.stderr)) if self.verbose else None
        return punching.Punching(self.home.data_dir / punching.PUNCH_FILE, announce)

    def call_dialer(self) -> TcpDialer:
        """What a call dials with: relayed addresses punched past when `punching` says so."""
        from hubnet.dialer import TcpDialer

        return TcpDialer(self.punching())

    def known_hosts(self) -> KnownHosts:
        from hubnet.known_hosts import KnownHosts

        return KnownHosts(self.home.known_hosts)

    def bootstrap(self, given: tuple[str, ...]) -> tuple[str, ...]:
        """--bootstrap, else client.toml's `bootstrap`."""
        return given or self.client_config.bootstrap

    def pay(self, given: str | None) -> str:
        """How to pay a node that wants money: `given` (--pay, `pay=`), else client.toml's `pay`."""
        from hubnet.config import PAY_CHOICES

        if given is not None and given not in PAY_CHOICES:
            raise ConfigError(f'pay={given!r}: use "auto" (pay with tokens from `hubnode wallet`) or "never"')
        return given or self.client_config.pay

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


# `call`'s own options, each of which takes a value; hubnode's global options, and whether
# each takes one. Both kinds go before SERVICE (the global ones before the command).
CALL_OPTIONS = ("--server", "-s", "--bootstrap", "-b", "--max-cost")
DEFAULT_TARGET_HELP = "PEER_ID@HOST:PORT pins the server's key; HOST:PORT trusts it on first use."
GLOBAL_OPTIONS = {"--home": True, "-v": False, "--verbose": False}
NO_SERVER = "no server given and no DHT to find one in"  # how hubnet.discover's message starts
CALL_USAGE = (
    "hubnode [-v] [--home DIR] call [--server TARGET] [--bootstrap TARGET] [--max-cost MSAT] "
    "SERVICE [ARGS]..."
)


def run_call(
    ctx: Context,
    server: str | None,
    service: str,
    args: tuple[str, ...],
    bootstrap: tuple[str, ...] = (),
    *,
    max_cost: int | None = None,
    pay: str | None = None,
) -> int:
    """`hubnode call`: run the job, stream its output here, return the exit status to use.

    With a server (--server, the alias's, or client.toml's) the call goes there; without
    one, the service's offers are discovered in the DHT and the best provider is chosen.

    Everything after SERVICE is the remote program's, as after ssh's host: `call espeak
    -v en-us` gives espeak `-v en-us`. So an option of hubnode's typed after SERVICE is
    not an error in itself; but when hubnode then fails the call, the message says where
    the option belongs (see `options_after_service`).
    """
    if service.startswith("-"):
        raise misplaced_option(service, server, bootstrap, args)
    try:
        return _run_call(ctx, server, service, args, bootstrap, max_cost, ctx.pay(pay))
    except HubnetError as exc:
        hint = options_after_service(service, args)
        if hint is not None:
            # "No server and no DHT" is what the misplaced option caused: say only that much of it.
            said = str(exc).partition(":")[0] if str(exc).startswith(NO_SERVER) else str(exc)
            exc.args = (f"{said}; {hint}",)
        raise


@frozen
class ServiceCall:
    """A call as the user named it, resolved: the request, how to name it in messages, and
    the server it goes to (--server, the alias's or client.toml's; None: the DHT decides)."""

    request: Call
    service: str
    label: str
    server: str | None


def service_call(
    ctx: Context, server: str | None, typed: str, args: tuple[str, ...], max_cost: int | None = None
) -> ServiceCall:
    """Resolve `typed` (an alias, a service name or id) and `args` into the request to send,
    with the caller's ceiling (`max_cost`, else client.toml's) for the node to enforce.

    `hubnode call`, `hubnode map` and the Python API all start here, so an alias, the home's
    attestations and the server chosen are the same for each.
    """
    from hubnet.config import load_aliases
    from hubnet.identity.attest_text import read_file
    from hubnet.node.naming import resolve_service_ref
    from hubnet.node.protocol import MAX_CALL_ATTESTATIONS, Call

    service, alias_server = typed, None
    alias = load_aliases(ctx.home.aliases).get(typed)
    if alias is not None:
        service, args, alias_server = alias.service, alias.args + args, alias.server
    label = repr(service) if alias is None else f"{service!r} (alias {typed!r})"
    # The home's organisation attestations go with every call; the node checks them.
    attestations = tuple(record for _, record in read_file(ctx.home.attestations))[:MAX_CALL_ATTESTATIONS]
    if max_cost is None:
        max_cost = ctx.client_config.max_cost
    request = Call(resolve_service_ref(service), args, attestations, max_cost)
    return ServiceCall(request, service, label, server or alias_server or ctx.client_config.server or None)


def open_service_call(
    ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...] = (), *, wait_for_accept: bool = False
) -> OpenCall:
    """Open `planned` on its server, or on the best provider the DHT offers (which waits for
    the Accept, so that a provider that fails first is passed over)."""
    from hubnet.client import open_call

    timeout, timeouts = ctx.client_config.connect_timeout, ctx.client_config.timeouts
    if planned.server:
        return open_call(
            ctx.target(planned.server),
            ctx.identity(),
            ctx.known_hosts(),
            planned.request,
            timeout=timeout,
            timeouts=timeouts,
            wait_for_accept=wait_for_accept,
            dialer=ctx.call_dialer(),
        )
    from hubnet.client import PaymentRequired
    from hubnet.discover import BACKOFF_FILE, Backoff, cached_offers, open_discovered_call

    rules = ctx.selection_rules()
    backoff_file = ctx.home.data_dir / BACKOFF_FILE

    def open_on(found: Found, backoff: Backoff) -> OpenCall:
        return open_discovered_call(
            ctx.identity(),
            found,
            rules,
            planned.request,
            timeout=timeout,
            verbose=ctx.verbose,
            name=planned.label,
            rules_source=ctx.client_config.source,
            backoff=backoff,
            timeouts=timeouts,
            call_dialer=ctx.call_dialer(),
        )

    kept_in = _offers_file(ctx, planned, bootstrap, rules)
    sid = planned.request.service_id
    if kept_in is not None and (kept := cached_offers(kept_in, sid, rules.offer_cache)) is not None:
        found, age = kept
        ctx.say(f"{len(found.offers)} offer(s) kept from a discovery {age:.0f} s ago")
        # The rests as they were before the kept offers were tried: should none of them take
        # the call, the DHT's offers are judged as they would have been without them (what
        # failed here still rests for the calls after this one: both attempts save).
        before = Backoff(backoff_file)
        try:
            return open_on(found, Backoff(backoff_file))
        except PaymentRequired:
            raise  # the caller may pay that provider: its offer stands
        except (TransportError, Rejected, NotOffered):
            from hubnet.offer_cache import forget

            forget(kept_in)
            ctx.say("none of the kept offers took the call: asking the DHT")
        return open_on(discover_offers(ctx, planned, bootstrap, rules, keep_in=kept_in), before)
    return open_on(discover_offers(ctx, planned, bootstrap, rules, keep_in=kept_in), Backoff(backoff_file))


def _offers_file(
    ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...], rules: SelectionRules
) -> Path | None:
    """Where the offers of `planned`'s service are kept between calls (`hubnet.offer_cache`);
    None when the rules keep none, or name organisations (whose revocation lists must be
    fresh), or there is no DHT to ask."""
    given = ctx.bootstrap(bootstrap)
    if rules.offer_cache <= 0 or rules.orgs or not given:
        return None
    from hubnet.offer_cache import cache_name

    return ctx.home.offers / cache_name(planned.request.service_id, given)


def discover_offers(
    ctx: Context,
    planned: ServiceCall,
    bootstrap: tuple[str, ...],
    rules: SelectionRules,
    *,
    keep_in: Path | None = None,
) -> Found:
    """The offers of `planned`'s service in the DHT, and the lists of the organisations
    `rules` name (the offers' records kept in `keep_in` for the next calls); NotOffered if
    there is no offer."""
    from hubnet.discover import find_offers, nobody_offers

    found = find_offers(
        ctx.identity(),
        ctx.bootstrap(bootstrap),
        planned.request.service_id,
        rules.orgs,
        tokens_file=ctx.home.dht_tokens,
        keep_in=keep_in,
    )
    if not found.offers:
        raise nobody_offers(planned.label)
    return found


def open_paid_service_call(
    ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...], pay: str, *, wait_for_accept: bool = False
) -> OpenCall:
    """`open_service_call`, paying with a token from the wallet when `pay` is "auto" and the
    node (named or discovered) wants money (`hubnet.pay`)."""
    if pay == "auto":
        from hubnet.pay import open_paying_call

        return open_paying_call(ctx, planned, bootstrap)
    return open_service_call(ctx, planned, bootstrap, wait_for_accept=wait_for_accept)


@contextlib.contextmanager
def naming_missing_services(ctx: Context, planned: ServiceCall) -> Iterator[None]:
    """A server's "no-such-service" refusal becomes NotOffered with the names it does offer."""
    try:
        yield
    except Rejected as exc:
        if exc.code != "no-such-service" or not planned.server:
            raise
        raise no_such_service(ctx, planned.server, planned.service, planned.label) from None


def _run_call(
    ctx: Context,
    server: str | None,
    typed: str,
    args: tuple[str, ...],
    bootstrap: tuple[str, ...],
    max_cost: int | None,
    pay: str,
) -> int:
    from hubnet.client import finish_call

    planned = service_call(ctx, server, typed, args, max_cost)
    stdin_fd = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.fileno()
    with naming_missing_services(ctx, planned):
        opened = open_paid_service_call(ctx, planned, bootstrap, pay)
        result = finish_call(opened, stdin_fd=stdin_fd)
    keep_call_receipt(ctx, result, token_sent=opened.machine.call.token is not None)
    exit = result.exit
    if exit.error:
        from hubnet.safe_text import printable

        print(f"hubnode: {printable(why_hubnet_ended(exit.error))}", file=sys.stderr)
    if exit.signal is not None:
        return 128 + exit.signal
    if exit.error and not exit.exit_code:
        # The program may exit 0 just before hubnet's kill lands (e.g. right after overflowing
        # the output cap): its output was still cut short, so never report success.
        return 1
    return exit.exit_code if exit.exit_code is not None else 1


def keep_call_receipt(ctx: Context, result: CallResult, *, token_sent: bool = False) -> JobReceipt | None:
    """Check a paid job's receipt and keep it in the home (`hubnet.receipt_spool`, which says
    on stderr what is wrong with a bad or missing one): the receipt if it is good. A free job
    has none. A call that carried a token (`token_sent`) keeps the change the receipt returns
    in the wallet."""
    if result.receipt is None and not result.terms.held:
        return None
    from hubnet.receipt_spool import keep_receipt  # only for paid calls: free ones never load it

    receipt = keep_receipt(ctx.home.data_dir, result, ctx.identity().public_key)
    if receipt is not None and token_sent:
        from hubnet.pay import keep_change

        keep_change(ctx, receipt)
    return receipt


def why_hubnet_ended(error: str) -> str:
    """An Exit's `error` (timeout, output-limit, ...) as a phrase for people."""
    return _WHY_HUBNET_ENDED.get(error, error)


def no_such_service(ctx: Context, server: str, typed: str, label: str | None = None) -> NotOffered:
    """The node `server` has no service `typed`: say so, with the close names it does offer.

    Asks the node for its list (one more round trip, only on this error path); if that
    fails too, the message says how to ask for it.
    """
    from hubnet.client import request
    from hubnet.node.protocol import ListServices, Services

    target = ctx.target(server)
    where = f"no service {label or repr(typed)} on {target.address}"
    try:
        reply = request(
            target,
            ctx.identity(),
            ctx.known_hosts(),
            ListServices(),
            Services,
            timeout=ctx.client_config.connect_timeout,
        )
    except (HubnetError, OSError):
        return NotOffered(
            f"{where}; hubnode services --server {shown_command([server])} lists what it offers"
        )
    return NotOffered(f"{where}; {suggest_names(typed, [s.name for s in reply.services], server)}")


def suggest_names(typed: str, names: list[str], server: str) -> str:
    """What to say after "no service X": the offered names closest to `typed`, or what there is."""
    import difflib

    close = difflib.get_close_matches(typed, names, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(close)}?"
    if not names:
        return "it offers no services"
    if len(names) <= 8:
        return f"it offers {', '.join(sorted(names))}"
    return f"it offers {len(names)} services: hubnode services --server {shown_command([server])} lists them"


def options_after_service(service: str, args: tuple[str, ...]) -> str | None:
    """Where `call`'s own option goes, if one follows SERVICE; None if none does.

    After SERVICE it went to the remote program, so this is said only when hubnode failed
    the call. The long forms always count; `-s` and `-b` only with a value that looks like
    a TARGET (has ':' or '@'), because `espeak -s 150` means espeak's own -s. Nothing after
    `--` counts.
    """
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        name, eq, _ = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in CALL_OPTIONS:
            continue
        moved = list(args[i : i + 1] if eq else args[i : i + 2])
        value = arg.partition("=")[2] if eq else (moved[1] if len(moved) > 1 else "")
        if not name.startswith("--") and not any(c in value for c in ":@"):
            continue
        fix = shown_command(["hubnode", "call", *moved, service, *args[:i], *args[i + len(moved) :]])
        return (
            f"{arg} after {service} went to the remote program, as everything after SERVICE does; "
            f"if it was meant for hubnode, put it before SERVICE: {fix}"
        )
    return None


def misplaced_option(
    option: str, server: str | None, bootstrap: tuple[str, ...], args: tuple[str, ...]
) -> ConfigError:
    """An option where SERVICE should be: hubnode's own (it goes before `call`), or unknown."""
    name = option.partition("=")[0] if option.startswith("--") else option
    given = [*(["--server", server] if server else []), *(w for b in bootstrap for w in ("--bootstrap", b))]
    if name in GLOBAL_OPTIONS:
        takes_value = GLOBAL_OPTIONS[name] and "=" not in option
        moved, rest = [option, *args[:1]] if takes_value else [option], args[1:] if takes_value else args
        fix = shown_command(["hubnode", *moved, "call", *given, *rest])
        return ConfigError(f"{option} is an option of hubnode itself and goes before the command: {fix}")
    import difflib

    close = difflib.get_close_matches(name, [*CALL_OPTIONS, *GLOBAL_OPTIONS], n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"call has no option {option!r}; {hint}usage: {CALL_USAGE}")


def shown_command(words: list[str], limit: int = 300) -> str:
    """`words` as a shell line for a one-line message: quoted, and cut to '...' if long."""
    import shlex

    shown: list[str] = []
    for word in words:
        quoted = shlex.quote(word)
        if "\n" in word or len(" ".join([*shown, quoted])) > limit:
            return " ".join([*shown, "..."])
        shown.append(quoted)
    return " ".join(shown)
