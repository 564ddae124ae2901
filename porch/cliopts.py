"""Command-line options shared by `porch` (porch/cli.py) and `porchd` (porch/porchd.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from porch.clierrors import seconds_between
from porch.prefs import KEYS, Effective, resolve

if TYPE_CHECKING:
    from porch.broker import NetworkPlan

F = TypeVar("F", bound=Callable[..., Any])

MAX_STOP_TIMEOUT_S = 86_400.0  # a day: longer is a stop that never ends

# `porch run --stop-timeout` and `porchd start --stop-timeout`
stop_timeout_option = click.option(
    "--stop-timeout",
    type=float,
    metavar="SECONDS",
    callback=seconds_between(0.1, MAX_STOP_TIMEOUT_S),
    default=10.0,
    show_default=True,
    help="Seconds a pipeline gets to stop gracefully before it is killed.",
)

# ---- network options (porch run, porchd start) ---------------------------------------------

NETWORK_OPTIONS = (
    click.option("--interface", "interfaces", multiple=True, metavar="NAME|ADDRESS",
                 help="Data interface (repeatable); workers bind on the first one's address "
                 "[env PORCH_INTERFACE; default: loopback]."),
    click.option("--discovery-port", type=click.IntRange(1, 65535), default=None,
                 help="UDP port of discovery beacons [env PORCH_DISCOVERY_PORT; default 5557]."),
    click.option("--peer", "peers", multiple=True, metavar="HOST:PORT",
                 help="A static peer that gets our beacons by unicast (repeatable) "
                 "[env PORCH_PEERS, comma-separated]."),
    click.option("--beacon-interval", "beacon_interval_s", type=float, default=None,
                 metavar="SECONDS",
                 help="Seconds between beacons [env PORCH_BEACON_INTERVAL; default 1]."),
    click.option("--key-file", default=None, metavar="PATH",
                 help="Cluster key file from `porch keygen` [env PORCH_KEY_FILE]: signed "
                 "beacons, CURVE-encrypted links, and interfaces other than loopback."),
    click.option("--insecure", is_flag=True, default=None,
                 help="Allow non-loopback interfaces and peers without a cluster key "
                 "(unsigned beacons, unencrypted links)."),
    click.option("--no-broadcast", "broadcast", flag_value=False, default=None,
                 help="Send beacons to static peers only, not to broadcast addresses."),
)  # fmt: skip


def network_options(fn: F) -> F:
    """Add the network options to a command; they arrive as keyword arguments."""
    for option in reversed(NETWORK_OPTIONS):
        fn = option(fn)
    return fn


def network_prefs(options: Mapping[str, object]) -> Effective:
    """Preferences with these flags on top of environment, file and defaults."""
    return resolve({key: options.get(key) for key in KEYS})


def network_plan(options: Mapping[str, object]) -> NetworkPlan:
    """Where to bind and beacon (a broker.NetworkPlan); UsageError when it is not allowed."""
    from porch.broker import plan  # psutil and sockets are only needed here

    return plan(network_prefs(options).prefs)
