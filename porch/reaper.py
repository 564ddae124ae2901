"""Nothing outlives its supervisor: process trees, the watchdog, and stale run folders.

Three parts, each for a way a process could be left behind:

- A worker is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): what its scripts start stays
  among its descendants even in a new session or after its parent exited (a double fork), and
  the worker kills that whole tree when it exits. The supervisor kills the tree too when it
  SIGKILLs a worker (stop timeout, heartbeat). The worker does not reap the orphans it adopts
  before it exits (it cannot tell them from its scripts' own children, whose exit status a
  script may be waiting for): a script that keeps daemonizing short-lived processes leaves
  zombies until its worker ends.
- The supervisor is a subreaper too: when a worker dies without killing its tree (a crash,
  os._exit, SIGKILL), the tree is adopted by the supervisor, which kills and reaps it.
- The watchdog (`python -m porch.reaper`, one per supervisor, in its own session) holds a pipe
  from the supervisor and is told each worker's pid. When the pipe closes without `bye`, the
  supervisor died (kill -9): the workers get `--stop-timeout` to stop on their own (they got
  the parent-death signal), then the watchdog SIGKILLs whatever is left of their trees (a
  worker stuck in a C call, or with signals blocked) and removes the run folder.
- Run folders are named `porch-run-<pid>-*`; at start, a supervisor removes those of this user
  whose supervisor is gone (a kill -9 of the watchdog too, a power cut).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import psutil

from porch import localsock

_PR_SET_CHILD_SUBREAPER = 36
RUN_DIR_PREFIX = "porch-run-"
_RUN_DIR = re.compile(re.escape(RUN_DIR_PREFIX) + r"(\d+)-[^/]+")
BYE = b"bye\n"
WATCH_INTERVAL_S = 0.1  # how often the watchdog looks at the workers after the supervisor died
# psutil's create_time and a folder's mtime come from different clocks: allow this much skew
CLOCK_SKEW_S = 2.0


# ---- process trees -------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except OSError:
        return False


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """Every process below `pid` (default: this one), or none when it is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_all(processes: Iterable[psutil.Process]) -> int:
    """SIGKILL each process that is still the one it was (psutil checks); return how many."""
    killed = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
            killed += 1
    return killed


def kill_tree(root: psutil.Process) -> int:
    """SIGKILL `root` and every descendant; frozen first, so none can start another meanwhile."""
    tree = [root, *_children(root)]
    for process in tree:
        with contextlib.suppress(psutil.Error):
            process.suspend()
    late = [p for p in (c for t in tree for c in _children(t)) if p not in tree]
    return kill_all(tree + late)


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def reap_adopted(known: set[int]) -> int:
    """Kill the trees of this process's children not in `known`, and reap the dead ones.

    For a subreaper: they are orphans it adopted. Return how many were alive (and killed)."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return 0
    killed = 0
    for child in children:
        if child.pid in known:
            continue
        if _running(child):
            killed += kill_tree(child)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)  # a zombie now; the others at their SIGCHLD
    return killed


# ---- run folders ---------------------------------------------------------------------------


# Linux limits a Unix socket's path to 107 bytes; the longest socket name in a run folder is a
# worker's link socket (porch.localsock.NAME_MAX: "<pid>-<8 hex>.in"), and mkdtemp's suffix is
# 8 characters.
RUN_SOCKET_NAME_MAX = localsock.NAME_MAX
MAX_SOCKET_PATH = localsock.MAX_SOCKET_PATH
FALLBACK_RUN_BASE = Path("/tmp")


def run_dir_base() -> Path:
    """Where run folders go: the temp folder (TMPDIR), or /tmp when TMPDIR is so long that the
    sockets in a run folder there would not fit a Unix socket's 107-byte path."""
    base = Path(tempfile.gettempdir())
    longest = len(os.fsencode(base)) + len(f"/{RUN_DIR_PREFIX}{os.getpid()}-12345678/") + 1
    if longest + RUN_SOCKET_NAME_MAX <= MAX_SOCKET_PATH:
        return base
    return FALLBACK_RUN_BASE


def make_run_dir() -> Path:
    """A private folder (0700) for this supervisor's sockets, named after its pid."""
    return Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=run_dir_base()))


def remove_stale_run_dirs(base: Path | None = None) -> list[Path]:
    """Remove this user's run folders whose supervisor is gone; return them."""
    folders = (
        [base]
        if base is not None
        else list(dict.fromkeys([run_dir_base(), Path(tempfile.gettempdir())]))
    )
    removed = []
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                match = _RUN_DIR.fullmatch(entry.name)
                if match and _is_stale(entry, int(match[1])):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed


def _is_stale(entry: Path, pid: int) -> bool:
    try:
        info = entry.lstat()
    except OSError:
        return False
    if not entry.is_dir() or entry.is_symlink() or info.st_uid != os.geteuid():
        return False
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    # The pid was reused if its process started after the folder was last changed (the folder
    # is created by its owner, so the owner started before).
    return started > info.st_mtime + CLOCK_SKEW_S


# ---- the watchdog --------------------------------------------------------------------------


class Watchdog:
    """The supervisor's side of the watchdog process."""

    def __init__(self, run_dir: Path, grace_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "porch.reaper", "--run-dir", str(run_dir),
             "--supervisor-pid", str(os.getpid()), "--grace-s", str(grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl+C meant for porch run must not reach it
        )  # fmt: skip

    @property
    def pid(self) -> int:
        """The watchdog process's pid."""
        return self.process.pid

    def watch(self, pid: int) -> None:
        """Kill worker `pid`'s tree if the supervisor dies and it outlives the grace period."""
        self._send(f"{pid}\n".encode())

    def close(self) -> None:
        """The supervisor ends normally: the watchdog has nothing to do."""
        self._send(BYE)
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def _send(self, data: bytes) -> None:
        stdin = self.process.stdin
        with contextlib.suppress(OSError, ValueError):  # a dead watchdog must not stop the run
            assert stdin is not None
            stdin.write(data)
            stdin.flush()


def _read_until_eof(stdin: IO[bytes], workers: list[psutil.Process]) -> bool:
    """Track the pids the supervisor reports; True when it said bye, False when it died."""
    pending = b""
    while True:
        chunk = os.read(stdin.fileno(), 4096)
        if not chunk:
            return False
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line + b"\n" == BYE:
                return True
            with contextlib.suppress(ValueError, psutil.Error):
                workers.append(psutil.Process(int(line)))


def _after_death(workers: list[psutil.Process], grace_s: float) -> int:
    """Give the workers `grace_s` to exit; then kill what is left of their trees."""
    seen: list[psutil.Process] = list(workers)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        alive = [p for p in seen if _running(p)]
        if not alive:
            return 0
        for process in alive:  # a worker that crashes now leaves its tree: remember it
            seen.extend(c for c in _children(process) if c not in seen)
        select.select([], [], [], WATCH_INTERVAL_S)
    return sum(kill_tree(p) for p in seen if _running(p))


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main(argv: list[str] | None = None) -> int:
    """The watchdog process (internal: started by the supervisor)."""
    parser = argparse.ArgumentParser(prog="python -m porch.reaper")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    parser.add_argument("--grace-s", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe tells it what to do
    workers: list[psutil.Process] = []
    if _read_until_eof(sys.stdin.buffer, workers):
        return 0
    killed = _after_death(workers, args.grace_s)
    shutil.rmtree(args.run_dir, ignore_errors=True)
    if killed:
        with contextlib.suppress(OSError):
            sys.stderr.write(
                f"porch: supervisor {args.supervisor_pid} died; killed {killed} processes its "
                f"workers left after {args.grace_s:g} s\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
