"""`porchctl`: the command-line client of porchd's control socket.

Requests, replies and their transport are porch/porchd_protocol.py (shared with porchd), as
in docs/supervisor-contract.md; what it prints is porch/porchctl_format.py. Only this layer
turns errors into output: one line on stderr and exit code 1; tracebacks only with --debug.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from porch import __version__, graph, logfiles, paths
from porch.clierrors import log_options, reporting, seconds_between
from porch.config import MAX_REPLICAS
from porch.errors import ControlError
from porch.porchctl_format import (
    format_discovery,
    format_reload,
    format_remote,
    format_status,
    format_targets,
    names_text,
)
from porch.porchctl_format import human_duration as human_duration  # re-exported for callers
from porch.porchctl_format import human_mib as human_mib  # re-exported for callers
from porch.porchd_protocol import TIMEOUT_S, Client, Command, DaemonUnreachable
from porch.porchd_protocol import CommandFailed as CommandFailed  # re-exported for callers
from porch.status import StatusReport

STOP_WAIT_TIMEOUT_S = 30.0
STOP_PING_TIMEOUT_S = 0.5
STOP_POLL_INTERVAL_S = 0.1


# --- CLI ---


handle_errors = reporting("porchctl")


pass_client = click.make_pass_decorator(Client)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="porchctl")
@click.option(
    "--control",
    envvar="PORCH_CONTROL",
    metavar="PATH",
    help="porchd's control socket: a path or an ipc:// address [env PORCH_CONTROL; "
    "default: porchd.sock in the runtime folder].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    callback=seconds_between(0.01, 3600),
    default=TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for porchd's reply.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of porchctl's own errors.")
@click.pass_context
@handle_errors
def porchctl(ctx: click.Context, control: str | None, timeout_s: float, debug: bool) -> None:
    """Control porchd, the Porch supervisor: status, top, graph, logs, start, stop, restart,
    scale, reload. --debug works before or after the command."""
    path, address = paths.control_address(control)
    ctx.obj = Client(address, path, timeout_s)


@porchctl.command(short_help="Show each pipeline's state, counters and last error.")
@log_options(verbose=False)
@click.option("--json", "as_json", is_flag=True, help="Print porchd's reply as JSON.")
@pass_client
@handle_errors
def status(client: Client, as_json: bool) -> None:
    """Show each pipeline: pid, state, uptime, counters, resources, restarts, last error."""
    reply = client.call(Command.STATUS)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    result = StatusReport.decode(reply)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    click.echo(format_status(result, width))
    targets = format_targets(result)
    if targets:
        click.echo("\n" + targets)
    discovery = format_discovery(result)
    if discovery:
        click.echo("\n" + discovery)
    remote = format_remote(result)
    if remote:
        click.echo("\n" + remote)


@porchctl.command(short_help="Stop the named pipelines, or porchd and all of them.")
@log_options(verbose=False)
@click.argument("names", nargs=-1)
@click.option(
    "--wait-timeout",
    "wait_timeout_s",
    type=float,
    callback=seconds_between(0, 86_400),
    default=STOP_WAIT_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Without NAMEs: how long to wait for porchd to exit.",
)
@pass_client
@handle_errors
def stop(client: Client, names: Sequence[str], wait_timeout_s: float) -> None:
    """Stop the named pipelines, or without NAMEs porchd and all its pipelines."""
    if names:
        result = client.call(Command.STOP, names=list(names))
        click.echo(f"stopping: {names_text(result.get('stopping', names))}")
        return
    client.call(Command.STOP, names=[])
    _wait_stopped(client, wait_timeout_s)
    click.echo("porchd stopped")


def _wait_stopped(client: Client, timeout_s: float) -> None:
    prober = Client(client.address, client.path, min(client.timeout_s, STOP_PING_TIMEOUT_S))
    deadline = time.monotonic() + timeout_s
    while not _is_gone(prober):
        if time.monotonic() > deadline:
            raise ControlError(f"porchd at {client.path} is still running after {timeout_s:g}s")
        time.sleep(STOP_POLL_INTERVAL_S)


def _is_gone(prober: Client) -> bool:
    # A porchd busy stopping its pipelines may answer late, but it still accepts connections.
    try:
        prober.call(Command.PING)
    except DaemonUnreachable as exc:
        return not exc.listening
    return False


@porchctl.command(short_help="Start the named (stopped or failed) pipelines.")
@log_options(verbose=False)
@click.argument("names", nargs=-1, required=True)
@pass_client
@handle_errors
def start(client: Client, names: Sequence[str]) -> None:
    """Start the named pipelines (stopped or failed ones)."""
    result = client.call(Command.START, names=list(names))
    click.echo(f"starting: {names_text(result.get('started', names))}")


@porchctl.command(short_help="Restart the named pipelines.")
@log_options(verbose=False)
@click.argument("names", nargs=-1, required=True)
@pass_client
@handle_errors
def restart(client: Client, names: Sequence[str]) -> None:
    """Restart the named pipelines (also resets a failed pipeline's failure count)."""
    result = client.call(Command.RESTART, names=list(names))
    click.echo(f"restarting: {names_text(result.get('restarting', names))}")


@porchctl.command(short_help="Re-read the configs; start, stop, restart what changed.")
@log_options(verbose=False)
@pass_client
@handle_errors
def reload(client: Client) -> None:
    """Re-read the configs: start added pipelines, stop removed ones, restart changed ones."""
    click.echo(format_reload(client.call(Command.RELOAD)))


@porchctl.command(short_help="Run N replicas of a replicated pipeline, without stopping it.")
@log_options(verbose=False)
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=1, max=MAX_REPLICAS))
@pass_client
@handle_errors
def scale(client: Client, name: str, replicas: int) -> None:
    """Run REPLICAS replicas of the pipeline NAME (its config has "replicas"): new ones start
    at once, the highest ones above the count stop gracefully (what they did not acknowledge
    goes to the others). Until `porchctl reload` sees a changed "replicas" in the config."""
    result = client.call(Command.SCALE, name=name, replicas=replicas)
    click.echo(f"{name}: {replicas} replica(s); started: {names_text(result.get('started'))}; "
               f"stopping: {names_text(result.get('stopping'))}")  # fmt: skip


@porchctl.command(short_help="Print the dashboard's address with its token.")
@log_options(verbose=False)
@click.option("--token", "token_only", is_flag=True, help="Print only the token.")
@pass_client
@handle_errors
def dashboard(client: Client, token_only: bool) -> None:
    """Print the dashboard's address with its token (read from porchd's 0600 token file)."""
    http = StatusReport.decode(client.call(Command.STATUS)).daemon.http
    if http is None or not http.get("token_file"):
        raise ControlError("porchd serves no dashboard; start it with --http 127.0.0.1:PORT")
    path = Path(str(http["token_file"]))
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ControlError(f"cannot read the dashboard token {path}: {exc.strerror}") from None
    click.echo(token if token_only else f"{http['url']}?token={token}")


@porchctl.command(name="graph", short_help="Print the pipeline graph with each pipeline's state.")
@log_options(verbose=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(graph.FORMATS),
    default="mermaid",
    show_default=True,
    help="Output format.",
)
@pass_client
@handle_errors
def graph_cmd(client: Client, fmt: str) -> None:
    """Print the pipeline graph with each pipeline's state."""
    nodes = graph.from_result(client.call(Command.GRAPH))
    click.echo(graph.render(nodes, fmt), nl=False)


@porchctl.command(short_help="Live view of rates, queues, CPU/RSS and states.")
@log_options(verbose=False)
@click.option(
    "--interval",
    "interval_s",
    type=float,
    callback=seconds_between(0.1, 3600),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between refreshes.",
)
@pass_client
@handle_errors
def top(client: Client, interval_s: float) -> None:
    """Live view of the pipelines (rates, queues, CPU/RSS, state); q or Ctrl+C quits.

    Without a terminal, prints one frame and exits.
    """
    from porch import top as live

    def fetch() -> StatusReport:
        return StatusReport.decode(client.call(Command.STATUS))

    if not sys.stdout.isatty():
        click.echo(live.print_once(fetch()))
        return
    live.run(fetch, interval_s)


@porchctl.command(short_help="Print a pipeline's output from its log file.")
@log_options(verbose=False)
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl+C.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many of the last lines to print first.",
)
@pass_client
@handle_errors
def logs(client: Client, name: str, follow: bool, lines: int) -> None:
    """Print a pipeline's output (stdout and stderr) from its log file."""
    path = Path(str(client.call(Command.LOGS, name=name).get("path")))
    if not follow:
        for line in logfiles.tail(path, lines):
            click.echo(line)
        return
    # One reader for the backlog and what follows, so no line written in between is lost.
    try:
        for line in logfiles.follow(path, backlog=lines):
            click.echo(line)
    except KeyboardInterrupt:
        return


def main() -> None:
    """Entry point of `porchctl`."""
    porchctl(prog_name="porchctl")
