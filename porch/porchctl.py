"""`porchctl`: the command-line client of porchd's control socket.

Requests, replies and their transport are porch/porchd_protocol.py (shared with porchd), as
in docs/supervisor-contract.md. Only this layer turns errors into output: one line on stderr and
exit code 1; tracebacks only with --debug.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from porch import __version__, graph, logfiles, paths
from porch.clierrors import log_options, reporting, seconds_between
from porch.errors import ControlError
from porch.porchd_protocol import TIMEOUT_S, Client, Command, DaemonUnreachable
from porch.porchd_protocol import CommandFailed as CommandFailed  # re-exported for callers

STOP_WAIT_TIMEOUT_S = 30.0
STOP_PING_TIMEOUT_S = 0.5
STOP_POLL_INTERVAL_S = 0.1
MIN_ERROR_WIDTH = 20

HEADERS = (
    "PIPELINE",
    "PID",
    "STATE",
    "UPTIME",
    "ITER",
    "IN",
    "OUT",
    "QUEUE",
    "MSG/S",
    "CPU%",
    "RSS",
    "RESTARTS",
    "LAST ERROR",
)
LEFT_ALIGNED = {"PIPELINE", "STATE", "LAST ERROR"}


# --- formatting (pure) ---


def human_duration(seconds: float | None) -> str:
    """5s, 3m12s, 2h04m, 3d05h; "-" when unknown."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def human_mib(size_bytes: int | None) -> str:
    """A size in MiB with one decimal; "-" when unknown."""
    return "-" if size_bytes is None else f"{size_bytes / 2**20:.1f}MiB"


def _number(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "-"


def _state(pipeline: dict[str, Any]) -> str:
    """The state, and whether a target is unreachable (it is `running`, but cannot send)."""
    state = str(pipeline.get("state", "?"))
    targets = pipeline.get("targets") or []
    if any(isinstance(t, dict) and t.get("state") == "unreachable" for t in targets):
        return f"{state}, target unreachable"
    return state


def _row(pipeline: dict[str, Any]) -> list[str]:
    get = pipeline.get
    return [
        str(get("name", "?")),
        _number(get("pid")),
        _state(pipeline),
        human_duration(get("uptime_s")),
        _number(get("iterations")),
        _number(get("msgs_in")),
        _number(get("msgs_out")),
        _number(get("queue_depth")),
        _number(get("rate_per_s"), ".1f"),
        _number(get("cpu_percent"), ".1f"),
        human_mib(get("rss_bytes")),
        _number(get("restarts")),
        _one_line(_last_column(pipeline)),
    ]


def error_text(pipeline: dict[str, Any]) -> str:
    """The last error as shown: as it is while it keeps the pipeline down, else with its age
    (`3m05s ago: ...`), so a recovered pipeline's old error does not read as its state."""
    error = str(pipeline.get("last_error") or "")
    age = pipeline.get("last_error_age_s")
    if not error or pipeline.get("error_current", True) or not isinstance(age, int | float):
        return error
    return f"{human_duration(age)} ago: {error}"


def _last_column(pipeline: dict[str, Any]) -> str:
    """The error that keeps a pipeline down, else what keeps it from making progress (a
    missing target, a failed source), else an older error with its age."""
    warning = pipeline.get("warning")
    if warning and not (pipeline.get("last_error") and pipeline.get("error_current", True)):
        return f"warning: {warning}"
    return error_text(pipeline)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def format_status(result: dict[str, Any], width: int | None = None) -> str:
    """The `status` result as a table sized to its content; LAST ERROR is cut to `width`."""
    rows = [list(HEADERS), *(_row(p) for p in result.get("pipelines", []))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    if width is not None:
        room = max(MIN_ERROR_WIDTH, width - sum(widths) - 2 * len(widths))
        rows = [[*row[:-1], _truncate(row[-1], room)] for row in rows]
    return "\n".join(_join(row, widths) for row in rows)


TARGET_TROUBLE = ("unreachable", "handshake failing")


def format_targets(result: dict[str, Any], now: float | None = None) -> str:
    """One line per output link that cannot deliver for a reason nothing else shows (its target
    was withdrawn, or refuses our handshake): since when, what it holds (messages); "" when
    there is none. (A target not found yet is in the pipeline's warning.)"""
    now = time.time() if now is None else now
    lines = []
    for pipeline in result.get("pipelines", []):
        for target in pipeline.get("targets") or []:
            if not isinstance(target, dict) or target.get("state") not in TARGET_TROUBLE:
                continue
            since = target.get("since")
            when = ""
            if isinstance(since, int | float):
                clock = time.strftime("%H:%M:%S", time.localtime(since))
                when = f" since {clock} ({human_duration(now - since)})"
            lines.append(f"{pipeline.get('name', '?')} -> {target.get('name', '?')}: "
                         f"{target.get('state', '?')}{when}, {target.get('held', 0):,} "
                         "messages held")  # fmt: skip
    return "\n".join(lines)


REMOTE_HEADERS = ("REMOTE", "HOST", "STATE", "ENDPOINT", "LAST SEEN", "USED")


def format_remote(result: dict[str, Any]) -> str:
    """Remote pipelines (from discovery) as a second table; "" when there are none."""
    remote = result.get("remote") or []
    if not remote:
        return ""
    rows = [list(REMOTE_HEADERS)] + [
        [str(r.get("name", "?")), str(r.get("host", "?")), str(r.get("state", "?")),
         str(r.get("endpoint") or "-"), f"{_number(r.get('last_seen_s'), '.1f')}s ago",
         "yes" if r.get("used") else "no"]
        for r in remote
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(REMOTE_HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def format_discovery(result: dict[str, Any]) -> str:
    """One line about beacons: counts, and what was dropped for which reason."""
    found = (result.get("daemon") or {}).get("discovery")
    if not isinstance(found, dict):
        return ""
    reasons = found.get("rejected") or {}
    dropped = ", ".join(f"{n} {why}" for why, n in reasons.items() if n) or "none"
    keys = found.get("key_ids") or []
    signed = f"signed, key {keys[0]}" if found.get("signed") and keys else "unsigned (no key)"
    if found.get("key_source") == "local":
        signed += " (local secret)"
    silent = found.get("peers_silent") or []
    warning = f"; SILENT static peers: {', '.join(silent)}" if silent else ""
    return (f"discovery: beacons {signed}; sent {found.get('beacons_sent', 0)}, received "
            f"{found.get('beacons_received', 0)}, dropped {found.get('beacons_rejected', 0)} "
            f"({dropped}){warning}")  # fmt: skip


def _join(row: Sequence[str], widths: Sequence[int]) -> str:
    cells = [
        cell.ljust(size) if HEADERS[i] in LEFT_ALIGNED else cell.rjust(size)
        for i, (cell, size) in enumerate(zip(row[:-1], widths, strict=True))
    ]
    return "  ".join([*cells, row[-1]])


def format_reload(result: dict[str, Any]) -> str:
    """One line per kind of change: `added: a, b` ... `unchanged: (none)`."""
    kinds = ("added", "removed", "changed", "unchanged")
    return "\n".join(f"{kind}: {_names(result.get(kind, []))}" for kind in kinds)


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "(none)"


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
    reload. --debug works before or after the command."""
    path, address = paths.control_address(control)
    ctx.obj = Client(address, path, timeout_s)


@porchctl.command(short_help="Show each pipeline's state, counters and last error.")
@log_options(verbose=False)
@click.option("--json", "as_json", is_flag=True, help="Print porchd's reply as JSON.")
@pass_client
@handle_errors
def status(client: Client, as_json: bool) -> None:
    """Show each pipeline: pid, state, uptime, counters, resources, restarts, last error."""
    result = client.call(Command.STATUS)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
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
        click.echo(f"stopping: {_names(result.get('stopping', names))}")
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
    click.echo(f"starting: {_names(result.get('started', names))}")


@porchctl.command(short_help="Restart the named pipelines.")
@log_options(verbose=False)
@click.argument("names", nargs=-1, required=True)
@pass_client
@handle_errors
def restart(client: Client, names: Sequence[str]) -> None:
    """Restart the named pipelines (also resets a failed pipeline's failure count)."""
    result = client.call(Command.RESTART, names=list(names))
    click.echo(f"restarting: {_names(result.get('restarting', names))}")


@porchctl.command(short_help="Re-read the configs; start, stop, restart what changed.")
@log_options(verbose=False)
@pass_client
@handle_errors
def reload(client: Client) -> None:
    """Re-read the configs: start added pipelines, stop removed ones, restart changed ones."""
    click.echo(format_reload(client.call(Command.RELOAD)))


@porchctl.command(short_help="Print the dashboard's address with its token.")
@log_options(verbose=False)
@click.option("--token", "token_only", is_flag=True, help="Print only the token.")
@pass_client
@handle_errors
def dashboard(client: Client, token_only: bool) -> None:
    """Print the dashboard's address with its token (read from porchd's 0600 token file)."""
    http = (client.call(Command.STATUS).get("daemon") or {}).get("http")
    if not isinstance(http, dict) or not http.get("token_file"):
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

    def fetch() -> dict[str, Any]:
        result: dict[str, Any] = client.call(Command.STATUS)
        return result

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
    path = Path(client.call(Command.LOGS, name=name)["path"])
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
