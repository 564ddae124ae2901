"""`porchd`: the long-lived supervisor of one host (run it under systemd, one per host)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from porch import __version__, logs
from porch.clierrors import log_options
from porch.cliopts import network_options, network_plan, network_prefs, stop_timeout_option
from porch.errors import ConfigError, PorchError

if TYPE_CHECKING:
    from porch.web import HttpPlan


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="porchd")
@click.option("--debug", is_flag=True, help="Debug logs and Porch's own tracebacks.")
def porchd(debug: bool) -> None:
    """porchd: supervise this host's pipelines (see `porchd start --help`).

    `porchd unit` writes a systemd unit for this installation.
    """
    logs.configure(level="debug" if debug else "info")


@porchd.command(short_help="Validate the configs, then run them until stopped.")
@log_options(verbose=False)
@click.argument("configs", nargs=-1, required=True)
@click.option(
    "--control",
    envvar="PORCH_CONTROL",
    default=None,
    help="Control socket: a path or ipc:// address (default: runtime dir).",
)
@click.option(
    "--state-dir",
    default=None,
    help="This daemon's folder for pipeline logs (default: $PORCH_STATE_DIR, "
    "/var/lib/porch or ~/.local/state/porch, plus a per-daemon subfolder).",
)
@stop_timeout_option
@click.option(
    "--http",
    "http_address",
    envvar="PORCH_HTTP",
    default=None,
    metavar="HOST:PORT",
    help="Serve the dashboard, /api/status, /api/graph and /metrics here (e.g. "
    "127.0.0.1:8765) [env PORCH_HTTP]. Loopback unless a cluster key is configured.",
)
@click.option(
    "--http-token",
    envvar="PORCH_HTTP_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Token the HTTP API asks for (Bearer or ?token=) [env PORCH_HTTP_TOKEN; "
    "generated and printed when serving beyond loopback without one].",
)
@network_options
@click.pass_context
def start(
    ctx: click.Context,
    /,
    configs: Sequence[str],
    control: str | None,
    state_dir: str | None,
    stop_timeout: float,
    http_address: str | None,
    http_token: str | None,
    **net: Any,
) -> None:
    """Validate CONFIGS (files, folders of *.json, or glob patterns), then run them until
    stopped.

    porchd is this host's discovery broker: it announces its pipelines by UDP beacons and tells
    its workers where the others' pipelines live (see `porch prefs`).
    """
    from pathlib import Path

    from porch.daemon import Daemon
    from porch.paths import control_address, ensure_private_dir
    from porch.paths import state_dir as default_state_dir

    try:
        control_path, _ = control_address(control)
        ensure_private_dir(control_path.parent)
        state = ensure_private_dir(
            Path(state_dir) if state_dir else default_state_dir(control_path)
        )
        network = network_plan(dict(net))
        http = _http_plan(http_address, http_token, net)
        daemon = Daemon(configs, control_path, state, stop_timeout_s=stop_timeout,
                        network=network, http=http)  # fmt: skip
        for warning in daemon.warnings:
            click.echo(str(warning), err=True)
        if daemon.web is not None:
            click.echo(f"porchd: dashboard at {daemon.web.url}", err=True)
        sys.exit(daemon.serve())
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo("porchd: not starting: fix the errors above (see `porch validate`)", err=True)
        sys.exit(2)
    except (PorchError, OSError) as exc:
        if ctx.find_root().params.get("debug"):
            raise
        click.echo(f"porchd: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))


@porchd.command(short_help="Print a systemd unit for this installation.")
@click.argument("configs", nargs=-1)
@click.option(
    "--user",
    default=None,
    metavar="NAME",
    help="The user porchd runs as (User=) [default: root; the socket is only theirs].",
)
@click.option("--bin-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where porchd and porchctl are [default: this installation's, "
              "beside its Python, else on PATH].")  # fmt: skip
def unit(configs: Sequence[str], user: str | None, bin_dir: str | None) -> None:
    """Print a systemd unit that starts this porchd on CONFIGS (default /etc/porch/pipelines).

    ExecStart= is the porchd of this installation (a virtualenv's too), so the unit passes
    `systemd-analyze verify` where it is written:

    porchd unit /etc/porch/pipelines --user porch > /etc/systemd/system/porchd.service
    """
    import pwd
    from pathlib import Path

    from porch import systemd

    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            click.echo(f"porchd: warning: no user {user!r} on this host yet; create it "
                       "(useradd --system) before starting the unit", err=True)  # fmt: skip
    folder = Path(bin_dir).absolute() if bin_dir else systemd.program_dir()
    absolute = [str(Path(c).absolute()) for c in configs] or list(systemd.DEFAULT_CONFIGS)
    if user is not None:
        program = folder / "porchd"
        needed = [program, systemd.interpreter_of(program), *map(Path, absolute)]
        for why in systemd.unreachable(user, [p for p in needed if p is not None]):
            click.echo(f"porchd: warning: {why}; install Porch (and the configs) where "
                       f"{user} can read them (e.g. a virtualenv in /opt/porch), or run the "
                       "unit as root", err=True)  # fmt: skip
    click.echo(systemd.unit_text(folder, absolute, user), nl=False)


def _http_plan(
    address: str | None, token: str | None, net: Mapping[str, object]
) -> HttpPlan | None:
    """The dashboard's address and token (a web.HttpPlan), or None without --http."""
    if address is None:
        return None
    from porch import web

    return web.plan(address, network_prefs(dict(net)).prefs.key_file, token)


def main() -> None:
    """Entry point of `porchd`."""
    porchd(prog_name="porchd")
