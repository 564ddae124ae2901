"""The supervisor: spawns one worker process per pipeline, relays their output, brokers the
directory of endpoints, and stops them all on one path (signals and commands alike).

`porch run` is a foreground use of this class; `porchd` grows from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import zmq

from porch import logs
from porch.config import PipelineConfig
from porch.control import MessageType, WorkerState, decode, encode
from porch.errors import ControlError

log = logs.get("porch.supervisor")

STOP_TIMEOUT_S = 10.0
POLL_MS = 250


class LineSink(Protocol):
    """Where the lines a worker prints go."""

    def line(self, pipeline: str, stream: str, text: str) -> None:
        """One complete line of `stream` ("stdout" or "stderr") from `pipeline`."""


class ConsoleSink:
    """Prints `name | line` like docker compose; names are coloured on a terminal."""

    COLORS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)

    def __init__(self) -> None:
        self._colors: dict[str, int] = {}

    def _prefix(self, pipeline: str, stream: Any) -> str:
        if not stream.isatty():
            return f"{pipeline} | "
        color = self._colors.setdefault(pipeline, self.COLORS[len(self._colors) % len(self.COLORS)])
        return f"\x1b[{color}m{pipeline} |\x1b[0m "

    def line(self, pipeline: str, stream: str, text: str) -> None:
        """Print one line with its pipeline's prefix on the matching stream."""
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(f"{self._prefix(pipeline, out)}{text}\n")
        out.flush()


@dataclass
class WorkerHandle:
    """The supervisor's view of one worker."""

    config: PipelineConfig
    process: subprocess.Popen[bytes] | None = None
    state: WorkerState = WorkerState.STARTING
    endpoint: str | None = None
    last_error: str = ""
    started_s: float = 0.0
    exit_code: int | None = None
    health: dict[str, Any] = field(default_factory=dict)
    streams: dict[int, tuple[str, bytearray]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self.config.name

    @property
    def pid(self) -> int | None:
        """The worker's pid while it has one."""
        return self.process.pid if self.process is not None else None


class Supervisor:
    """Runs a set of pipelines as child processes until they end or are stopped."""

    def __init__(
        self,
        configs: Sequence[PipelineConfig],
        sink: LineSink,
        *,
        iterations: int | None = None,
        bind_host: str = "127.0.0.1",
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self.workers = {c.name: WorkerHandle(c) for c in configs}
        self.sink = sink
        self.iterations = iterations
        self.bind_host = bind_host
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False
        self.forced = False
        self.failed: list[str] = []
        self._kill_deadline = 0.0
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="porch-"))
        self.control_endpoint = f"ipc://{self.runtime_dir}/control"
        self.router: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.control_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self._wake_r, self._wake_w = socket.socketpair()
        self.poller.register(self._wake_r, zmq.POLLIN)

    # ---- signals: one stop path ----------------------------------------------------------

    def install_signals(self) -> None:
        """SIGINT/SIGTERM: first a graceful stop, then a forced one."""
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.forced = True
        else:
            self.request_stop(signal.Signals(signum).name)

    def request_stop(self, reason: str) -> None:
        """Stop every worker gracefully (SIGTERM to its group); kill them after the timeout."""
        if self.stopping:
            return
        self.stopping = True
        self._kill_deadline = time.monotonic() + self.stop_timeout_s
        log.info("stopping", reason=reason)
        for handle in self.workers.values():
            self._signal(handle, signal.SIGTERM)

    def _signal(self, handle: WorkerHandle, signum: int) -> None:
        if handle.process is None or handle.exit_code is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.process.pid, signum)

    # ---- spawning ------------------------------------------------------------------------

    def _command(self, handle: WorkerHandle) -> list[str]:
        cmd = [
            sys.executable, "-m", "workers",
            "--config", str(handle.config.path),
            "--control", self.control_endpoint,
            "--bind-host", self.bind_host,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if self.iterations is not None and handle.config.source_pipeline_count == 0:
            cmd += ["--iterations", str(self.iterations)]
        return cmd

    def spawn(self, handle: WorkerHandle) -> None:
        """Start one worker in its own process group, its output piped to us."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("PORCH_LOG_FORMAT", "console" if sys.stderr.isatty() else "json")
        process = subprocess.Popen(
            self._command(handle),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=handle.config.folder,
            env=env,
            start_new_session=True,
        )
        handle.process, handle.exit_code = process, None
        handle.state, handle.started_s = WorkerState.STARTING, time.monotonic()
        for stream_name, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            handle.streams[pipe.fileno()] = (stream_name, bytearray())
            self.poller.register(pipe.fileno(), zmq.POLLIN)
        log.info("worker_spawned", pipeline=handle.name, pid=process.pid)

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Spawn every worker and supervise until all have ended; return porch run's exit code."""
        try:
            for handle in self.workers.values():
                self.spawn(handle)
            while not all(h.exit_code is not None for h in self.workers.values()):
                if self.forced:
                    self._kill_all()
                    return 130
                self._poll_once()
            return 1 if self.failed else 0
        finally:
            self._kill_all()
            self.close()

    def _poll_once(self) -> None:
        events = dict(self.poller.poll(POLL_MS))
        for key in events:
            if key is self.router:
                self._on_control()
            elif key is self._wake_r or key == self._wake_r.fileno():
                self._drain_wakeups()
            elif isinstance(key, int):
                self._read_stream(key)
        self._reap()
        if self.stopping and time.monotonic() > self._kill_deadline:
            for handle in self.workers.values():
                if handle.exit_code is None:
                    self._fail(handle, f"did not stop within {self.stop_timeout_s:g} s; killed")
                    self._signal(handle, signal.SIGKILL)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def _read_stream(self, fd: int) -> None:
        handle = next((h for h in self.workers.values() if fd in h.streams), None)
        if handle is None:
            return
        stream_name, buffer = handle.streams[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        buffer += data
        *lines, rest = buffer.split(b"\n")
        for raw in lines:
            self.sink.line(handle.name, stream_name, raw.decode("utf-8", "replace").rstrip("\r"))
        buffer[:] = rest
        if not data:  # EOF: the worker (and every child holding the pipe) is gone
            if rest:
                self.sink.line(handle.name, stream_name, rest.decode("utf-8", "replace"))
            self.poller.unregister(fd)
            del handle.streams[fd]

    def _on_control(self) -> None:
        while True:
            try:
                identity, data = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            handle = self.workers.get(identity.decode("utf-8", "replace"))
            if handle is None:
                continue
            try:
                kind, message = decode(data)
            except ControlError as exc:
                log.warning("bad_control_message", pipeline=handle.name, reason=str(exc))
                continue
            self._on_report(handle, kind, message)

    def _on_report(self, handle: WorkerHandle, kind: MessageType, message: dict[str, Any]) -> None:
        if kind is MessageType.HELLO:
            endpoint = message.get("endpoint")
            handle.endpoint = endpoint if isinstance(endpoint, str) else None
            self._publish_directory()
        elif kind is MessageType.STATE:
            self._set_state(handle, message)
        elif kind is MessageType.HEALTH:
            handle.health = {k: v for k, v in message.items() if k != "type"}

    def _set_state(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        try:
            state = WorkerState(message.get("state"))
        except ValueError:
            return
        handle.state = state
        if message.get("error"):
            handle.last_error = str(message["error"])
        log.debug("worker_state", pipeline=handle.name, state=state.value)
        if state.ended:
            self._publish_directory()

    def _publish_directory(self) -> None:
        pipelines = {
            h.name: {"endpoint": h.endpoint, "state": h.state.value} for h in self.workers.values()
        }
        message = encode(MessageType.DIRECTORY, pipelines=pipelines)
        for handle in self.workers.values():
            if handle.exit_code is None:
                self.router.send_multipart([handle.name.encode("utf-8"), message])

    def _reap(self) -> None:
        for handle in self.workers.values():
            if handle.process is None or handle.exit_code is not None or handle.streams:
                continue
            code = handle.process.poll()
            if code is None:
                continue
            handle.exit_code = code
            self._signal_group_gone(handle)
            self._on_exit(handle, code)

    def _signal_group_gone(self, handle: WorkerHandle) -> None:
        """Kill what the worker's scripts left behind in its process group."""
        assert handle.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.process.pid, signal.SIGKILL)

    def _on_exit(self, handle: WorkerHandle, code: int) -> None:
        stopped_by_us = self.stopping and code in (0, -signal.SIGTERM, -signal.SIGKILL)
        if code == 0:
            if not handle.state.ended:
                handle.state = WorkerState.STOPPED if self.stopping else WorkerState.FINISHED
        elif stopped_by_us and handle.name not in self.failed:
            handle.state = WorkerState.STOPPED
        else:
            reason = handle.last_error or f"exited with code {code}"
            self._fail(handle, reason)
        log.info("worker_exited", pipeline=handle.name, code=code, state=handle.state.value)
        self._publish_directory()

    def _fail(self, handle: WorkerHandle, reason: str) -> None:
        if handle.name in self.failed:
            return
        handle.state = WorkerState.FAILED
        handle.last_error = reason
        self.failed.append(handle.name)
        sys.stderr.write(f"porch: pipeline {handle.name} failed: {reason}\n")
        sys.stderr.flush()
        self.request_stop(f"pipeline {handle.name} failed")

    def _kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.process is not None and handle.exit_code is None:
                self._signal(handle, signal.SIGKILL)
                handle.process.wait(timeout=5)
                handle.exit_code = handle.process.returncode

    def close(self) -> None:
        """Release sockets, pipes and the runtime folder."""
        for handle in self.workers.values():
            if handle.process is not None:
                for pipe in (handle.process.stdout, handle.process.stderr):
                    if pipe is not None:
                        pipe.close()
        self.router.close(linger=0)
        self.ctx.term()
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
