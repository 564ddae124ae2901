"""Spawning and killing worker processes.

A worker is forked from the fork server's template (porch/forkserver.py: pre-imported, so a
start is cheap and pages are shared) or, when that is off (PORCH_FORK_SERVER=0) or cannot
start, runs as a fresh interpreter (`python -m workers`). Either way it is in its own session
and process group, its stdout/stderr are pipes to us, and the watchdog (porch/reaper.py) kills
its tree if the supervisor dies. Killing takes the whole group and every descendant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from porch import forkserver, localsock, logs, reaper
from porch.config import PipelineConfig
from porch.output_relay import OutputRelay, Registrar
from porch.worker_handle import Process, WorkerHandle

OUTPUT_DRAIN_S = 2.0  # after a worker exits, how long its pipes may still deliver output

log = logs.get("porch.supervisor")


@dataclass(frozen=True)
class SpawnSettings:
    """What every worker's command line carries."""

    control: str  # the worker channel's endpoint
    bind_host: str  # where workers bind their input (comma-separated: one per interface)
    stop_timeout_s: float
    state_dir: Path | None = None  # dead letters and durable outboxes live under it
    key_file: str | None = None  # workers get its path, never the key itself
    iterations: int | None = None  # `porch run --iterations`: for source pipelines
    ipc_dir: Path | None = None  # the run folder: same-supervisor links over ipc:// in it


class Watcher(Protocol):
    """The watchdog's side the spawner uses (porch/reaper.py Watchdog)."""

    @property
    def pid(self) -> int:
        """The watchdog process's pid."""

    def watch(self, pid: int) -> None:
        """Kill `pid`'s tree if the supervisor dies."""

    def close(self) -> None:
        """The supervisor ends normally."""


class Spawner:
    """Starts workers (fork server first), signals their process groups, reaps them."""

    def __init__(
        self,
        settings: SpawnSettings,
        loop: Registrar,
        watcher: Watcher,
        relay: OutputRelay,
        on_exits: Callable[[], None],
        *,
        fork: bool | None = None,
        popen: Callable[..., Process] = subprocess.Popen,
        make_server: Callable[[dict[str, str]], forkserver.ForkServer] = forkserver.ForkServer,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.watcher = watcher
        self.relay = relay
        self.on_exits = on_exits  # the fork server reported exits: look for orphans
        self.popen = popen
        self.make_server = make_server
        self.forkserver: forkserver.ForkServer | None = None
        self._fork_failed = not (forkserver.enabled() if fork is None else fork)

    def command(self, config: PipelineConfig, parent_pid: int | None = None) -> list[str]:
        """The worker's command line (`python -m workers ...`)."""
        s = self.settings
        cmd = [
            sys.executable, "-m", "workers",
            "--config", str(config.path),
            "--control", s.control,
            "--bind-host", s.bind_host,
            "--parent-pid", str(parent_pid or os.getpid()),
            "--stop-timeout", str(s.stop_timeout_s),
        ]  # fmt: skip
        if config.replica_of is not None:  # one replica: the worker runs as NAME#TAG-K
            cmd += ["--replica", config.name]
        if s.state_dir is not None:
            cmd += ["--state-dir", str(s.state_dir)]
        if s.key_file is not None:
            cmd += ["--key-file", s.key_file]
        if s.ipc_dir is not None:
            cmd += ["--ipc-dir", str(s.ipc_dir)]
        if s.iterations is not None and config.source_pipeline_count == 0:
            cmd += ["--iterations", str(s.iterations)]
        return cmd

    # ---- the acts on one pipeline's worker (supervision.py ProcessActions) ---------------

    def spawn(self, handle: WorkerHandle) -> None:
        """Start a new worker for the pipeline; its output goes to the relay."""
        popen = self.start(handle.config)
        handle.started(popen, time.monotonic())
        self.relay.attach(handle.name, popen.stdout, popen.stderr)

    def kill(self, handle: WorkerHandle) -> None:
        """SIGKILL a worker's process group and every descendant."""
        if handle.process is not None:
            kill_tree(handle.process.pid, exited=handle.process.exited_s is not None)

    def terminate(self, handle: WorkerHandle) -> None:
        """SIGTERM a worker's process group."""
        if handle.process is not None:
            signal_group(handle.process.pid, signal.SIGTERM)

    def reap(
        self, handle: WorkerHandle, now: float, on_exit_seen: Callable[[], None]
    ) -> int | None:
        """Its exit code once its worker has exited and its output drained (or OUTPUT_DRAIN_S
        passed), else None. When the exit is first seen, `on_exit_seen` runs (its last reports
        may still wait), then what its scripts left in its group is killed."""
        process = handle.process
        if process is None or process.exit_code is not None:  # not alive
            return None
        code = process.popen.poll()
        if code is None:
            return None
        if process.exited_s is None:
            process.exited_s = now
            on_exit_seen()
            signal_group(process.pid, signal.SIGKILL)
        if self.relay.is_open(handle.name) and now - process.exited_s < OUTPUT_DRAIN_S:
            return None  # let the last output arrive first
        self.relay.close(handle.name)
        if self.settings.ipc_dir is not None:  # kill -9 leaves its socket file
            localsock.remove_socket(handle.announced.local_endpoint, self.settings.ipc_dir)
        handle.exited(code)
        return code

    def kill_all(self, handles: Iterable[WorkerHandle]) -> None:
        """SIGKILL every running worker and wait a little for each (the supervisor ends)."""
        for handle in handles:
            if handle.alive and handle.process is not None:
                self.kill(handle)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    handle.process.popen.wait(timeout=5)
                handle.process.exit_code = handle.process.popen.returncode

    # ---- processes -----------------------------------------------------------------------

    def start(self, config: PipelineConfig) -> Process:
        """Start one worker in its own process group, its output piped to us."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("PORCH_LOG_FORMAT", "console" if sys.stderr.isatty() else "json")
        process = self._fork(config, env) or self.popen(
            self.command(config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=config.folder,
            env=env,
            start_new_session=True,
        )
        self.watcher.watch(process.pid)
        log.info("worker_spawned", pipeline=config.name, pid=process.pid)
        return process

    def _fork(self, config: PipelineConfig, env: dict[str, str]) -> Process | None:
        """A worker forked from the template, or None: then it starts as a fresh interpreter
        (PORCH_FORK_SERVER=0, or the template cannot be started)."""
        for _ in range(2):  # a template that died is started again once
            if self._fork_failed:
                return None
            try:
                server = self._server(env)
                argv = self.command(config, server.pid)[3:]
                return server.spawn(config.name, argv, str(config.folder), env)
            except (forkserver.ForkServerError, OSError) as exc:
                log.warning("fork_server_failed", reason=str(exc))
                if self.forkserver is None:
                    self._fork_failed = True
        self._fork_failed = True
        log.warning("fork_server_disabled", detail="workers start as fresh interpreters")
        return None

    def _server(self, env: dict[str, str]) -> forkserver.ForkServer:
        if self.forkserver is None or self.forkserver.dead:
            if self.forkserver is not None:
                log.warning("fork_server_restarted", pid=self.forkserver.pid)
                self._forget_server()
            self.forkserver = self.make_server(env)
            self.loop.add(self.forkserver.sock.fileno(), self._on_server)
        return self.forkserver

    def _on_server(self) -> None:
        """The template reported exits (or died: its socket is then forgotten)."""
        assert self.forkserver is not None
        self.forkserver.collect()
        # A worker's exit: its orphans (a script's children in new sessions) are ours now, as
        # their subreaper; the SIGCHLD of its exit went to the template, not to us.
        self.on_exits()
        if self.forkserver.dead:
            log.warning("fork_server_died", pid=self.forkserver.pid)
            self._forget_server()

    def _forget_server(self) -> None:
        assert self.forkserver is not None
        self.loop.remove(self.forkserver.sock.fileno())

    def helper_pids(self) -> list[int]:
        """Our own children that are not workers (the watchdog, the template)."""
        template = [self.forkserver.pid] if self.forkserver is not None else []
        return [self.watcher.pid, *template]

    def close(self) -> None:
        """Stop the template, then tell the watchdog we end normally."""
        if self.forkserver is not None:
            self.forkserver.close()
        self.watcher.close()


def local_links_dir(run_dir: Path) -> Path | None:
    """The run folder, where this supervisor's pipelines link over ipc:// (workers get it as
    --ipc-dir), or None when it cannot hold their sockets (then they link over TCP)."""
    problem = localsock.folder_problem(run_dir)
    if problem:
        log.warning("local_links_unavailable", reason=problem,
                    detail="this supervisor's pipelines link over TCP (CURVE unless "
                    "--insecure)")  # fmt: skip
        return None
    return run_dir


def signal_group(pid: int, signum: int) -> None:
    """Send `signum` to the process group `pid` leads (gone or not ours: nothing)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def kill_tree(pid: int, exited: bool) -> None:
    """SIGKILL a worker's process group and every descendant (new sessions too: the worker is
    their subreaper, so they are all below it until it dies; once it `exited`, they are ours)."""
    tree = reaper.descendants(pid) if not exited else []
    signal_group(pid, signal.SIGKILL)
    reaper.kill_all(tree)


def reap_adopted(ours: Iterable[int]) -> None:
    """Kill and reap our children that are not in `ours` (workers, watchdog, template): a dead
    worker's descendants, adopted by us as their subreaper."""
    killed = reaper.reap_adopted(set(ours))
    if killed:
        log.warning("orphans_killed", processes=killed,
                    reason="left by a worker that exited")  # fmt: skip
