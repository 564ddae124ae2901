"""The fork server: workers start as forks of a template process that has imported Porch.

A fresh interpreter per worker imports pyzmq, structlog and Porch again (~0.2 s of CPU each)
and keeps ~16 MB of its own memory; a fork of a template that imported them once starts in a
few ms and shares those pages (copy on write; the template never runs its collector, which
would leave holes that the child's allocations fill, and freezes its objects with `gc.freeze()`
so the child's collector does not touch, and copy, them).

Who is whose parent. The supervisor starts the template (`python -m porch.forkserver`) with
`subprocess.Popen`, in its own session, and talks to it over a SOCK_SEQPACKET socket pair:
a request is one JSON message (the worker's argv, folder, environment, pipeline name) with the
worker's stdout and stderr write ends attached (SCM_RIGHTS); the answer is `{"pid": N}`. The
template is the worker's parent: it reaps each exit and reports `{"exit": N, "code": C}` (C as
Popen's returncode: negative for a signal). The supervisor's side (`ForkedProcess`) looks like a
Popen (`pid`, `stdout`, `stderr`, `poll`, `wait`, `returncode`), so the supervisor sees the pid
at once and every exit with its code or signal. We did not double-fork the worker onto the
supervisor: the pid and the exit must reach the supervisor directly, and a worker adopted
midway would get its parent-death signal from the short-lived middle process.

Each worker, after the fork: its own session and process group (`setsid`, as
start_new_session did), stdin on /dev/null, stdout/stderr on the supervisor's pipes, the
config's folder and the supervisor's environment, process title `porch worker NAME`, then
`workers.__main__.main` as if it had been started with `python -m workers`. Parent death is a
chain: the template has PR_SET_PDEATHSIG(SIGKILL) on the supervisor, each worker has Porch's
parent-death signal on the template (`--parent-pid` is the template's pid), and its subreaper
and kill fallbacks in workers/__main__.py are unchanged. When the supervisor dies, the template
dies at once and the workers get their parent-death signal, as before.

No ZeroMQ context and no thread exist in the template: it imports modules only, and checks
that it has one thread before every fork (a fork with another thread running is refused).
PORCH_FORK_SERVER=0 starts each worker as a fresh interpreter instead (as before).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

MAX_MESSAGE_BYTES = 1 << 20  # a request: argv, folder and environment
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
TITLE_PAD = 256  # bytes of argv the template keeps for its workers' process titles


class ForkServerError(Exception):
    """The template could not start a worker (it died, or refused)."""


@dataclass(frozen=True)
class SpawnRequest:
    """What the supervisor asks the template to fork: one worker (its pipes ride along)."""

    name: str
    argv: list[str]
    cwd: str
    env: dict[str, str]

    def encode(self) -> bytes:
        """The request as one JSON message."""
        message = {"name": self.name, "argv": self.argv, "cwd": self.cwd, "env": self.env}
        return json.dumps(message).encode()

    @classmethod
    def decode(cls, data: bytes) -> SpawnRequest:
        """A request from its JSON; ValueError when it is not one."""
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("a spawn request is a JSON object")
        name, argv, cwd, env = raw.get("name"), raw.get("argv"), raw.get("cwd"), raw.get("env")
        if not isinstance(name, str) or not isinstance(cwd, str):
            raise ValueError("a spawn request names the worker and its folder")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("a spawn request's argv is a list of strings")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError("a spawn request's env maps names to strings")
        return cls(name, argv, cwd, env)


@dataclass(frozen=True)
class Reply:
    """One message of the template: it is ready, it forked `pid`, it refused (`error`), or
    a worker exited (`exit`: its pid and Popen-style code, negative for a signal)."""

    ready: bool = False
    pid: int | None = None
    error: str | None = None
    exit: tuple[int, int] | None = None

    def encode(self) -> bytes:
        """The reply as one JSON message (only the fields it has)."""
        message: dict[str, object] = {}
        if self.ready:
            message["ready"] = True
        if self.pid is not None:
            message["pid"] = self.pid
        if self.error is not None:
            message["error"] = self.error
        if self.exit is not None:
            message["exit"], message["code"] = self.exit
        return json.dumps(message).encode()

    @classmethod
    def decode(cls, data: bytes) -> Reply:
        """A reply from its JSON; ForkServerError when it is not one."""
        try:
            raw = json.loads(data)
        except ValueError:
            raw = None
        if not isinstance(raw, dict):
            raise ForkServerError(f"the fork server sent {data[:80]!r}")
        pid, error = raw.get("pid"), raw.get("error")
        exited, code = raw.get("exit"), raw.get("code")
        return cls(
            ready=raw.get("ready") is True,
            pid=int(pid) if isinstance(pid, int) else None,
            error=str(error) if error is not None else None,
            exit=(exited, code) if isinstance(exited, int) and isinstance(code, int) else None,
        )


# ---- the supervisor's side -----------------------------------------------------------------


class ForkServer:
    """The supervisor's handle on the template process."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.process = subprocess.Popen(
            # -P: the template imports Porch from where the interpreter finds it (site-packages,
            # PYTHONPATH), never from the directory porch run / porchd was started in
            [sys.executable, "-P", "-m", "porch.forkserver", str(theirs.fileno()),
             str(os.getpid()), "x" * TITLE_PAD],
            stdin=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env=env,
            start_new_session=True,  # a Ctrl+C meant for porch run must not reach it
        )  # fmt: skip
        theirs.close()
        self.pid = self.process.pid
        self.exits: dict[int, int] = {}
        self.children: dict[int, ForkedProcess] = {}
        self.dead = False
        self._wait_ready()

    def _wait_ready(self) -> None:
        message = self._receive(timeout_s=30.0)
        if message is None or not message.ready:
            self.close()
            raise ForkServerError("the fork server did not start")

    def spawn(self, name: str, argv: list[str], cwd: str, env: dict[str, str]) -> ForkedProcess:
        """Fork one worker; return its Popen-like handle (its stdout/stderr pipes ours)."""
        if self.dead:
            raise ForkServerError("the fork server is gone")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = SpawnRequest(name, argv, cwd, env).encode()
            socket.send_fds(self.sock, [request], [out_w, err_w])
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            self._gone()
            raise ForkServerError(f"the fork server is gone: {exc}") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        while True:
            message = self._receive(timeout_s=30.0)
            if message is None:
                os.close(out_r)
                os.close(err_r)
                raise ForkServerError("the fork server did not answer")
            if message.pid is not None:
                break
            if message.error is not None:
                os.close(out_r)
                os.close(err_r)
                raise ForkServerError(message.error)
        child = ForkedProcess(self, message.pid, os.fdopen(out_r, "rb"),
                              os.fdopen(err_r, "rb"))  # fmt: skip
        self.children[child.pid] = child
        return child

    def collect(self, timeout_s: float = 0.0) -> None:
        """Take in the exits the template reported (waiting at most `timeout_s` for one)."""
        while not self.dead:
            message = self._receive(timeout_s)
            if message is None:
                return
            timeout_s = 0.0

    def _receive(self, timeout_s: float) -> Reply | None:
        """One message (exits are filed on the way); None when there is none in time."""
        if self.dead:
            return None
        ready, _, _ = select.select([self.sock], [], [], max(timeout_s, 0.0))
        if not ready:
            return None
        try:
            data = self.sock.recv(MAX_MESSAGE_BYTES)
        except OSError:
            data = b""
        if not data:
            self._gone()
            return None
        message = Reply.decode(data)
        if message.exit is not None:
            pid, code = message.exit
            self.exits[pid] = code
        return message

    def _gone(self) -> None:
        """The template died: its workers got their parent-death signal; kill what is left of
        them (nobody reports their exits now) and count them killed."""
        if self.dead:
            return
        self.dead = True
        for pid in self.children:
            if pid not in self.exits:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                self.exits[pid] = -signal.SIGKILL
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def close(self) -> None:
        """Stop the template (its workers are stopped already, or get their parent-death
        signal)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.dead = True


class ForkedProcess:
    """A worker forked by the template, as the supervisor uses a subprocess.Popen."""

    def __init__(self, server: ForkServer, pid: int, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.server = server
        self.pid = pid
        self.stdout: IO[bytes] | None = stdout
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit code (negative: killed by that signal), or None while it runs."""
        # the supervisor's loop collects exits (its socket is in the poller)
        if self.returncode is None and self.pid in self.server.exits:
            self.returncode = self.server.exits.pop(self.pid)
            self.server.children.pop(self.pid, None)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for its exit; subprocess.TimeoutExpired after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.server.collect()
        while self.poll() is None:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(["porch worker"], timeout or 0.0)
            self.server.collect(timeout_s=min(left, 1.0))
        assert self.returncode is not None
        return self.returncode


def enabled() -> bool:
    """Whether workers start from the fork server (PORCH_FORK_SERVER=0: fresh interpreters)."""
    return os.environ.get("PORCH_FORK_SERVER", "1") != "0" and sys.platform.startswith("linux")


# ---- the template ----------------------------------------------------------------------------


def _prctl(option: int, value: int | bytes) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def set_title(title: str) -> None:
    """Name this process in `ps` (its argv, as far as the template kept room) and in `top`
    (its comm, 15 bytes)."""
    raw = title.encode("utf-8", "replace")
    _prctl(_PR_SET_NAME, raw[:15])
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, IndexError, ValueError):
        return
    room = end - start
    if room <= 1:
        return
    text = raw[: room - 1]
    ctypes.memmove(start, text + b"\0" * (room - len(text)), room)


def _child(sock: socket.socket, wake_r: int, wake_w: int, request: SpawnRequest,
           fds: list[int]) -> None:  # fmt: skip
    """In the fork: become the worker and never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in (devnull, *fds):
            os.close(fd)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.env)
        sys.path.insert(0, os.getcwd())  # as `python -m workers` run in the config's folder has it
        set_title(f"porch worker {request.name}")
        sys.argv = ["workers", *request.argv]
        # The template's objects stay frozen: a full collection in the worker never walks
        # (and so never writes, and copies) their pages. The template never collected (see
        # main): the worker's collector runs from here.
        gc.enable()
        from workers.__main__ import main

        code = main(list(request.argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            sock.send(Reply(exit=(pid, code)).encode())


def serve(sock: socket.socket) -> None:
    """The template's loop: fork on request, report exits, end when the supervisor does."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # No gc.collect() first: what it would free leaves holes in the template's pages, which a
    # worker's first allocations fill, copying each page (~0.3 MB of USS per worker).
    gc.freeze()  # the imported objects stay in shared pages: a child's collector skips them
    sock.send(Reply(ready=True).encode())
    while True:
        try:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            _reap(sock)
        if sock.fileno() in ready and not _fork_one(sock, wake_r, wake_w):
            return  # the supervisor closed its end


def _fork_one(sock: socket.socket, wake_r: int, wake_w: int) -> bool:
    """Take one request and fork its worker; False when the supervisor is gone."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE_BYTES, 2)
    except InterruptedError:
        return True
    except OSError:
        return False
    if not data:
        return False
    try:
        request = SpawnRequest.decode(data)
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        sock.send(Reply(error=f"not a spawn request: {exc}").encode())
        return True
    if threading.active_count() != 1 or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        sock.send(Reply(error="the template is not fit to fork").encode())
        return True
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(sock, wake_r, wake_w, request, fds)
    for fd in fds:
        os.close(fd)
    sock.send(Reply(pid=pid).encode())
    return True


def main() -> None:
    """`python -m porch.forkserver FD SUPERVISOR_PID PADDING` (internal)."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    supervisor = int(sys.argv[2])
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != supervisor:
        return
    set_title("porch fork server")
    gc.disable()  # no collection in the template: freed objects leave holes (see serve)
    # Imported once, shared by every worker (the point); porch.zap is what a worker with
    # a key imports for its ZAP handler (importing starts no thread: ZAP starts in the worker).
    import runpy  # noqa: F401

    import zmq.auth.thread  # noqa: F401

    import porch.zap  # noqa: F401
    import workers.__main__
    import workers.worker  # noqa: F401
    from porch import logs

    logs.configure_once()  # as each worker would: they keep this one (its pages shared)
    import hmac

    hmac.digest(b"", b"", "sha256")  # OpenSSL's first use (a keyed worker derives its keys)

    serve(sock)


if __name__ == "__main__":
    main()
