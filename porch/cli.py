"""Command-line interface `porch` (init, validate, run, prefs, keygen); the network options
`porch run` shares with `porchd start` are in porch/cliopts.py.

Only this layer turns errors into output: one clear line on stderr and a documented exit code;
tracebacks only with --debug.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from porch import __version__, logs
from porch.clierrors import log_options, reporting, set_log_level
from porch.cliopts import network_options, network_plan, stop_timeout_option
from porch.config import Problem, Severity, has_errors, validate
from porch.names import name_problem, name_warning
from porch.paths import ensure_private_dir, state_base
from porch.prefs import KEYS, Effective, prefs_path, resolve, write_file

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SCRIPT_TEMPLATE = '''"""Porch script for pipeline {name}: step() runs once per iteration."""


def step(input_data):
    # input_data: None for a source pipeline, else a dict keyed by source pipeline name
    return input_data
'''


handle_errors = reporting("porch")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="porch")
@click.option("--debug", is_flag=True, help="Show tracebacks of porch's own errors; debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show info logs (lifecycle events).")
def porch(debug: bool, verbose: bool) -> None:
    """Porch: distributed Python data pipelines, DPorch-compatible.

    -v and --debug work before or after the command (`porch run -v ...`).
    """
    if debug or verbose:
        set_log_level("debug" if debug else "info")
    else:
        os.environ.setdefault("PORCH_LOG_LEVEL", "warning")  # inherited by the workers
        logs.configure(level="warning")


def _validate_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        why = name_problem(value)
        if why:
            raise click.BadParameter(why)
        awkward = name_warning(value)
        if awkward:
            click.echo(f"porch: warning: {awkward}", err=True)
    return value


@porch.command(short_help="Write a new pipeline config (NAME.json).")
@log_options()
@click.option("-n", "--name", callback=_validate_name, help="Pipeline name (file: NAME.json).")
@click.option(
    "-i",
    "--source-count",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="How many source pipelines send to it.",
)
@click.option("-o", "--target", "targets", multiple=True, help="A target pipeline (repeatable).")
@click.option("-s", "--script", "scripts", multiple=True, help="A script, in order (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
def init(
    name: str | None, source_count: int, targets: Sequence[str], scripts: Sequence[str], force: bool
) -> None:
    """Write a new pipeline config (NAME.json, or config.json without a name)."""
    path = Path(f"{name}.json" if name else "config.json")
    if path.exists() and not force:
        click.echo(f"porch: {path} already exists; pass --force to overwrite it", err=True)
        sys.exit(EXIT_FAILED)
    config = {
        "name": name or "",
        "scripts": list(scripts),
        "source_pipeline_count": source_count,
        "target_pipeline_names": list(targets),
    }
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    click.echo(f"Created: {path.resolve()}")
    for script in scripts:
        script_path = Path(script.replace("\\", "/"))
        if not script_path.exists():
            script_path.parent.mkdir(parents=True, exist_ok=True)
            script_path.write_text(SCRIPT_TEMPLATE.format(name=name or "?"), encoding="utf-8")
            click.echo(f"Created: {script_path.resolve()} (template)")


def _print_problems(problems: Sequence[Problem], err: bool) -> None:
    for problem in problems:
        click.echo(str(problem), err=err)


@porch.command(name="validate", short_help="Check configs and their graph; one line per problem.")
@log_options()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate_cmd(configs: Sequence[str]) -> None:
    """Check config files and the graph they form; one line per problem."""
    _, problems = validate(configs)
    _print_problems(problems, err=False)
    errors = sum(p.severity is Severity.ERROR for p in problems)
    warnings = len(problems) - errors
    if errors:
        click.echo(f"{errors} error(s), {warnings} warning(s) in {len(configs)} file(s)", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"ok: {len(configs)} file(s), {warnings} warning(s)", err=True)


@porch.command(short_help="Run pipelines in the foreground until done or Ctrl+C.")
@log_options()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Source pipelines end their stream after N iterations (then porch exits).",
)
@stop_timeout_option
@network_options
@handle_errors
def run(configs: Sequence[str], iterations: int | None, stop_timeout: float, **net: Any) -> None:
    """Run pipelines in the foreground, one process each; Ctrl+C stops them gracefully.

    Pipelines find targets run elsewhere (another `porch run`, a porchd, another host) by UDP
    discovery; see `porch prefs`.
    """
    from porch.broker import run_origin
    from porch.progress import Progress
    from porch.scaling import run_problems
    from porch.supervisor import ConsoleSink, Supervisor  # zmq is only needed here

    good, problems = validate(configs)
    _print_problems([*problems, *run_problems(good)], err=True)
    if has_errors(problems):
        click.echo("porch: not starting: fix the errors above (see `porch validate`)", err=True)
        sys.exit(EXIT_USAGE)
    network = network_plan(net)
    # durable outboxes are unpickled at start: the folder must be ours, checked like porchd's
    state_dir = ensure_private_dir(state_base() / "run")
    supervisor = Supervisor(
        good,
        ConsoleSink(),
        iterations=iterations,
        stop_timeout_s=stop_timeout,
        state_dir=state_dir,
        network=network,
        origin=run_origin(),
    )
    progress = Progress(sys.stderr, live=_live_terminal())
    progress.attach(supervisor)
    supervisor.install_signals()
    try:
        code = supervisor.run()
    finally:
        progress.finish()
    sys.exit(code)


def _live_terminal() -> bool:
    """Whether `porch run` draws a progress footer: stdout and stderr on a real terminal."""
    return sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


# ---- porch prefs -----------------------------------------------------------------------------


@porch.command(name="prefs", short_help="Show or set the network preferences.")
@log_options()
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="NAME|ADDRESS",
    help="Set the data interface(s) (repeatable; replaces the list).",
)
@click.option("--discovery-port", type=int, default=None, help="Set the discovery UDP port.")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="Set the static peers (repeatable; replaces the list).",
)
@click.option(
    "--beacon-interval",
    "beacon_interval_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Set the seconds between beacons.",
)
@click.option("--key-file", default=None, metavar="PATH", help="Set the cluster key file.")
@click.option(
    "--insecure/--no-insecure",
    default=None,
    help="Allow (or forbid) non-loopback networking without a cluster key.",
)
@click.option(
    "--broadcast/--no-broadcast",
    default=None,
    help="Send beacons to broadcast addresses (or to static peers only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the effective values as JSON.")
@handle_errors
def prefs_cmd(as_json: bool, **updates: Any) -> None:  # fmt: skip
    """Show the network preferences and where each comes from; with options, set them.

    The file is $PORCH_PREFS, else /etc/porch/prefs.toml for root, else
    ~/.config/porch/prefs.toml. Flags of `porch run`/`porchd start` beat PORCH_* environment
    variables, which beat the file.
    """
    changes = {k: list(v) if isinstance(v, tuple) else v for k, v in updates.items()
               if v is not None and v != ()}  # fmt: skip
    effective = resolve({})
    if changes:
        write_file(effective.path, changes)
        click.echo(f"saved: {effective.path}", err=True)
        effective = resolve({})
    click.echo(_format_prefs(effective, as_json))


def _format_prefs(effective: Effective, as_json: bool) -> str:
    values = {key: _shown(getattr(effective.prefs, key)) for key in KEYS}
    if not effective.prefs.interfaces:
        values["interfaces"] = "(loopback)"
    if as_json:
        found = {k: {"value": getattr(effective.prefs, k), "source": effective.sources[k]}
                 for k in KEYS}  # fmt: skip
        return json.dumps({"path": str(effective.path), "prefs": found}, indent=2, default=list)
    width = max(len(k) for k in KEYS)
    value_width = max(len(v) for v in values.values())
    lines = [f"# {effective.path}"]
    lines += [f"{k.ljust(width)}  {values[k].ljust(value_width)}  ({effective.sources[k]})"
              for k in KEYS]  # fmt: skip
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---- porch keygen ----------------------------------------------------------------------------

ROTATIONS = {
    "add": "rotation step 1: add a new key, accepted but not used yet",
    "promote": "rotation step 2: the newest key signs and serves; the old one is still accepted",
    "retire": "rotation step 3: drop every key but the current one",
}


@porch.command(short_help="Write a new cluster key file, or rotate its keys.")
@log_options()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing key file with a new key.")
@click.option("--add", "step", flag_value="add", help=ROTATIONS["add"].capitalize() + ".")
@click.option("--promote", "step", flag_value="promote",
              help=ROTATIONS["promote"].capitalize() + ".")  # fmt: skip
@click.option("--retire", "step", flag_value="retire", help=ROTATIONS["retire"].capitalize() + ".")
@handle_errors
def keygen(path: str | None, force: bool, step: str | None) -> None:
    """Write a new cluster key file (mode 0600), or rotate the keys of one.

    PATH defaults to cluster.key next to the prefs file. Copy the file to every host and pass
    it to `porch run`/`porchd start` with --key-file (or PORCH_KEY_FILE, or `porch prefs
    --key-file`). Rotate without downtime: --add, copy everywhere and restart each porchd;
    --promote, copy and restart; --retire, copy and restart.
    """
    from porch import security

    target = Path(path).expanduser() if path else security.default_key_path(prefs_path())
    if step is None:
        ring = security.KeyRing((security.new_key(),))
        security.write_keyring(target, ring, replace=force)
        what = f"new cluster key {ring.current.id}"
    else:
        old = security.read_keyring(target)
        ring = getattr(old, step)()
        security.write_keyring(target, ring, replace=True)
        what = f"{ROTATIONS[step]}; current key {ring.current.id}, accepted {', '.join(ring.ids)}"
    click.echo(f"wrote {target} (mode 0600): {what}")
    click.echo(f"use it on every host: --key-file {target} (or PORCH_KEY_FILE)", err=True)


def main() -> None:
    """Entry point of `porch`."""
    porch(prog_name="porch")
