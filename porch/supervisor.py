"""The supervisor: spawns one worker process per pipeline (one per replica of a pipeline with
`replicas`), relays their output, brokers the directory of endpoints, watches heartbeats,
restarts or stops workers on one path.

Two modes share this code: `porch run` (FailureMode.STOP_ALL: a failure stops everything, the
run ends when every process has ended) and `porchd` (FailureMode.RESTART: each pipeline's
restart policy decides, and the daemon runs until it is told to stop).

The Supervisor is the loop and the commands; its parts, each testable alone:
- worker_handle.py: the view of one worker process (process, restart bookkeeping, health,
  hello): a pipeline's, or one replica's (NAME#TAG-K);
- scaling.py: the pipelines and their processes (replicas, scale, reload's decisions);
- spawner.py: process spawning (fork server first) and killing;
- supervision.py: restart and watchdog policy (exits, timers, commanded stops);
- output_relay.py: workers' output lines to a sink;
- worker_channel.py: the workers' reports and the directories sent to them;
- supervisor_status.py: status assembly (porch/status.py PipelineStatus);
- event_loop.py: the poll, signals and tickers.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from porch import localsock, logs, reaper
from porch.broker import Broker, NetworkPlan
from porch.config import PipelineConfig
from porch.control import MessageType, WorkerState
from porch.directory import DirectoryEntry
from porch.event_loop import EventLoop, SweepTimer, timeout_ms
from porch.names import supervisor_tag
from porch.output_relay import ConsoleSink as ConsoleSink  # re-exported for porch run
from porch.output_relay import LineSink, OutputRelay
from porch.scaling import ProcessTable, ScalePlan
from porch.spawner import Spawner, SpawnSettings, local_links_dir, reap_adopted
from porch.status import PipelineStatus
from porch.supervision import FailureMode as FailureMode  # re-exported for cli and daemon
from porch.supervision import SupervisionPolicy, settled
from porch.supervision import exit_description as exit_description  # re-exported
from porch.supervision import ready_to_stop as ready_to_stop  # re-exported
from porch.supervisor_status import UsageSampler, statuses
from porch.worker_channel import DirectoryPublisher, WorkerChannel, apply_report
from porch.worker_handle import WorkerHandle

log = logs.get("porch.supervisor")

STOP_TIMEOUT_S = 10.0
POLL_MS = 500  # timer granularity; worker messages and signals wake the loop at once
SWEEP_S = 0.05  # workers' timers and exits are looked at least this often (and on any event)


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
        self.loop = EventLoop()
        self.relay = OutputRelay(sink, self.loop)
        local_links = localsock.local_links_enabled()  # our pipelines link over ipc://
        reaper.remove_stale_run_dirs()  # what a supervisor killed with kill -9 left behind
        self.runtime_dir = reaper.make_run_dir()
        self.channel = WorkerChannel(zmq.Context(), f"ipc://{self.runtime_dir}/workers")
        self.loop.add(self.channel.socket, self._on_control)
        settings = SpawnSettings(
            self.channel.endpoint,
            ",".join(network.bind_hosts) if network else bind_host,  # a worker binds on each
            stop_timeout_s,
            state_dir,
            network.key_file if network else None,
            iterations,
            local_links_dir(self.runtime_dir) if local_links else None,
        )
        watchdog = reaper.Watchdog(self.runtime_dir, grace_s=stop_timeout_s)
        self.spawner = Spawner(settings, self.loop, watchdog, self.relay, self._children_changed)
        self.policy = SupervisionPolicy(mode, stop_timeout_s, self.spawner, self)
        self.table = ProcessTable(configs, supervisor_tag(origin), self.policy, self)
        self.pipelines = self.table.pipelines  # as configured, by pipeline name
        self.workers = self.table.workers  # every worker process, by its process name
        self.stopping = False
        self.forced = False
        self.signalled: int | None = None  # a SIGINT/SIGTERM the loop has not taken yet
        self.failed: list[str] = []
        self.usage = UsageSampler()
        key_id = network.keys.current.id if network and network.keys else None
        self.publisher = DirectoryPublisher(self.channel.send, self.workers, key_id)
        self.broker: Broker | None = None
        if network is not None:  # remote pipelines join the directory
            self.broker = Broker(network, origin, self.publisher.local_entries,
                                 self.publisher.changed)  # fmt: skip
            self.publisher.broker = self.broker
            self.loop.add(self.broker.fileno(), self.broker.on_readable)
        self.sweep = SweepTimer(SWEEP_S)

    @property
    def ctx(self) -> zmq.Context[zmq.Socket[bytes]]:
        """The ZeroMQ context (porchd opens its control socket in it)."""
        return self.channel.socket.context

    @property
    def mode(self) -> FailureMode:
        """What a worker failure does."""
        return self.policy.mode

    @property
    def tag(self) -> str:
        """The TAG in its replicas' process names NAME#TAG-K."""
        return self.table.tag

    def add_handler(self, sock: zmq.Socket[bytes], on_readable: Callable[[], None]) -> None:
        """Also poll `sock` in the loop and call `on_readable` when it has input (porchd)."""
        self.loop.add(sock, on_readable)

    def add_ticker(self, on_tick: Callable[[float], None]) -> None:
        """Also call `on_tick(now)` after every poll, at least every POLL_MS (status snapshots)."""
        self.loop.add_ticker(on_tick)

    # ---- signals and commands: one stop path ---------------------------------------------

    def install_signals(self) -> None:
        """SIGINT/SIGTERM: first a graceful stop, then a forced one."""
        self.loop.install_signals(self._on_signal)

    def _on_signal(self, signum: int) -> None:
        """In the handler: only note it. A handler runs between any two bytecodes, also inside
        a log call holding the logger's lock: logging (or stopping workers) here could
        deadlock; the loop takes it (_take_signal)."""
        if self.stopping or self.signalled is not None:
            self.forced = True
        else:
            self.signalled = signum

    def _take_signal(self) -> None:
        """The stop a signal asked for (the loop, right after the wakeup)."""
        signum, self.signalled = self.signalled, None
        if signum is not None:
            self.request_stop(signal.Signals(signum).name)

    def _children_changed(self) -> None:
        self.loop.children_changed = True

    def request_stop(self, reason: str) -> None:
        """Stop every pipeline gracefully, then end the loop (porchctl stop, signals, failure)."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping", reason=reason)
        for handle in self.workers.values():
            self.stop_worker(handle)

    def stop_worker(self, handle: WorkerHandle) -> None:
        """Commanded stop of one pipeline (supervision.py SupervisionPolicy.stop)."""
        self.policy.stop(handle)

    def start_pipeline(self, handle: WorkerHandle) -> None:
        """Start a pipeline that is not running (after a stop, or from `failed`)."""
        self.policy.start(handle)

    def restart_pipeline(self, handle: WorkerHandle) -> None:
        """Graceful restart: stop it, then start it again as soon as it has exited."""
        self.policy.restart(handle, self.stopping)

    def handles_of(self, name: str) -> list[WorkerHandle]:
        """The processes a name in a command means: the process of that name, or every
        replica of the pipeline of that name (scaling.py)."""
        return self.table.handles_of(name)

    def add_pipeline(self, config: PipelineConfig) -> None:
        """Add a pipeline (reload) and start its processes."""
        self.table.add_pipeline(config)

    def remove_pipeline(self, name: str) -> None:
        """Stop a pipeline's processes and forget them once they have exited (reload)."""
        self.table.remove_pipeline(name)

    def replace_config(self, config: PipelineConfig) -> list[str]:
        """A pipeline's config or scripts changed (reload): restart the processes that run an
        older one; return their names."""
        return self.table.replace_config(config)

    def scale(self, pipeline: str, count: int) -> ScalePlan:
        """Run `count` replicas of a replicated pipeline (porchctl scale, reload)."""
        return self.table.scale(pipeline, count)

    def spawn(self, handle: WorkerHandle) -> None:
        """Start a new worker process (scaling.py TableActs)."""
        self.spawner.spawn(handle)

    def drop(self, handle: WorkerHandle) -> None:
        """Forget a process that has exited and tell the others (scaling.py TableActs)."""
        self.forget(handle)
        self._publish_directory()

    # ---- acts the policy asks for (supervision.py RunActions) ----------------------------

    def record_failure(self, handle: WorkerHandle, reason: str) -> None:
        """`porch run`: say the pipeline failed, once, and stop everything."""
        if handle.name in self.failed:
            return
        handle.state = WorkerState.FAILED
        self.failed.append(handle.name)
        sys.stderr.write(f"porch: pipeline {handle.name} failed: {reason}\n")
        sys.stderr.flush()
        self.request_stop(f"pipeline {handle.name} failed")

    def forget(self, handle: WorkerHandle) -> None:
        """Drop a removed pipeline."""
        del self.workers[handle.name]
        self.publisher.forget(handle.name)

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Spawn every worker and supervise until done; return porch run's exit code."""
        try:
            for handle in list(self.workers.values()):
                self.spawner.spawn(handle)
            while not self._done():
                if self.forced:
                    return 130
                self.poll_once()
            return 1 if self.failed else 0
        finally:
            self.spawner.kill_all(self.workers.values())
            self.close()

    def _done(self) -> bool:
        if self.mode is FailureMode.STOP_ALL:
            return settled(self.workers.values())
        return self.stopping and settled(self.workers.values())

    def poll_once(self) -> None:
        """Wait for one batch of events (or POLL_MS) and handle them, then the timers."""
        keys = self.loop.poll(self._poll_timeout_ms())
        # Workers' reports (heartbeats: one a second from each) alone need no sweep of every
        # worker's timers and exit: at 1,000 workers that sweep at every report was most of
        # porchd's idle CPU. Anything else (output, an exit, a signal, a command) sweeps now.
        sweep = any(key is not self.channel.socket for key in keys)
        self.loop.dispatch(keys)
        self._take_signal()
        self.policy.signal_stops(self.workers.values(), time.monotonic())
        if self.loop.children_changed:
            self.loop.children_changed = False
            self._reap_adopted()
        now = time.monotonic()
        if self.sweep.due(now, sweep):
            for handle in list(self.workers.values()):
                self.policy.check_timers(handle, now, self.stopping)
                self._reap(handle, now)
        if self.broker is not None:
            self.broker.tick(now)
        self.publisher.flush(time.monotonic())
        self.loop.tick(now)

    def _poll_timeout_ms(self) -> int:
        due = [] if self.publisher.due_s is None else [self.publisher.due_s]
        if self.sweep.held:  # a report came just after a sweep: sweep again soon anyway
            due.append(self.sweep.next_s)
        if self.broker is not None:
            due.append(self.broker.tick(time.monotonic()))
        return timeout_ms(due, time.monotonic(), POLL_MS)

    def _reap_adopted(self) -> None:
        ours = [h.process.pid for h in self.workers.values() if h.process is not None]
        reap_adopted([*ours, *self.spawner.helper_pids()])

    # ---- the worker channel and the directory --------------------------------------------

    def _on_control(self) -> None:
        for handle, kind, message in self.channel.receive(self.workers.get):
            if apply_report(handle, kind, message, time.monotonic(), self.publisher.key_id):
                if kind is MessageType.HELLO:  # its route exists: what we send now reaches it
                    self.publisher.hello(handle)
                self._publish_directory()

    def _publish_directory(self) -> None:
        """The local pipelines changed: tell the workers, and the other hosts at once."""
        self.publisher.changed(time.monotonic())
        if self.broker is not None:
            self.broker.announce_soon()

    def directory(self) -> dict[str, DirectoryEntry]:
        """Where every pipeline lives: local ones, then the remote ones discovery resolved."""
        return self.publisher.directory()

    # ---- exits ---------------------------------------------------------------------------

    def _reap(self, handle: WorkerHandle, now: float) -> None:
        code = self.spawner.reap(handle, now, self._on_control)
        if code is not None:
            self.policy.after_exit(handle, code, now, self.stopping)
            self._publish_directory()

    # ---- status and teardown -------------------------------------------------------------

    def status(self) -> list[PipelineStatus]:
        """Every pipeline's status, the fields of `porchctl status` (porch/status.py)."""
        return statuses(self.workers.values(), time.monotonic(), self.usage)

    def close(self) -> None:
        """Release sockets, pipes and the runtime folder."""
        self.relay.close_all()
        if self.broker is not None:
            self.broker.close()
        ctx = self.ctx
        self.channel.close()
        ctx.destroy(linger=0)
        self.loop.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.spawner.close()
