"""Restart and watchdog policy (porch/supervision.py) in-process: fake processes, explicit
times; what the policy asks for (spawn, kill, SIGTERM, a failed run) is recorded."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.restart import RestartPolicy
from porch.supervision import FailureMode, SupervisionPolicy, ready_to_stop, settled
from porch.worker_handle import WorkerHandle

pytestmark = pytest.mark.timeout(30)


class FakePopen:
    """What the policy sees of a process: a pid, an exit code once it has one."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = self.stderr = None

    def poll(self) -> int | None:
        return self.returncode


class Acts:
    """Records the acts; spawn starts a fake process at the time `now` says."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.now = 0.0
        self.removed: list[str] = []

    def spawn(self, handle: WorkerHandle) -> None:
        self.done.append(("spawn", handle.name))
        handle.started(FakePopen(1000 + len(self.done)), self.now)  # type: ignore[arg-type]

    def kill(self, handle: WorkerHandle) -> None:
        self.done.append(("kill", handle.name))

    def terminate(self, handle: WorkerHandle) -> None:
        self.done.append(("terminate", handle.name))

    def record_failure(self, handle: WorkerHandle, reason: str) -> None:
        self.done.append(("failed", handle.name))

    def forget(self, handle: WorkerHandle) -> None:
        self.removed.append(handle.name)


def setup(
    mode: FailureMode = FailureMode.RESTART,
    restart: str = "on-failure",
    targets: tuple[str, ...] = (),
    restart_backoff_s: float = 0.5,
) -> tuple[SupervisionPolicy, Acts, WorkerHandle]:
    acts = Acts()
    policy = SupervisionPolicy(mode, stop_timeout_s=10.0, processes=acts, run=acts)
    config = PipelineConfig(name="p", scripts=(), restart=RestartPolicy(restart),
                            target_pipeline_names=targets, heartbeat_timeout_s=5.0,
                            restart_backoff_s=restart_backoff_s,
                            path=Path("/c/p.json"))  # fmt: skip
    handle = WorkerHandle(config, policy.new_book(config))
    acts.spawn(handle)
    acts.done.clear()
    return policy, acts, handle


def exit_with(policy: SupervisionPolicy, handle: WorkerHandle, code: int, now: float) -> None:
    handle.exited(code)
    policy.after_exit(handle, code, now, stopping=False)


def test_a_crash_backs_off_then_restarts_when_the_delay_has_passed() -> None:
    policy, acts, handle = setup()
    handle.state = WorkerState.RUNNING
    exit_with(policy, handle, 3, now=100.0)
    assert handle.state is WorkerState.BACKOFF and handle.last_error == "exited with code 3"
    assert handle.restart.restart_at == 100.5 and not handle.final
    policy.check_timers(handle, 100.4, stopping=False)
    assert acts.done == []
    acts.now = 100.5
    policy.check_timers(handle, 100.5, stopping=False)
    assert acts.done == [("spawn", "p")] and handle.state is WorkerState.STARTING


def test_restart_backoff_s_sets_the_first_wait_and_each_failure_doubles_it() -> None:
    policy, acts, handle = setup(restart_backoff_s=0.05)
    for n, now in enumerate((10.0, 20.0, 30.0)):
        handle.state = WorkerState.RUNNING
        exit_with(policy, handle, 1, now=now)
        assert handle.restart.restart_at == pytest.approx(now + 0.05 * 2**n)
        policy.check_timers(handle, now + 1.0, stopping=False)
        assert acts.done[-1] == ("spawn", "p")


def test_porch_run_never_restarts_a_failure_it_records_it() -> None:
    policy, acts, handle = setup(FailureMode.STOP_ALL)
    assert handle.restart.tracker.policy is RestartPolicy.NEVER
    handle.state = WorkerState.RUNNING
    exit_with(policy, handle, -signal.SIGSEGV, now=1.0)
    assert acts.done == [("failed", "p")] and handle.state is WorkerState.FAILED
    assert handle.last_error == "killed by SIGSEGV"


def test_a_clean_exit_without_ending_its_stream_is_said_loudly() -> None:
    policy, _, handle = setup(restart="never")
    handle.state = WorkerState.RUNNING
    with capture_logs() as logs:
        exit_with(policy, handle, 0, now=1.0)
    assert handle.state is WorkerState.FINISHED and "os._exit" in handle.last_error
    assert any(e["event"] == "worker_exited_unannounced" for e in logs)
    assert handle.final


def test_a_commanded_stop_is_never_restarted() -> None:
    policy, acts, handle = setup(restart="always")
    handle.state = WorkerState.RUNNING
    policy.stop(handle)
    assert handle.restart.stop_pending and not handle.restart.wanted
    policy.signal_stops([handle], now=5.0)
    assert acts.done == [("terminate", "p")] and handle.state is WorkerState.STOPPING
    assert handle.process is not None and handle.process.kill_at == 15.0
    exit_with(policy, handle, -signal.SIGTERM, now=6.0)
    assert handle.state is WorkerState.STOPPED and handle.restart.restart_at is None
    assert acts.done == [("terminate", "p")]


class Untouchable(list[WorkerHandle]):
    def __iter__(self) -> Any:
        raise AssertionError("looked at every worker")


def test_without_a_stop_pending_the_loop_turn_looks_at_no_worker() -> None:
    policy, acts, handle = setup()
    handle.state = WorkerState.RUNNING
    policy.signal_stops(Untouchable([handle]), now=0.0)  # (each report wakes the loop)
    policy.stop(handle)
    policy.signal_stops([handle], now=0.0)
    assert acts.done == [("terminate", "p")]
    policy.signal_stops([handle], now=0.0)  # (none left: it says so)
    policy.signal_stops(Untouchable([handle]), now=0.0)


def test_a_stop_that_times_out_is_killed_and_says_why() -> None:
    policy, acts, handle = setup()
    handle.state = WorkerState.RUNNING
    policy.stop(handle)
    policy.signal_stops([handle], now=0.0)
    policy.check_timers(handle, 10.0, stopping=False)
    assert acts.done == [("terminate", "p")]
    policy.check_timers(handle, 10.1, stopping=False)
    assert acts.done[-1] == ("kill", "p") and "did not stop within 10 s" in handle.last_error


def test_a_missing_heartbeat_kills_the_worker_once() -> None:
    policy, acts, handle = setup()
    handle.state = WorkerState.RUNNING
    policy.check_timers(handle, 5.0, stopping=False)
    assert acts.done == []
    policy.check_timers(handle, 6.0, stopping=False)
    policy.check_timers(handle, 7.0, stopping=False)
    assert acts.done == [("kill", "p")] and handle.last_error.startswith("no heartbeat for 6 s")
    exit_with(policy, handle, 0, now=7.5)  # exit 0 after the watchdog fired is a failure
    assert handle.state is WorkerState.BACKOFF


def test_a_commanded_restart_respawns_at_the_exit_with_a_clean_slate() -> None:
    policy, acts, handle = setup()
    handle.state = WorkerState.RUNNING
    policy.restart(handle, stopping=False)
    assert handle.restart.respawn
    exit_with(policy, handle, -signal.SIGTERM, now=1.0)
    assert acts.done[-1] == ("spawn", "p") and handle.restart.wanted


def test_a_removed_pipeline_is_forgotten_at_its_exit() -> None:
    policy, acts, handle = setup()
    policy.removed.add("p")
    policy.stop(handle)
    exit_with(policy, handle, 0, now=1.0)
    assert acts.removed == ["p"] and not policy.removed


def test_settled_waits_for_a_due_restart() -> None:
    policy, _, handle = setup()
    assert not settled([handle])
    exit_with(policy, handle, 1, now=0.0)
    assert not settled([handle])  # a restart is due
    policy.stop(handle)
    assert settled([handle]) and handle.state is WorkerState.STOPPED


def test_stop_order_sources_before_their_targets() -> None:
    targets = {"a": ("b",), "b": ("c",), "c": ()}
    assert ready_to_stop(["a", "b", "c"], ["a", "b", "c"], targets) == ["a"]
    assert ready_to_stop(["x", "y"], ["x", "y"], {"x": ("y",), "y": ("x",)}) == ["x", "y"]
