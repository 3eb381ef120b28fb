"""`hubnode`: serve programs to the network, and call them from anywhere.

Only click is imported at start-up; each command imports what it needs, so
`hubnode call` on a Pi never loads Trio. Errors become one line on stderr and an
exit code here, in `main`, and nowhere else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from identity.errors import (
    ConfigError,
    HostKeyMismatch,
    HubnetError,
    PolicyError,
    Rejected,
    RemoteProtocolError,
    TransportError,
)

if TYPE_CHECKING:
    from hubnet.client import Target
    from hubnet.home import Home
    from identity.keys import Identity

# ssh's convention: the tool's own failures (network, protocol, keys) are 255, so a
# script can tell them from the remote program's exit status.
EXIT_TRANSPORT = 255
EXIT_USAGE = 2
# A shell's convention for a command that cannot run (126) or does not exist (127).
EXIT_REFUSED = 126
EXIT_NO_SERVICE = 127
DEFAULT_TARGET_HELP = "PEER_ID@HOST:PORT pins the server's key; HOST:PORT trusts it on first use."


def exit_code_for(error: HubnetError) -> int:
    """The one place where an error becomes an exit status."""
    if isinstance(error, Rejected):
        return EXIT_NO_SERVICE if error.code == "no-such-service" else EXIT_REFUSED
    if isinstance(error, TransportError | RemoteProtocolError | HostKeyMismatch):
        return EXIT_TRANSPORT
    if isinstance(error, ConfigError | PolicyError):
        return EXIT_USAGE
    return 1


class _Context:
    def __init__(self, home: str | None, verbose: bool) -> None:
        self._home_option = home
        self.verbose = verbose

    @property
    def home(self) -> Home:
        from hubnet.home import Home

        return Home.locate(self._home_option)

    def identity(self) -> Identity:
        from identity.keys import load_or_create_identity

        return load_or_create_identity(self.home.identity_key)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"hubnode: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="HUBNET_HOME",
    help="Keep identity.key, services.toml, client.toml and known_hosts in this one folder "
    "(default: the platform's config and data folders). Also $HUBNET_HOME.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log connections and jobs to stderr.")
@click.version_option(package_name="hubnet")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """Run command-line programs on other machines as if they were installed here.

    \b
    On the machine with the program:   hubnode serve
    On the machine that needs it:      echo hi | hubnode call --server PEER_ID@HOST:7070 espeak > hi.wav
    """
    ctx.obj = _Context(home, verbose)


@cli.command("id")
@click.pass_obj
def id_command(obj: _Context) -> None:
    """Print this node's peer id (creating its key on first use)."""
    click.echo(obj.identity().peer_id)


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="Override services.toml's listen address.")
@click.option(
    "--services",
    "services_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Read services from this file instead of the home's services.toml.",
)
@click.pass_obj
def serve(obj: _Context, listen: str | None, services_path: str | None) -> None:
    """Serve the programs in services.toml on one TCP port (default 7070).

    Prints the address to give callers, PEER_ID@HOST:PORT, and runs until interrupted.
    """
    import dataclasses
    import logging
    import signal

    import trio

    from node.naming import parse_hostport
    from node.server import Node
    from node.services import load_services

    logging.basicConfig(level=logging.INFO if obj.verbose else logging.WARNING, format="hubnode: %(message)s")
    log = logging.getLogger("hubnet.node")
    config = load_services(Path(services_path) if services_path else obj.home.services)
    if listen:
        host, port = parse_hostport(listen)
        config = dataclasses.replace(config, listen_host=host, listen_port=port)
    identity = obj.identity()
    node = Node(config, identity)

    async def run() -> None:
        # SIGTERM and SIGINT cancel everything, so every job's process group is killed on the way out.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                addresses = await nursery.start(node.serve)
                for host, port in addresses:
                    shown = f"[{host}]" if ":" in host else host
                    click.echo(
                        f"hubnode: serving {len(config.services)} service(s) "
                        f"on {identity.peer_id}@{shown}:{port}",
                        err=True,
                    )
                sys.stderr.flush()
                async for signum in signals:
                    log.info("stopping on signal %d", signum)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except OSError as exc:
        _fail(f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror or exc}", 1)


def _target(obj: _Context, server: str | None, alias_server: str | None = None) -> Target:
    from hubnet.client import Target
    from hubnet.config import load_client_config

    chosen = server or alias_server or load_client_config(obj.home.client).server
    if not chosen:
        raise click.UsageError("no server: give --server PEER_ID@HOST:PORT or set server in client.toml")
    return Target.parse(chosen)


def _known_hosts(obj: _Context) -> object:
    from hubnet.known_hosts import KnownHosts

    return KnownHosts(obj.home.known_hosts)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.argument("service")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def call(obj: _Context, server: str | None, service: str, args: tuple[str, ...]) -> None:
    """Run SERVICE on a server with ARGS, streaming stdin, stdout and stderr.

    SERVICE is a name, a 32-hex-digit service id or an alias. Exits with the remote
    program's status (128+N if it died of signal N); 255 if the connection or the
    protocol failed; 126 if the server refused the call, 127 if it has no such service.
    """
    from hubnet.client import call as remote_call
    from hubnet.config import load_aliases, load_client_config
    from node.naming import resolve_service_ref
    from node.protocol import Call

    home = obj.home
    alias = load_aliases(home.aliases).get(service)
    alias_server = None
    if alias is not None:
        service, args, alias_server = alias.service, alias.args + args, alias.server
    target = _target(obj, server, alias_server)
    stdin_fd = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.fileno()
    result = remote_call(
        target,
        obj.identity(),
        _known_hosts(obj),  # type: ignore[arg-type]
        Call(resolve_service_ref(service), args),
        stdin_fd=stdin_fd,
        timeout=load_client_config(home.client).connect_timeout,
    )
    exit = result.exit
    if exit.error:
        why = {
            "timeout": "the job ran out of time",
            "output-limit": "the job's output exceeded the server's limit",
        }
        click.echo(f"hubnode: {why.get(exit.error, exit.error)}", err=True)
    sys.exit(128 + exit.signal if exit.signal is not None else exit.exit_code or 0)


@cli.command()
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def services(obj: _Context, server: str | None, as_json: bool) -> None:
    """List the services a server offers and the arguments each accepts."""
    from hubnet.client import request
    from node.naming import format_service_id
    from node.protocol import ListServices, Services

    reply = request(_target(obj, server), obj.identity(), _known_hosts(obj), ListServices())  # type: ignore[arg-type]
    if not isinstance(reply, Services):
        raise RemoteProtocolError("unexpected reply to a service list")
    rows = [
        {
            "name": s.name,
            "id": format_service_id(s.service_id),
            "description": s.description,
            "arguments": s.arguments,
        }
        for s in reply.services
    ]
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<16} {row['id']}  {row['description']}")
        click.echo(f"{'':<16} arguments: {row['arguments']}")


@cli.command()
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: _Context, server: str | None, as_json: bool) -> None:
    """Show how busy a server is: jobs running, queued, capacity, load average."""
    from hubnet.client import request
    from node.protocol import GetStatus, StatusReply

    reply = request(_target(obj, server), obj.identity(), _known_hosts(obj), GetStatus())  # type: ignore[arg-type]
    if not isinstance(reply, StatusReply):
        raise RemoteProtocolError("unexpected reply to a status request")
    if as_json:
        import json

        click.echo(
            json.dumps(
                {
                    "running": reply.running,
                    "queued": reply.queued,
                    "capacity": reply.capacity,
                    "load": list(reply.load),
                }
            )
        )
        return
    load = " ".join(f"{x:.2f}" for x in reply.load)
    click.echo(f"running {reply.running}, queued {reply.queued}, capacity {reply.capacity}, load {load}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--server", "-s", metavar="TARGET", help="Always call this server. " + DEFAULT_TARGET_HELP)
@click.option(
    "--bin-dir",
    type=click.Path(file_okay=False),
    help="Where to put the NAME command (default ~/.local/bin, or HOME/bin with --home).",
)
@click.argument("name")
@click.argument("service")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def alias(
    obj: _Context, server: str | None, bin_dir: str | None, name: str, service: str, args: tuple[str, ...]
) -> None:
    """Make NAME a local command that runs SERVICE with ARGS (plus its own arguments).

    \b
    hubnode alias --server PEER_ID@desktop:7070 netespeak espeak --stdout
    netespeak -v en-us "This was a triumph" > triumph.wav
    """
    import shlex

    from hubnet.config import Alias, save_alias
    from node.naming import resolve_service_ref

    resolve_service_ref(name)  # the same rules as service names: no spaces, slashes or leading dash
    resolve_service_ref(service)
    if server:
        _target(obj, server)  # refuse a malformed server now, not at the first call
    home = obj.home
    save_alias(home.aliases, Alias(name, service, args, server))
    directory = Path(bin_dir) if bin_dir else home.bin_dir
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    hubnode = Path(sys.argv[0]).absolute()
    command = [str(hubnode)] if hubnode.is_file() else [sys.executable, "-m", "hubnet"]
    command += ["--home", str(home.config_dir)] if home.single else []
    script.write_text(
        "#!/bin/sh\n"
        f"# hubnet alias {name}: {shlex.join([service, *args])}\n"
        f'exec {shlex.join(command)} call {shlex.quote(name)} "$@"\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    click.echo(f"hubnode: {name} runs {shlex.join([service, *args])}; command written to {script}", err=True)
    if str(directory) not in os.environ.get("PATH", "").split(os.pathsep):
        click.echo(f"hubnode: add {directory} to PATH to run it by name", err=True)


def main() -> None:
    """Entry point: run the CLI, mapping hubnet errors to one line and an exit code."""
    try:
        cli.main(prog_name="hubnode", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.Abort:
        _fail("interrupted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except HubnetError as exc:
        _fail(str(exc), exit_code_for(exc))
    except BrokenPipeError:
        # Our reader went away (`| head`): exit as a pipeline expects, without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + 13)
