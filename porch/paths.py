"""Where porchd keeps its control socket and its files (see docs/supervisor-contract.md).

Environment variables are read at call time, not import time, so tests and callers can change
them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from porch.errors import UsageError

IPC_PREFIX = "ipc://"
SOCKET_NAME = "porchd.sock"
DEFAULT_DAEMON = "default"


def _env_path(name: str) -> Path | None:
    # An empty variable counts as unset, as the XDG spec says.
    value = os.environ.get(name, "")
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def _is_root() -> bool:
    return os.geteuid() == 0


def runtime_dir() -> Path:
    """The folder for sockets: $PORCH_RUNTIME_DIR, $XDG_RUNTIME_DIR/porch, /run/porch or /tmp."""
    explicit = _env_path("PORCH_RUNTIME_DIR")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_RUNTIME_DIR")
    if xdg is not None:
        return xdg / "porch"
    if _is_root():
        return Path("/run/porch")
    return Path(f"/tmp/porch-{os.getuid()}")


MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes on Linux, one of them the NUL


def default_control() -> Path:
    """The default control socket: <runtime>/porchd.sock."""
    return runtime_dir() / SOCKET_NAME


def control_address(value: str | None = None) -> tuple[Path, str]:
    """The control socket's path and ZeroMQ address, from --control, $PORCH_CONTROL or default."""
    if value is None:
        value = os.environ.get("PORCH_CONTROL") or None
    path = default_control() if value is None else _control_path(value)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise UsageError(
            f"control: socket path is {len(os.fsencode(path))} bytes, over the "
            f"{MAX_SOCKET_PATH_BYTES}-byte limit of Unix sockets: {path}; choose a shorter one"
        )
    return path, f"{IPC_PREFIX}{path}"


def _control_path(value: str) -> Path:
    """A path or an ipc:// address as an absolute, normalised path."""
    raw = value[len(IPC_PREFIX) :] if value.startswith(IPC_PREFIX) else value
    if "://" in raw or not raw:
        raise UsageError(f"control: expected a socket path or an ipc:// address, got {value!r}")
    # abspath also normalises ('a/../b'), so one socket always hashes to one state folder.
    return Path(os.path.abspath(os.path.expanduser(raw)))


def state_base() -> Path:
    """The folder all daemons keep state under, before the per-daemon subfolder."""
    explicit = _env_path("PORCH_STATE_DIR")
    if explicit is not None:
        return explicit
    if _is_root():
        return Path("/var/lib/porch")
    xdg = _env_path("XDG_STATE_HOME")
    return (xdg if xdg is not None else Path.home() / ".local" / "state") / "porch"


def daemon_name(control_path: Path) -> str:
    """`default` for the default control socket, else `ctl-<10 hex of sha256(path)>`."""
    path = Path(os.path.abspath(control_path))
    if path == default_control():
        return DEFAULT_DAEMON
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()
    return f"ctl-{digest[:10]}"


def state_dir(control_path: Path) -> Path:
    """The state folder of the daemon behind `control_path` (two sockets never share one)."""
    return state_base() / daemon_name(control_path)


def log_dir(control_path: Path) -> Path:
    """Where that daemon writes `<pipeline>.log`."""
    return state_dir(control_path) / "logs"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and its parents) and make it 0700; refuse one owned by someone else."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(path)
    # /tmp/porch-$UID is guessable: a folder planted there by another user (or a symlink to one)
    # must not hold our sockets and logs. A symlink to a folder of our own is fine.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(
            f"{path}: not a folder owned by this user; remove it or choose another"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path
