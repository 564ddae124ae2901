"""The supervisor: spawns one worker process per pipeline, relays their output, brokers the
directory of endpoints, watches heartbeats, restarts or stops workers on one path.

Two modes share this code: `porch run` (FailureMode.STOP_ALL: a failure stops everything, the
run ends when every pipeline has ended) and `porchd` (FailureMode.RESTART: each pipeline's
restart policy decides, and the daemon runs until it is told to stop).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import zmq

from porch import forkserver, localsock, logs, reaper
from porch.broker import Broker, NetworkPlan
from porch.config import PipelineConfig
from porch.control import MessageType, WorkerState, decode
from porch.directory import LOCAL_HOST, DirectoryEntry, Entry, encode_directory
from porch.errors import ControlError
from porch.health import COUNTERS, EMPTY, HealthReport
from porch.lines import LineSplitter
from porch.restart import Action, RestartPolicy, RestartTracker
from porch.status import PipelineStatus
from porch.supervisor_status import UsageSampler, statuses

log = logs.get("porch.supervisor")

STOP_TIMEOUT_S = 10.0
POLL_MS = 500  # timer granularity; worker messages and signals wake the loop at once
SWEEP_S = 0.05  # workers' timers and exits are looked at least this often (and on any event)
DIRECTORY_GAP_S = 0.02  # directories to the workers: at most one per this (a burst coalesces)
OUTPUT_DRAIN_S = 2.0  # after a worker exits, how long its pipes may still deliver output
READ_BYTES = 65536
READS_PER_WAKEUP = 16
LIVE_STATES = (WorkerState.WAITING_FOR_SOURCES, WorkerState.RUNNING)
# a worker that exits in one of these never said its stream ended (os._exit, not Python's exit)
UNANNOUNCED_STATES = (WorkerState.STARTING, *LIVE_STATES)


class FailureMode(enum.Enum):
    """What a worker failure does."""

    STOP_ALL = "stop-all"  # porch run: stop every pipeline, exit 1
    RESTART = "restart"  # porchd: the pipeline's restart policy decides


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


def fingerprint(config: PipelineConfig) -> str:
    """A digest of a config and its scripts' bytes: reload restarts what changed."""
    digest = hashlib.sha256(repr(config).encode())
    for script in config.scripts:
        with contextlib.suppress(OSError):
            digest.update(script.read_bytes())
    return digest.hexdigest()


@dataclass
class WorkerHandle:
    """The supervisor's view of one pipeline and its current worker process."""

    config: PipelineConfig
    tracker: RestartTracker
    process: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None
    state: WorkerState = WorkerState.STARTING
    endpoint: str | None = None
    local_endpoint: str | None = None  # ipc:// in our run folder: how our pipelines reach it
    instance: int | None = None  # the worker's data-plane instance id (changes on restart)
    error_text: str = ""  # see last_error
    error_s: float | None = None  # when error_text was set (monotonic)
    key_id: str | None = None  # the cluster key its input socket serves with (it reports it)
    endpoints: tuple[str, ...] = ()  # one per data interface when there are several
    wanted: bool = True  # False after a commanded stop: never restarted
    respawn: bool = False  # a commanded restart: start again as soon as it exits
    stop_pending: bool = False  # commanded to stop; signalled once its stopping sources exited
    started_s: float = 0.0
    exited_s: float | None = None
    exit_code: int | None = None
    restart_at: float | None = None
    kill_at: float | None = None
    heartbeat_s: float = 0.0
    watchdog_fired: bool = False
    health: HealthReport = EMPTY  # its current worker's last report (EMPTY until one comes)
    health_at_s: float | None = None  # when that report came (monotonic)
    totals: dict[str, int] = field(default_factory=dict)  # counters of earlier instances
    rate_per_s: float = 0.0
    streams: dict[int, tuple[str, LineSplitter]] = field(default_factory=dict)
    digest: str = ""
    directory_sent: dict[str, DirectoryEntry] | None = None  # what its last directory held
    names_sent: int = -1  # the version of the names it was last sent
    greeted: bool = False  # this instance said hello (the router can reach it)

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self.config.name

    @property
    def last_error(self) -> str:
        """The pipeline's most recent error ("" if none); error_s says when it was set."""
        return self.error_text

    @last_error.setter
    def last_error(self, text: str) -> None:
        if text != self.error_text:
            self.error_text, self.error_s = text, time.monotonic() if text else None

    @property
    def error_current(self) -> bool:
        """Whether the last error is why the pipeline is not running now (else it is past)."""
        return bool(self.error_text) and self.state in (WorkerState.FAILED, WorkerState.BACKOFF)

    @property
    def alive(self) -> bool:
        """Whether a worker process exists that has not been reaped yet."""
        return self.process is not None and self.exit_code is None

    @property
    def pid(self) -> int | None:
        """Its worker process's pid while one runs (not yet reaped)."""
        return self.process.pid if self.process is not None and self.exit_code is None else None


class Supervisor:
    """Runs a set of pipelines as child processes."""

    def __init__(
        self,
        configs: Sequence[PipelineConfig],
        sink: LineSink,
        *,
        mode: FailureMode = FailureMode.STOP_ALL,
        iterations: int | None = None,
        bind_host: str = "127.0.0.1",
        stop_timeout_s: float = STOP_TIMEOUT_S,
        state_dir: Path | None = None,
        network: NetworkPlan | None = None,
        origin: str = "",
    ) -> None:
        self.sink = sink
        self.mode = mode
        self.iterations = iterations
        self.bind_host = bind_host
        self.stop_timeout_s = stop_timeout_s
        self.state_dir = state_dir  # dead letters and durable outboxes live under it
        self.workers: dict[str, WorkerHandle] = {}
        for config in configs:
            self.workers[config.name] = self._handle(config)
        self.stopping = False
        self.forced = False
        self.failed: list[str] = []
        self.usage = UsageSampler()
        self.started_s = time.monotonic()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.local_links = localsock.local_links_enabled()  # our pipelines link over ipc://
        reaper.remove_stale_run_dirs()  # what a supervisor killed with kill -9 left behind
        self.runtime_dir = reaper.make_run_dir()
        self.watchdog = reaper.Watchdog(self.runtime_dir, grace_s=stop_timeout_s)
        if self.local_links and (problem := localsock.too_long(self.runtime_dir)):
            self.local_links = False
            log.warning("local_links_unavailable", reason=problem,
                        detail="this supervisor's pipelines link over TCP (CURVE unless "
                        "--insecure)")  # fmt: skip
        self.forkserver: forkserver.ForkServer | None = None
        self._forkserver_failed = not forkserver.enabled()
        self.worker_endpoint = f"ipc://{self.runtime_dir}/workers"
        self.router: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.worker_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self._wake_r, self._wake_w = socket.socketpair()
        self.poller.register(self._wake_r, zmq.POLLIN)
        self._handlers: dict[Any, Callable[[], None]] = {}
        self._tickers: list[Callable[[float], None]] = []
        self._removed: set[str] = set()
        self._children_changed = False  # SIGCHLD came: a worker or an adopted process ended
        self._directory_sent_s = 0.0
        self._next_sweep_s = 0.0
        self._sweep_held = False
        self._directory_names: list[str] = []
        self._names_version = 0
        self._directory_due_s: float | None = None  # when a held-back directory goes out
        self._signals_installed = False
        self.broker: Broker | None = None
        self.key_file: str | None = None  # workers get its path, never the key itself
        self.key_id: str | None = None
        if network is not None:
            self._start_broker(network, origin)

    def _start_broker(self, network: NetworkPlan, origin: str) -> None:
        """Discovery: workers bind on the data interface; remote pipelines join the directory."""
        self.bind_host = ",".join(network.bind_hosts)  # a worker binds on each
        self.key_file = network.key_file
        self.key_id = network.keys.current.id if network.keys is not None else None
        self.broker = Broker(network, origin, self._local_entries, self._directory_changed)
        self.poller.register(self.broker.fileno(), zmq.POLLIN)
        self._handlers[self.broker.fileno()] = self.broker.on_readable

    def _handle(self, config: PipelineConfig) -> WorkerHandle:
        policy = RestartPolicy.NEVER if self.mode is FailureMode.STOP_ALL else config.restart
        return WorkerHandle(config, RestartTracker(policy))

    def add_handler(self, sock: zmq.Socket[bytes], on_readable: Callable[[], None]) -> None:
        """Also poll `sock` in the loop and call `on_readable` when it has input (porchd)."""
        self.poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = on_readable

    def add_ticker(self, on_tick: Callable[[float], None]) -> None:
        """Also call `on_tick(now)` after every poll, at least every POLL_MS (status snapshots)."""
        self._tickers.append(on_tick)

    # ---- signals: one stop path ----------------------------------------------------------

    def install_signals(self) -> None:
        """SIGINT/SIGTERM: first a graceful stop, then a forced one."""
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._signals_installed = True
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # As subreaper we adopt what a dead worker leaves (its scripts' children in other
        # sessions); SIGCHLD tells us when to look.
        if reaper.become_subreaper():
            signal.signal(signal.SIGCHLD, self._on_child_exit)

    def _on_child_exit(self, signum: int, frame: FrameType | None) -> None:
        self._children_changed = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.forced = True
        else:
            self.request_stop(signal.Signals(signum).name)

    def request_stop(self, reason: str) -> None:
        """Stop every pipeline gracefully, then end the loop (porchctl stop, signals, failure)."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping", reason=reason)
        for handle in self.workers.values():
            self.stop_worker(handle)

    def stop_worker(self, handle: WorkerHandle) -> None:
        """Commanded stop of one pipeline: SIGTERM its group (see _signal_stops for when),
        SIGKILL after the stop timeout."""
        handle.wanted = False
        handle.restart_at = None
        handle.respawn = False  # a stop cancels a restart under way (restart sets it again)
        if not handle.alive:
            if handle.state in (WorkerState.BACKOFF, WorkerState.STARTING):
                handle.state = WorkerState.STOPPED
            return
        if handle.kill_at is not None:
            return  # already stopping: a second SIGTERM would make the worker exit at once
        handle.stop_pending = True  # signalled at the end of this loop turn (_signal_stops)

    def _signal_stops(self) -> None:
        """SIGTERM the pipelines commanded to stop that may go now (see ready_to_stop)."""
        pending = [h.name for h in self.workers.values() if h.stop_pending and h.alive]
        if not pending:
            return
        stopping = [h.name for h in self.workers.values() if h.alive and not h.wanted]
        targets = {h.name: h.config.target_pipeline_names for h in self.workers.values()}
        for name in ready_to_stop(pending, stopping, targets):
            handle = self.workers[name]
            handle.stop_pending = False
            handle.kill_at = time.monotonic() + self.stop_timeout_s
            handle.state = WorkerState.STOPPING
            self._signal(handle, signal.SIGTERM)

    def _kill(self, handle: WorkerHandle) -> None:
        """SIGKILL a worker's process group and every descendant (new sessions too: the worker
        is their subreaper, so they are all below it until it dies)."""
        if handle.process is None:
            return
        tree = reaper.descendants(handle.process.pid) if handle.exited_s is None else []
        self._signal(handle, signal.SIGKILL)
        reaper.kill_all(tree)

    def _reap_adopted(self) -> None:
        """Kill and reap our children that are neither workers nor the watchdog: a dead worker's
        descendants, adopted by us as their subreaper."""
        ours = {h.process.pid for h in self.workers.values() if h.process is not None}
        ours.add(self.watchdog.process.pid)
        if self.forkserver is not None:
            ours.add(self.forkserver.pid)
        killed = reaper.reap_adopted(ours)
        if killed:
            log.warning("orphans_killed", processes=killed,
                        reason="left by a worker that exited")  # fmt: skip

    def _signal(self, handle: WorkerHandle, signum: int) -> None:
        if handle.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.process.pid, signum)

    # ---- commands (porchd) ---------------------------------------------------------------

    def start_pipeline(self, handle: WorkerHandle) -> None:
        """Start a pipeline that is not running (after a stop, or from `failed`)."""
        handle.wanted = True
        handle.stop_pending = False
        handle.tracker.reset()
        if not handle.alive:
            self.spawn(handle)

    def restart_pipeline(self, handle: WorkerHandle) -> None:
        """Graceful restart: stop it, then start it again as soon as it has exited."""
        if self.stopping:
            return  # _done() would wait for a respawn that never comes
        if handle.alive:
            self.stop_worker(handle)
            handle.respawn = True
        else:
            self.start_pipeline(handle)

    def add_pipeline(self, config: PipelineConfig) -> None:
        """Add a pipeline (reload) and start it."""
        handle = self._handle(config)
        self.workers[config.name] = handle
        self.spawn(handle)

    def remove_pipeline(self, name: str) -> None:
        """Stop a pipeline and forget it once it has exited (reload)."""
        handle = self.workers[name]
        handle.respawn = False
        self.stop_worker(handle)
        if handle.alive:
            self._removed.add(name)  # forgotten once it has exited, see _after_exit
        else:
            del self.workers[name]
            self._publish_directory()

    def replace_config(self, config: PipelineConfig) -> None:
        """A pipeline's config or scripts changed (reload): restart it with the new ones."""
        handle = self.workers[config.name]
        handle.config = config
        handle.tracker = self._handle(config).tracker
        self.restart_pipeline(handle)

    # ---- spawning ------------------------------------------------------------------------

    def _command(self, handle: WorkerHandle, parent_pid: int | None = None) -> list[str]:
        cmd = [
            sys.executable, "-m", "workers",
            "--config", str(handle.config.path),
            "--control", self.worker_endpoint,
            "--bind-host", self.bind_host,
            "--parent-pid", str(parent_pid or os.getpid()),
            "--stop-timeout", str(self.stop_timeout_s),
        ]  # fmt: skip
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        if self.key_file is not None:
            cmd += ["--key-file", self.key_file]
        if self.local_links:
            cmd += ["--ipc-dir", str(self.runtime_dir)]
        if self.iterations is not None and handle.config.source_pipeline_count == 0:
            cmd += ["--iterations", str(self.iterations)]
        return cmd

    def spawn(self, handle: WorkerHandle) -> None:
        """Start one worker in its own process group, its output piped to us."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("PORCH_LOG_FORMAT", "console" if sys.stderr.isatty() else "json")
        process = self._fork(handle, env) or subprocess.Popen(
            self._command(handle),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=handle.config.folder,
            env=env,
            start_new_session=True,
        )
        now = time.monotonic()
        handle.process, handle.exit_code, handle.exited_s = process, None, None
        handle.state, handle.started_s, handle.heartbeat_s = WorkerState.STARTING, now, now
        handle.kill_at = handle.restart_at = None
        handle.watchdog_fired, handle.respawn, handle.endpoint = False, False, None
        handle.local_endpoint = None
        handle.stop_pending = False
        handle.digest = fingerprint(handle.config)
        handle.directory_sent, handle.names_sent = None, -1  # a new worker gets it all
        handle.greeted = False
        for key in COUNTERS:  # the last instance's counts become part of the totals
            handle.totals[key] = handle.totals.get(key, 0) + handle.health.counter(key)
        handle.health, handle.health_at_s = EMPTY, None
        self.watchdog.watch(process.pid)
        for stream_name, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            handle.streams[pipe.fileno()] = (stream_name, LineSplitter())
            self.poller.register(pipe.fileno(), zmq.POLLIN)
        log.info("worker_spawned", pipeline=handle.name, pid=process.pid)

    def _fork(self, handle: WorkerHandle, env: dict[str, str]) -> forkserver.ForkedProcess | None:
        """A worker forked from the template (porch/forkserver.py), or None: then it starts as
        a fresh interpreter (PORCH_FORK_SERVER=0, or the template cannot be started)."""
        for _ in range(2):  # a template that died is started again once
            if self._forkserver_failed:
                return None
            try:
                if self.forkserver is None or self.forkserver.dead:
                    if self.forkserver is not None:
                        log.warning("fork_server_restarted", pid=self.forkserver.pid)
                        self._forget_forkserver()
                    self.forkserver = forkserver.ForkServer(env)
                    self.poller.register(self.forkserver.sock.fileno(), zmq.POLLIN)
                    self._handlers[self.forkserver.sock.fileno()] = self._on_forkserver
                argv = self._command(handle, self.forkserver.pid)[3:]
                return self.forkserver.spawn(handle.name, argv, str(handle.config.folder), env)
            except (forkserver.ForkServerError, OSError) as exc:
                log.warning("fork_server_failed", reason=str(exc))
                if self.forkserver is None:
                    self._forkserver_failed = True
        self._forkserver_failed = True
        log.warning("fork_server_disabled", detail="workers start as fresh interpreters")
        return None

    def _on_forkserver(self) -> None:
        """The template reported exits (or died: its socket is then forgotten)."""
        assert self.forkserver is not None
        self.forkserver.collect()
        # A worker's exit: its orphans (a script's children in new sessions) are ours now, as
        # their subreaper; the SIGCHLD of its exit went to the template, not to us.
        self._children_changed = True
        if self.forkserver.dead:
            log.warning("fork_server_died", pid=self.forkserver.pid)
            self._forget_forkserver()

    def _forget_forkserver(self) -> None:
        assert self.forkserver is not None
        fd = self.forkserver.sock.fileno()
        if fd in self._handlers:
            self.poller.unregister(fd)
            del self._handlers[fd]

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Spawn every worker and supervise until done; return porch run's exit code."""
        try:
            for handle in list(self.workers.values()):
                self.spawn(handle)
            while not self._done():
                if self.forced:
                    return 130
                self.poll_once()
            return 1 if self.failed else 0
        finally:
            self._kill_all()
            self.close()

    def _done(self) -> bool:
        settled = all(
            not h.alive and h.restart_at is None and not h.respawn for h in self.workers.values()
        )
        if self.mode is FailureMode.STOP_ALL:
            return settled
        return self.stopping and settled

    def poll_once(self) -> None:
        """Wait for one batch of events (or POLL_MS) and handle them, then the timers."""
        events = dict(self.poller.poll(self._poll_timeout_ms()))
        # Workers' reports (heartbeats: one a second from each) alone need no sweep of every
        # worker's timers and exit: at 1,000 workers that sweep at every report was most of
        # porchd's idle CPU. Anything else (output, an exit, a signal, a command) sweeps now.
        sweep = any(key is not self.router for key in events)
        for key in events:
            if key is self.router:
                self._on_control()
            elif key is self._wake_r or key == self._wake_r.fileno():
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            elif key in self._handlers:
                self._handlers[key]()
            elif isinstance(key, int):
                self._read_stream(key)
        self._signal_stops()
        if self._children_changed:
            self._children_changed = False
            self._reap_adopted()
        now = time.monotonic()
        self._sweep_held = not (sweep or now >= self._next_sweep_s)
        if not self._sweep_held:
            self._next_sweep_s = now + SWEEP_S
            for handle in list(self.workers.values()):
                self._check_timers(handle, now)
                self._reap(handle, now)
        if self.broker is not None:
            self.broker.tick(now)
        self._flush_directory(time.monotonic())
        for on_tick in self._tickers:
            on_tick(now)

    def _poll_timeout_ms(self) -> int:
        due = [] if self._directory_due_s is None else [self._directory_due_s]
        if self._sweep_held:  # a report came just after a sweep: sweep again soon anyway
            due.append(self._next_sweep_s)
        if self.broker is not None:
            due.append(self.broker.tick(time.monotonic()))
        if not due:
            return POLL_MS
        due_ms = (min(due) - time.monotonic()) * 1000
        return max(0, min(POLL_MS, int(due_ms) + 1))

    def _check_timers(self, handle: WorkerHandle, now: float) -> None:
        if handle.restart_at is not None and now >= handle.restart_at and not self.stopping:
            log.info("worker_restarting", pipeline=handle.name, restarts=handle.tracker.restarts)
            self.spawn(handle)
            return
        if not handle.alive:
            return
        if handle.kill_at is not None and now > handle.kill_at:
            handle.kill_at = None
            message = (f"killed: did not stop within {self.stop_timeout_s:g} s of SIGTERM "
                       "(--stop-timeout); its end() hooks did not run or finish")  # fmt: skip
            # porch run prints the failure itself (_record_failure): the log need not repeat it
            quiet = self.mode is FailureMode.STOP_ALL
            (log.info if quiet else log.warning)("worker_killed", pipeline=handle.name,
                                                 reason=message)  # fmt: skip
            handle.last_error = message
            if self.mode is FailureMode.STOP_ALL:
                self._record_failure(handle, message)
            self._kill(handle)
        timeout = handle.config.heartbeat_timeout_s
        silent = now - handle.heartbeat_s
        if handle.state in LIVE_STATES and silent > timeout and not handle.watchdog_fired:
            handle.watchdog_fired = True
            handle.last_error = f"no heartbeat for {silent:.0f} s (timeout {timeout:g} s); killed"
            log.warning("worker_unresponsive", pipeline=handle.name, silent_s=round(silent, 1))
            self._kill(handle)

    def _read_stream(self, fd: int) -> None:
        handle = next((h for h in self.workers.values() if fd in h.streams), None)
        if handle is None:
            return
        stream_name, splitter = handle.streams[fd]
        now = time.monotonic()
        for _ in range(READS_PER_WAKEUP):  # bounded: one chatty worker can't starve the loop
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                return
            for text in splitter.feed(data, now):
                self.sink.line(handle.name, stream_name, text)
            if not data:  # EOF: the worker (and every child holding the pipe) is gone
                self._close_stream(handle, fd)
                return

    def _close_stream(self, handle: WorkerHandle, fd: int) -> None:
        self.poller.unregister(fd)
        stream_name, splitter = handle.streams.pop(fd)
        for text in splitter.finish():
            self.sink.line(handle.name, stream_name, text)
        assert handle.process is not None
        for pipe in (handle.process.stdout, handle.process.stderr):
            if pipe is not None and not pipe.closed and pipe.fileno() == fd:
                pipe.close()

    def _on_control(self) -> None:
        while True:
            try:
                identity, data = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            handle = self.workers.get(identity.decode("utf-8", "replace"))
            if handle is None or not handle.alive:
                continue
            try:
                kind, message = decode(data)
            except ControlError as exc:
                log.warning("bad_control_message", pipeline=handle.name, reason=str(exc))
                continue
            self._on_report(handle, kind, message)

    def _on_report(self, handle: WorkerHandle, kind: MessageType, message: dict[str, Any]) -> None:
        handle.heartbeat_s = time.monotonic()
        if kind is MessageType.HELLO:
            endpoint = message.get("endpoint")
            handle.endpoint = endpoint if isinstance(endpoint, str) else None
            found = message.get("local")
            handle.local_endpoint = (
                found if isinstance(found, str) and localsock.is_local(found) else None
            )
            endpoints = message.get("endpoints")
            handle.endpoints = (
                tuple(e for e in endpoints if isinstance(e, str))
                if isinstance(endpoints, list)
                else ()
            )
            instance = message.get("instance")
            handle.instance = instance if isinstance(instance, int) else None
            key_id = message.get("key")
            handle.key_id = key_id if isinstance(key_id, str) else None
            if handle.key_id is not None and handle.key_id != self.key_id:
                log.info("worker_key_differs", pipeline=handle.name, worker_key=handle.key_id,
                         daemon_key=self.key_id,
                         detail="the key file changed since porchd started; peers are told "
                         "the key this worker serves with")  # fmt: skip
            log.info("worker_endpoint", pipeline=handle.name, endpoint=handle.endpoint,
                     local=handle.local_endpoint)  # fmt: skip
            handle.greeted = True  # its route exists: what we send now reaches it
            handle.directory_sent, handle.names_sent = None, -1
            self._publish_directory()
        elif kind is MessageType.STATE:
            self._set_state(handle, message)
        elif kind is MessageType.HEALTH:
            self._on_health(handle, message)

    def _on_health(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        report = HealthReport.decode(message)
        now = time.monotonic()
        if handle.health_at_s is not None:
            elapsed = now - handle.health_at_s
            done = report.iterations - handle.health.iterations
            if elapsed > 0:
                handle.rate_per_s = max(0.0, done / elapsed)
        handle.health, handle.health_at_s = report, now

    def _set_state(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        try:
            state = WorkerState(str(message.get("state")))
        except ValueError:
            return
        handle.state = state
        if message.get("error"):
            handle.last_error = str(message["error"])
        log.debug("worker_state", pipeline=handle.name, state=state.value)
        if state.ended:
            self._publish_directory()

    def _publish_directory(self) -> None:
        """The local pipelines changed: tell the workers, and the other hosts at once."""
        self._directory_changed()
        if self.broker is not None:
            self.broker.announce_soon()

    def _directory_changed(self) -> None:
        """Send the directory now, or (one was just sent) once DIRECTORY_GAP_S has passed: a
        burst of changes (1,000 workers starting) makes a few directories, not one per change
        for every worker."""
        now = time.monotonic()
        if now - self._directory_sent_s >= DIRECTORY_GAP_S:
            self._directory_due_s = None
            self._directory_sent_s = now
            self._send_directory()
        elif self._directory_due_s is None:
            self._directory_due_s = self._directory_sent_s + DIRECTORY_GAP_S

    def _flush_directory(self, now: float) -> None:
        if self._directory_due_s is not None and now >= self._directory_due_s:
            self._directory_due_s = None
            self._directory_sent_s = now
            self._send_directory()

    def _local_entries(self) -> list[Entry]:
        return [Entry(h.name, h.endpoint, h.state, h.instance, h.key_id,
                      h.endpoints if h.endpoint else (), *self._ending(h))
                for h in self.workers.values()]  # fmt: skip

    def directory(self) -> dict[str, DirectoryEntry]:
        """Where every pipeline lives: local ones, then the remote ones discovery resolved."""
        pipelines: dict[str, DirectoryEntry] = {}
        if self.broker is not None:
            pipelines.update(self.broker.directory(list(self.workers)))
        for h in self.workers.values():
            key = h.key_id or self.key_id
            # our workers reach ours over ipc:// (no CURVE); the broker announces TCP
            pipelines[h.name] = DirectoryEntry(h.state, h.local_endpoint or h.endpoint, LOCAL_HOST,
                                               h.instance, key, *self._ending(h))  # fmt: skip
        return pipelines

    def _ending(self, handle: WorkerHandle) -> tuple[tuple[str, ...], bool]:
        """What a target needs to know of its sources: who targets whom (targets), and whether
        a pipeline has ended for good (final: exited, nothing will start it again on its own)."""
        final = (
            handle.state.ended
            and not handle.alive
            and handle.restart_at is None
            and not handle.respawn
        )
        return handle.config.target_pipeline_names, final

    def _send_directory(self) -> None:
        """Each worker gets the entries it uses (itself, its targets, the pipelines that target
        it) when they changed, and every pipeline's name when the names changed (for its
        `did you mean` on a missing target): with 1,000 pipelines a change costs a few small
        messages, not 1,000 copies of the whole directory."""
        pipelines = self.directory()
        names = sorted(pipelines)
        if names != self._directory_names:
            self._directory_names = names
            self._names_version += 1
        sources: dict[str, list[str]] = {}
        for name, entry in pipelines.items():
            for target in entry.targets:
                sources.setdefault(target, []).append(name)
        for handle in self.workers.values():
            if not handle.alive or not handle.greeted:  # before its hello it would be dropped
                continue
            wanted = (handle.name, *handle.config.target_pipeline_names,
                      *sources.get(handle.name, ()))  # fmt: skip
            part = {n: pipelines[n] for n in wanted if n in pipelines}
            fresh_names = handle.names_sent != self._names_version
            if part == handle.directory_sent and not fresh_names:
                continue
            message = encode_directory(part, names if fresh_names else None)
            self.router.send_multipart([handle.name.encode("utf-8"), message])
            handle.directory_sent, handle.names_sent = part, self._names_version

    # ---- exits ---------------------------------------------------------------------------

    def _reap(self, handle: WorkerHandle, now: float) -> None:
        if not handle.alive:
            return
        assert handle.process is not None
        code = handle.process.poll()
        if code is None:
            return
        if handle.exited_s is None:
            handle.exited_s = now
            self._on_control()  # its last reports (a final state) may still wait in the router
            self._signal(handle, signal.SIGKILL)  # what its scripts left in its group dies too
        if handle.streams and now - handle.exited_s < OUTPUT_DRAIN_S:
            return  # let the last output arrive first
        for fd in list(handle.streams):
            self._close_stream(handle, fd)
        handle.exit_code = code
        localsock.remove_socket(handle.local_endpoint, self.runtime_dir)  # kill -9 leaves it
        handle.endpoint = handle.local_endpoint = None
        self._after_exit(handle, code, now)

    def _after_exit(self, handle: WorkerHandle, code: int, now: float) -> None:
        clean = code == 0 and not handle.watchdog_fired
        commanded = not handle.wanted or self.stopping
        # A pipeline killed for not stopping in time stays failed: the run says so once, truly.
        stopped = clean or code in (-signal.SIGTERM, -signal.SIGKILL)
        if commanded and stopped and handle.state is not WorkerState.FAILED:
            if not (clean and handle.state is WorkerState.FINISHED):
                handle.state = WorkerState.STOPPED
        elif clean:
            if handle.state in UNANNOUNCED_STATES:  # os._exit(0): its stream ends here
                handle.last_error = handle.last_error or (
                    "exited with code 0 without ending its stream (os._exit?); "
                    "what it had not delivered is lost"
                )
                log.warning("worker_exited_unannounced", pipeline=handle.name,
                            state=handle.state.value)  # fmt: skip
            if not handle.state.ended:
                handle.state = WorkerState.FINISHED
        else:
            handle.state = WorkerState.FAILED
            handle.last_error = handle.last_error or exit_description(code)
        log.info("worker_exited", pipeline=handle.name, code=code, how=exit_description(code),
                 state=handle.state.value)  # fmt: skip
        if handle.name in self._removed:
            self._removed.discard(handle.name)
            del self.workers[handle.name]
        elif handle.respawn and not self.stopping:
            handle.wanted = True
            handle.tracker.reset()
            self.spawn(handle)
        elif not commanded:
            self._apply_policy(handle, clean, now)
        elif handle.state is WorkerState.FAILED and self.mode is FailureMode.STOP_ALL:
            self._record_failure(handle, handle.last_error)  # e.g. output lost at the stop
        self._publish_directory()

    def _apply_policy(self, handle: WorkerHandle, clean: bool, now: float) -> None:
        if not clean and self.mode is FailureMode.STOP_ALL:
            self._record_failure(handle, handle.last_error)
            return
        decision = handle.tracker.on_exit(now, failed=not clean)
        if decision.action is Action.RESTART:
            handle.state = WorkerState.BACKOFF
            handle.restart_at = now + decision.delay_s
            log.warning("worker_backoff", pipeline=handle.name, delay_s=decision.delay_s,
                        error=handle.last_error)  # fmt: skip
        elif decision.action is Action.GIVE_UP:
            handle.state = WorkerState.FAILED
            log.error("worker_gave_up", pipeline=handle.name, error=handle.last_error)

    def _record_failure(self, handle: WorkerHandle, reason: str) -> None:
        if handle.name in self.failed:
            return
        handle.state = WorkerState.FAILED
        self.failed.append(handle.name)
        sys.stderr.write(f"porch: pipeline {handle.name} failed: {reason}\n")
        sys.stderr.flush()
        self.request_stop(f"pipeline {handle.name} failed")

    # ---- status ------------------------------------------------------------------------

    def status(self) -> list[PipelineStatus]:
        """Every pipeline's status, the fields of `porchctl status` (porch/status.py)."""
        return statuses(self.workers.values(), time.monotonic(), self.usage)

    # ---- teardown ------------------------------------------------------------------------

    def _kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.alive and handle.process is not None:
                self._kill(handle)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    handle.process.wait(timeout=5)
                handle.exit_code = handle.process.returncode

    def close(self) -> None:
        """Release sockets, pipes and the runtime folder."""
        for handle in self.workers.values():
            for fd in list(handle.streams):
                self._close_stream(handle, fd)
        if self.broker is not None:
            self.broker.close()
        self.router.close(linger=0)
        self.ctx.destroy(linger=0)
        if (
            self._signals_installed
        ):  # a signal now (the watchdog's SIGCHLD) must not hit a closed fd
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self.forkserver is not None:
            self.forkserver.close()
        self.watchdog.close()


def exit_description(code: int) -> str:
    """How a process ended, signals by name: `exited with code 3`, `killed by SIGKILL`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}"


def ready_to_stop(
    pending: Sequence[str], stopping: Sequence[str], targets: Mapping[str, Sequence[str]]
) -> list[str]:
    """Which pipelines waiting to be stopped get SIGTERM now: those no other stopping local
    pipeline targets. A stopping source waits for its targets' acknowledgements, so its targets
    keep running until it has drained into them and exited. When only a cycle of waiting
    pipelines is left, all of them go at once."""
    ready = [
        name
        for name in pending
        if not any(up != name and name in targets.get(up, ()) for up in stopping)
    ]
    if not ready and set(stopping) <= set(pending):
        return list(pending)
    return ready


def names_unknown(supervisor: Supervisor, names: Iterable[str]) -> list[str]:
    """The names among `names` that the supervisor does not know."""
    return [n for n in names if n not in supervisor.workers]
