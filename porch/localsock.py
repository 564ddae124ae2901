"""Links between pipelines of one supervisor: ipc:// sockets in its private run folder.

A worker's input socket listens on TCP for pipelines of other supervisors and hosts (CURVE
with the cluster key or the local secret, unless --insecure), and, when its supervisor gives it
a run folder, on a Unix socket there too: `ipc://<run folder>/<pid>.in`, without CURVE. The
supervisor's directory gives its own workers that endpoint, so local links pay no encryption.

What keeps other users out is the file system, so the folder is checked before the bind, and a
worker that finds it unsafe (or the path too long for a Unix socket) binds TCP only and says so:

- the folder must be a real folder (not a symlink) of this user with mode 0700 (`mkdtemp`
  makes it so): another user can neither connect to a socket in it (connect(2) needs search
  permission on the folder), nor list, create, rename or replace anything in it;
- its parent must not let other users rename the folder away (owned by us or root, and not
  writable by others unless sticky, like /tmp);
- a file already at the path must be our own socket (a worker of ours that died with kill -9:
  ZeroMQ replaces it at the bind); anything else is refused. Names are the worker's pid, so two
  live workers never share one;
- Linux limits a Unix socket's path to 107 bytes: a longer one (a very long TMPDIR) falls back
  to TCP with CURVE. Linux's abstract socket names would be short, but have no permissions at
  all: never used.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from porch.errors import UsageError
from porch.paths import UnsafePathError, check_safe_folder

MAX_SOCKET_PATH = 107  # bytes of a Unix socket's sun_path on Linux, less the ending NUL
LOCAL_LINKS_ENV = "PORCH_LOCAL_LINKS"  # "ipc" (default) or "tcp": same-supervisor links
IPC_PREFIX = "ipc://"


# a worker's socket name: its pid (at most 7 digits on Linux), "-", 8 hex digits, ".in"
NAME_MAX = 7 + 1 + 8 + 3


def socket_name(pid: int, instance: int) -> str:
    """The name of a worker's input socket in the run folder (a restarted worker: a new one)."""
    return f"{pid}-{instance & 0xFFFFFFFF:08x}.in"


def too_long(folder: Path) -> str | None:
    """Why the run folder cannot hold a worker's socket (the path would be too long), or None."""
    size = len(os.fsencode(folder)) + 1 + NAME_MAX
    if size <= MAX_SOCKET_PATH:
        return None
    return (
        f"{folder}: a worker's socket path there would take up to {size} bytes, a Unix socket "
        f"path holds at most {MAX_SOCKET_PATH} (a shorter TMPDIR fixes it)"
    )


class LocalUnavailable(Exception):
    """This worker cannot listen on a Unix socket in the run folder (the reason says why)."""


def local_links_enabled() -> bool:
    """Whether same-supervisor links go over ipc:// (PORCH_LOCAL_LINKS, default "ipc")."""
    value = os.environ.get(LOCAL_LINKS_ENV, "ipc").strip().lower() or "ipc"
    if value not in ("ipc", "tcp"):
        raise UsageError(
            f"{LOCAL_LINKS_ENV}={value!r}: must be 'ipc' (links between one supervisor's "
            "pipelines over Unix sockets, the default) or 'tcp' (TCP, with CURVE unless "
            "--insecure)"
        )
    return value == "ipc"


def is_local(endpoint: str) -> bool:
    """Whether a directory endpoint is a same-supervisor Unix socket (no CURVE on it)."""
    return endpoint.startswith(IPC_PREFIX)


def folder_problem(folder: Path) -> str | None:
    """Why the run folder cannot hold the workers' sockets (not private, or too long for every
    socket name), or None: what the supervisor checks once before it starts any worker."""
    try:
        check_private(folder)
    except LocalUnavailable as exc:
        return str(exc)
    return too_long(folder)


def check_private(folder: Path) -> None:
    """Raise LocalUnavailable unless `folder` is a real folder of this user with mode 0700
    in a parent other users cannot rename it out of."""
    try:
        info = os.lstat(folder)
        check_safe_folder(folder.parent)
    except (OSError, UnsafePathError) as exc:
        raise LocalUnavailable(f"run folder {folder}: {exc}") from None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise LocalUnavailable(
            f"run folder {folder}: not a folder of this user with mode 0700 (uid {info.st_uid}, "
            f"mode {stat.S_IMODE(info.st_mode):04o})"
        )


def socket_path(folder: Path, name: str) -> Path:
    """Where a worker's input socket may listen in the run folder `folder`; raises
    LocalUnavailable when the folder is not private, the path too long, or taken."""
    check_private(folder)
    path = folder / name
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise LocalUnavailable(
            f"{path}: {size} bytes, a Unix socket path holds at most {MAX_SOCKET_PATH} "
            "(a shorter TMPDIR fixes it)"
        )
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise LocalUnavailable(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(found.st_mode) or found.st_uid != os.geteuid():
        raise LocalUnavailable(f"{path}: exists and is not a socket of this user")
    return path  # a socket of ours whose worker died: ZeroMQ replaces it at the bind


def remove_socket(endpoint: str | None, folder: Path) -> None:
    """Remove a dead worker's socket file (kill -9 leaves it) if it is ours, in `folder`."""
    if endpoint is None or not is_local(endpoint):
        return
    path = Path(endpoint[len(IPC_PREFIX) :])
    if path.parent != folder:
        return
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid():
            os.unlink(path)
