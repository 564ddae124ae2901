"""Restart and watchdog policy: what the supervisor does about a worker's exit, its timers
(a restart after backoff, a stop that timed out, a missing heartbeat) and commanded stops.

It decides and keeps each pipeline's bookkeeping (WorkerHandle state, RestartBook); the acts
(spawn, kill, SIGTERM: ProcessActions; a failed `porch run`, a removed pipeline: RunActions)
go through protocols, so the policy runs in tests against fakes. The backoff is restart.py.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol

from porch import logs
from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.names import pipeline_of
from porch.restart import Action, BackoffSettings, RestartPolicy, RestartTracker
from porch.worker_handle import RestartBook, WorkerHandle, WorkerProcess

log = logs.get("porch.supervisor")

LIVE_STATES = (WorkerState.WAITING_FOR_SOURCES, WorkerState.RUNNING)
# a worker that exits in one of these never said its stream ended (os._exit, not Python's exit)
UNANNOUNCED_STATES = (WorkerState.STARTING, *LIVE_STATES)


class FailureMode(enum.Enum):
    """What a worker failure does."""

    STOP_ALL = "stop-all"  # porch run: stop every pipeline, exit 1
    RESTART = "restart"  # porchd: the pipeline's restart policy decides


class ProcessActions(Protocol):
    """What the policy asks of the processes (spawner.py Spawner)."""

    def spawn(self, handle: WorkerHandle) -> None:
        """Start a new worker for the pipeline."""

    def kill(self, handle: WorkerHandle) -> None:
        """SIGKILL its worker's process group and descendants."""

    def terminate(self, handle: WorkerHandle) -> None:
        """SIGTERM its worker's process group."""


class RunActions(Protocol):
    """What the policy asks of the supervisor."""

    def record_failure(self, handle: WorkerHandle, reason: str) -> None:
        """`porch run`: a pipeline failed; stop everything, exit 1."""

    def forget(self, handle: WorkerHandle) -> None:
        """A removed pipeline's worker has exited: drop the pipeline."""


class SupervisionPolicy:
    """Applies the failure mode and each pipeline's restart policy."""

    def __init__(
        self, mode: FailureMode, stop_timeout_s: float, processes: ProcessActions, run: RunActions
    ) -> None:
        self.mode = mode
        self.stop_timeout_s = stop_timeout_s
        self.processes = processes
        self.run = run
        self.removed: set[str] = set()  # forgotten once their worker has exited
        self.stops_pending = False  # stop() set a worker's stop_pending since signal_stops saw none

    def new_book(self, config: PipelineConfig) -> RestartBook:
        """A pipeline's bookkeeping: `porch run` never restarts, porchd follows the config
        (`restart`, and `restart_backoff_s` as the first restart's wait)."""
        base_s = config.restart_backoff_s
        settings = BackoffSettings(base_s=base_s, max_s=max(base_s, BackoffSettings.max_s))
        return RestartBook(RestartTracker(self.restart_policy(config.restart), settings))

    def restart_policy(self, restart: RestartPolicy) -> RestartPolicy:
        """The policy in force for a pipeline configured with `restart`."""
        return RestartPolicy.NEVER if self.mode is FailureMode.STOP_ALL else restart

    # ---- commands ------------------------------------------------------------------------

    def start(self, handle: WorkerHandle) -> None:
        """Start a pipeline that is not running (after a stop, or from `failed`): a clean
        slate for its failure count."""
        handle.restart.wanted = True
        handle.restart.stop_pending = False
        handle.restart.tracker.reset()
        if not handle.alive:
            self.processes.spawn(handle)

    def restart(self, handle: WorkerHandle, stopping: bool) -> None:
        """Graceful restart: stop it, then start it again as soon as it has exited."""
        if stopping:
            return  # the supervisor would wait for a respawn that never comes
        if handle.alive:
            self.stop(handle)
            handle.restart.respawn = True
        else:
            self.start(handle)

    def stop(self, handle: WorkerHandle) -> None:
        """Commanded stop: SIGTERM once its stopping sources have exited (stops_due), SIGKILL
        after the stop timeout; never restarted."""
        book = handle.restart
        book.wanted, book.restart_at = False, None
        book.respawn = False  # a stop cancels a restart under way (restart sets it again)
        if not handle.alive:
            if handle.state in (WorkerState.BACKOFF, WorkerState.STARTING):
                handle.state = WorkerState.STOPPED
            return
        assert handle.process is not None
        if handle.process.kill_at is not None:
            return  # already stopping: a second SIGTERM would make the worker exit at once
        book.stop_pending = True  # signalled at the end of this loop turn (signal_stops)
        self.stops_pending = True

    def signal_stops(self, handles: Collection[WorkerHandle], now: float) -> None:
        """SIGTERM the pipelines commanded to stop that may go now (see ready_to_stop). The
        loop asks after every poll (each worker's report wakes it): without a stop pending it
        answers without looking at every worker."""
        if not self.stops_pending:
            return
        pending = [h.name for h in handles if h.restart.stop_pending and h.alive]
        if not pending:
            self.stops_pending = False  # (only stop() sets a stop pending)
            return
        stopping = [h.name for h in handles if h.alive and not h.restart.wanted]
        targets = {h.name: h.config.target_pipeline_names for h in handles}
        by_name = {h.name: h for h in handles}
        for name in ready_to_stop(pending, stopping, targets):
            handle = by_name[name]
            assert handle.process is not None
            handle.restart.stop_pending = False
            handle.process.kill_at = now + self.stop_timeout_s
            handle.state = WorkerState.STOPPING
            self.processes.terminate(handle)

    # ---- timers --------------------------------------------------------------------------

    def check_timers(self, handle: WorkerHandle, now: float, stopping: bool) -> None:
        """A restart after backoff that is due, a stop that timed out, a missing heartbeat."""
        book = handle.restart
        if book.restart_at is not None and now >= book.restart_at and not stopping:
            log.info("worker_restarting", pipeline=handle.name, restarts=book.tracker.restarts)
            self.processes.spawn(handle)
            return
        process = handle.process
        if process is None or process.exit_code is not None:  # not alive
            return
        if process.kill_at is not None and now > process.kill_at:
            self._stop_timed_out(handle, process)
        if now - process.heartbeat_s > handle.config.heartbeat_timeout_s:
            self._check_heartbeat(handle, process, now)

    def _stop_timed_out(self, handle: WorkerHandle, process: WorkerProcess) -> None:
        process.kill_at = None
        message = (f"killed: did not stop within {self.stop_timeout_s:g} s of SIGTERM "
                   "(--stop-timeout); its end() hooks did not run or finish")  # fmt: skip
        # porch run prints the failure itself (record_failure): the log need not repeat it
        quiet = self.mode is FailureMode.STOP_ALL
        (log.info if quiet else log.warning)("worker_killed", pipeline=handle.name,
                                             reason=message)  # fmt: skip
        handle.last_error = message
        if self.mode is FailureMode.STOP_ALL:
            self.run.record_failure(handle, message)
        self.processes.kill(handle)

    def _check_heartbeat(self, handle: WorkerHandle, process: WorkerProcess, now: float) -> None:
        timeout = handle.config.heartbeat_timeout_s
        silent = now - process.heartbeat_s
        if handle.state in LIVE_STATES and silent > timeout and not process.watchdog_fired:
            process.watchdog_fired = True
            handle.last_error = f"no heartbeat for {silent:.0f} s (timeout {timeout:g} s); killed"
            log.warning("worker_unresponsive", pipeline=handle.name, silent_s=round(silent, 1))
            self.processes.kill(handle)

    # ---- exits ---------------------------------------------------------------------------

    def after_exit(self, handle: WorkerHandle, code: int, now: float, stopping: bool) -> None:
        """Its worker was reaped with `code`: set its state, then restart, forget or fail."""
        assert handle.process is not None
        book = handle.restart
        clean = code == 0 and not handle.process.watchdog_fired
        commanded = not book.wanted or stopping
        self._set_exit_state(handle, code, clean, commanded)
        log.info("worker_exited", pipeline=handle.name, code=code, how=exit_description(code),
                 state=handle.state.value)  # fmt: skip
        if handle.name in self.removed:
            self.removed.discard(handle.name)
            self.run.forget(handle)
        elif book.respawn and not stopping:
            book.wanted = True
            book.tracker.reset()
            self.processes.spawn(handle)
        elif not commanded:
            self._apply_policy(handle, clean, now)
        elif handle.state is WorkerState.FAILED and self.mode is FailureMode.STOP_ALL:
            self.run.record_failure(handle, handle.last_error)  # e.g. output lost at the stop

    def _set_exit_state(
        self, handle: WorkerHandle, code: int, clean: bool, commanded: bool
    ) -> None:
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

    def _apply_policy(self, handle: WorkerHandle, clean: bool, now: float) -> None:
        if not clean and self.mode is FailureMode.STOP_ALL:
            self.run.record_failure(handle, handle.last_error)
            return
        decision = handle.restart.tracker.on_exit(now, failed=not clean)
        if decision.action is Action.RESTART:
            handle.state = WorkerState.BACKOFF
            handle.restart.restart_at = now + decision.delay_s
            log.warning("worker_backoff", pipeline=handle.name, delay_s=decision.delay_s,
                        error=handle.last_error)  # fmt: skip
        elif decision.action is Action.GIVE_UP:
            handle.state = WorkerState.FAILED
            log.error("worker_gave_up", pipeline=handle.name, error=handle.last_error)


def settled(handles: Iterable[WorkerHandle]) -> bool:
    """No worker runs and none will start on its own (no restart due, no respawn)."""
    return all(
        not h.alive and h.restart.restart_at is None and not h.restart.respawn for h in handles
    )


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
        if not any(
            pipeline_of(up) != pipeline_of(name) and pipeline_of(name) in targets.get(up, ())
            for up in stopping
        )
    ]
    if not ready and set(stopping) <= set(pending):
        return list(pending)
    return ready
