"""Where porchd keeps its control socket and its files (see docs/supervisor-contract.md).

Environment variables are read at call time, not import time, so tests and callers can change
them.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
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


class UnsafePathError(UsageError, PermissionError):
    """A folder or file Porch would use is not safe (owned by another user, or open to them)
    or cannot be made."""


def _trusted_owner(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def _own_group(gid: int) -> bool:
    """Whether no user but this one belongs to group `gid`."""
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return False
    members |= {user.pw_name for user in pwd.getpwall() if user.pw_gid == gid}
    return members <= {me}


def _check_folder(path: Path, info: os.stat_result) -> None:
    """Refuse a folder another user owns, or may rename entries in (writable, not sticky)."""
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{path}: not a folder; remove it or choose another path")
    if not _trusted_owner(info.st_uid):
        raise UnsafePathError(
            f"{path}: owned by uid {info.st_uid}, not by this user; remove it or choose another"
        )
    # Group-writable is fine when the group is this user's alone (user-private groups: such
    # homes are often 0775).
    group_open = info.st_mode & stat.S_IWGRP and not _own_group(info.st_gid)
    if (info.st_mode & stat.S_IWOTH or group_open) and not info.st_mode & stat.S_ISVTX:
        raise UnsafePathError(
            f"{path}: writable by other users (mode {stat.S_IMODE(info.st_mode):04o}) without "
            f"the sticky bit; choose a folder only you can write (or `chmod go-w {path}`)"
        )


def check_safe_folder(path: Path) -> Path:
    """Refuse `path` (and a symlink leading to it) unless this user or root owns it and others
    cannot write it (a sticky folder such as /tmp is fine). Never changes anything."""
    link = os.lstat(path)
    # A symlink planted by another user (say in /tmp) must not steer our files elsewhere.
    if stat.S_ISLNK(link.st_mode) and not _trusted_owner(link.st_uid):
        raise UnsafePathError(f"{path}: a symlink owned by uid {link.st_uid}; remove it")
    _check_folder(path, os.stat(path))
    return path


def ensure_private_dir(path: Path) -> Path:
    """A folder for our sockets and files: created 0700 when missing (its parents checked);
    an existing one is used as it is when safe (see check_safe_folder), else refused.

    Porch never changes the mode of a folder it did not create: `--control /tmp/x.sock` must
    not turn /tmp into 0700.
    """
    try:
        return check_safe_folder(path)
    except FileNotFoundError:
        pass
    parent = path.parent
    if parent != path and not parent.exists():
        ensure_private_dir(parent)
    elif parent != path:
        check_safe_folder(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # made by someone else meanwhile: judged below
        pass
    except OSError as exc:
        raise UnsafePathError(f"{path}: cannot create the folder: {exc.strerror}") from None
    return check_safe_folder(path)


def ensure_owner_only_dir(path: Path) -> Path:
    """A folder only this user may enter (0700, for secrets): created when missing; an existing
    one must already be that private (refused otherwise: we never chmod what we find)."""
    ensure_private_dir(path)
    info = os.stat(path)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise UnsafePathError(
            f"{path}: must be a folder of this user with mode 0700, got uid {info.st_uid} mode "
            f"{stat.S_IMODE(info.st_mode):04o}; `chmod 700 {path}` if it is yours"
        )
    return path


def open_private_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open without following a symlink, refusing a file another user owns (a file planted
    in a shared state folder must never be read as ours)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UnsafePathError(
            f"{path}: is a symlink; Porch does not follow it, remove it"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or not _trusted_owner(info.st_uid):
        os.close(fd)
        raise UnsafePathError(
            f"{path}: not a regular file of this user (uid {info.st_uid}); remove it"
        )
    return fd
