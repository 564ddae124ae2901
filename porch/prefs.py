"""Network preferences: data interfaces, discovery port, beacon interval, static peers, key.

Each value comes from the first of: a command-line flag, a PORCH_* environment variable, the
prefs file (flat TOML), the default. The file is $PORCH_PREFS, else /etc/porch/prefs.toml for
root, else $XDG_CONFIG_HOME/porch/prefs.toml (default ~/.config/porch/prefs.toml).
With no prefs at all Porch binds and discovers on loopback only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from porch.errors import UsageError

DEFAULT_DISCOVERY_PORT = 5557
DEFAULT_BEACON_INTERVAL_S = 1.0
MIN_BEACON_INTERVAL_S = 0.05
MAX_BEACON_INTERVAL_S = 60.0

ENV = {
    "interfaces": "PORCH_INTERFACE",
    "discovery_port": "PORCH_DISCOVERY_PORT",
    "beacon_interval_s": "PORCH_BEACON_INTERVAL",
    "peers": "PORCH_PEERS",
    "key_file": "PORCH_KEY_FILE",
    "broadcast": "PORCH_BROADCAST",
}
FLAGS = {
    "interfaces": "--interface",
    "discovery_port": "--discovery-port",
    "beacon_interval_s": "--beacon-interval",
    "peers": "--peer",
    "key_file": "--key-file",
    "insecure": "--insecure",
    "broadcast": "--broadcast/--no-broadcast",
}


class PrefsError(UsageError):
    """A preference has a wrong type or value; the message names where it came from."""


@dataclass(frozen=True)
class Prefs:
    """The effective network preferences."""

    interfaces: tuple[str, ...] = ()  # empty: loopback
    discovery_port: int = DEFAULT_DISCOVERY_PORT
    beacon_interval_s: float = DEFAULT_BEACON_INTERVAL_S
    peers: tuple[str, ...] = ()
    key_file: str | None = None
    insecure: bool = False
    broadcast: bool = True


KEYS = tuple(f.name for f in fields(Prefs))
# A checked preference: what one field of Prefs holds. Unchecked ones (a flag's, a file's or a
# variable's value) are `object` until their check (CHECKS) has read them.
Value = tuple[str, ...] | int | float | str | bool | None


@dataclass(frozen=True)
class Effective:
    """Preferences plus where each value came from: default, file, env VAR or flag."""

    prefs: Prefs
    sources: dict[str, str]
    path: Path


def prefs_path(env: Mapping[str, str] | None = None) -> Path:
    """The prefs file: $PORCH_PREFS, /etc/porch/prefs.toml as root, else the user config dir."""
    env = os.environ if env is None else env
    if env.get("PORCH_PREFS"):
        return Path(env["PORCH_PREFS"]).expanduser()
    if os.geteuid() == 0:
        return Path("/etc/porch/prefs.toml")
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "porch" / "prefs.toml"


# ---- checking one value ------------------------------------------------------------------


def parse_peer(text: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port); PrefsError when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise PrefsError(f"peer must be host:port with a port 1-65535, got {text!r}")
    return host, int(port)


def _names(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PrefsError(f"{where}: must be a list of strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _peers(value: object, where: str) -> tuple[str, ...]:
    peers = _names(value, where)
    for peer in peers:
        try:
            parse_peer(peer)
        except PrefsError as exc:
            raise PrefsError(f"{where}: {exc}") from None
    return peers


def _port(value: object, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise PrefsError(f"{where}: must be a port number 1-65535, got {value!r}")
    return value


def _interval(value: object, where: str) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and MIN_BEACON_INTERVAL_S <= value <= MAX_BEACON_INTERVAL_S
    ):
        return float(value)
    raise PrefsError(
        f"{where}: must be seconds between {MIN_BEACON_INTERVAL_S:g} and "
        f"{MAX_BEACON_INTERVAL_S:g}, got {value!r}"
    )


def _path(value: object, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PrefsError(f"{where}: must be a file path, got {value!r}")
    return value


def _flag(value: object, where: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0",
                                                          "false", "no", "off"):  # fmt: skip
        return value.strip().lower() in ("1", "true", "yes", "on")
    if not isinstance(value, bool):
        raise PrefsError(f"{where}: must be true or false, got {value!r}")
    return value


CHECKS: dict[str, Callable[[object, str], Value]] = {
    "interfaces": _names,
    "discovery_port": _port,
    "beacon_interval_s": _interval,
    "peers": _peers,
    "key_file": _path,
    "insecure": _flag,
    "broadcast": _flag,
}


# ---- the layers --------------------------------------------------------------------------


def read_file(path: Path) -> dict[str, Value]:
    """The checked values of a prefs file; {} when it does not exist."""
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PrefsError(f"{path}: cannot read prefs: {exc}") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise PrefsError(f"{path}: {unknown[0]}: unknown key; known: {', '.join(KEYS)}")
    return {key: CHECKS[key](value, f"{path}: {key}") for key, value in raw.items()}


def read_env(env: Mapping[str, str]) -> dict[str, tuple[Value, str]]:
    """The checked values set by PORCH_* variables, each with the variable's name."""
    found = {}
    for key, var in ENV.items():
        if env.get(var, "").strip():
            found[key] = (CHECKS[key](env[var], var), var)
    return found


def resolve(
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Effective:
    """Flags beat environment beats file beats defaults; flags that are None are not given."""
    env = os.environ if env is None else env
    path = prefs_path(env) if path is None else path
    values: dict[str, Value] = {}
    sources = dict.fromkeys(KEYS, "default")
    for key, value in read_file(path).items():
        values[key], sources[key] = value, f"file {path}"
    for key, (value, var) in read_env(env).items():
        values[key], sources[key] = value, f"env {var}"
    for key, given in (flags or {}).items():
        if given is not None and given != ():
            values[key] = CHECKS[key](given, FLAGS[key])
            sources[key] = f"flag {FLAGS[key]}"
    return Effective(_prefs(values), sources, path)


def _prefs(values: Mapping[str, Value]) -> Prefs:
    """Prefs of checked values (each check in CHECKS returns its field's type)."""
    default = Prefs()
    key_file = values.get("key_file")
    return Prefs(
        interfaces=_checked(values, "interfaces", default.interfaces),
        discovery_port=_checked(values, "discovery_port", default.discovery_port),
        beacon_interval_s=_checked(values, "beacon_interval_s", default.beacon_interval_s),
        peers=_checked(values, "peers", default.peers),
        key_file=key_file if isinstance(key_file, str) else None,
        insecure=_checked(values, "insecure", default.insecure),
        broadcast=_checked(values, "broadcast", default.broadcast),
    )


T = TypeVar("T")


def _checked(values: Mapping[str, Value], key: str, default: T) -> T:
    value = values.get(key, default)
    if not isinstance(value, type(default)):  # a check that returns another type: a bug here
        raise TypeError(f"prefs: {key} is {value!r}, not a {type(default).__name__}")
    return value


def write_file(path: Path, updates: Mapping[str, object]) -> dict[str, Value]:
    """Set `updates` in the prefs file (checked first), keeping its other values."""
    values = read_file(path)
    for key, value in updates.items():
        values[key] = CHECKS[key](value, FLAGS[key])
    values = {k: v for k, v in values.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{key} = {_toml(values[key])}\n" for key in KEYS if key in values)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Porch preferences (porch prefs --help)\n" + text, encoding="utf-8")
    tmp.replace(path)
    return values


def _toml(value: Value) -> str:
    """One flat TOML value; JSON strings are valid TOML basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        raise ValueError("a prefs file holds no empty values")
    return "[" + ", ".join(_toml(v) for v in value) + "]"
