"""A worker's stop (workers/signals.py): one path for signals, the supervisor's STOP and the
supervisor's death; deadlines from the stop budget; a second signal exits at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from workers.signals import LIVE_DRAIN_S, PARENT_DEATH_SIGNAL, StopSignals

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """Stands in for os._exit and for silencing stdout/stderr."""

    def __init__(self) -> None:
        self.exits: list[int] = []
        self.silenced = 0

    def exit_now(self, code: int) -> None:
        self.exits.append(code)

    def silence(self) -> None:
        self.silenced += 1


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def stops(recorder: Recorder, budget_s: float = 8.5, now_s: float = 100.0) -> StopSignals:
    return StopSignals(
        "mid",
        budget_s,
        clock=lambda: now_s,
        exit_now=recorder.exit_now,
        orphaned=recorder.silence,
    )


def test_a_stop_drains_for_a_while_and_must_be_done_within_the_budget(recorder: Recorder) -> None:
    stop = stops(recorder)
    assert not stop.requested
    with capture_logs() as logs:
        stop.request("supervisor")
        stop.request("SIGTERM")  # a second request changes nothing

    assert stop.requested
    assert stop.stop_deadline == 108.5
    assert stop.drain_deadline == 100.0 + LIVE_DRAIN_S
    assert [(e["event"], e["reason"]) for e in logs] == [("stop_requested", "supervisor")]


def test_the_drain_never_outlasts_a_short_stop_budget(recorder: Recorder) -> None:
    stop = stops(recorder, budget_s=0.5)
    stop.request("supervisor")
    assert stop.drain_deadline == stop.stop_deadline == 100.5


def test_the_first_signal_stops_gracefully_the_second_exits_now(recorder: Recorder) -> None:
    stop = stops(recorder)
    with capture_logs() as logs:
        stop.on_signal(signal.SIGTERM, None)
        stop.say()
    assert stop.requested and recorder.exits == []
    assert logs[0]["reason"] == "SIGTERM"

    stop.on_signal(signal.SIGINT, None)
    assert recorder.exits == [130]


def test_the_supervisor_dying_silences_output_once_and_stops(recorder: Recorder) -> None:
    stop = stops(recorder)
    with capture_logs() as logs:
        stop.on_parent_death(PARENT_DEATH_SIGNAL, None)
        stop.on_parent_death(PARENT_DEATH_SIGNAL, None)  # Linux may send it again
        stop.say()

    assert stop.orphaned and stop.requested
    assert recorder.silenced == 1
    assert [e["reason"] for e in logs] == ["supervisor_gone"]
    assert recorder.exits == []  # not a second Ctrl+C


def test_a_signal_handler_only_sets_state_and_the_loop_says_it(recorder: Recorder) -> None:
    """A handler runs between any two bytecodes of the main thread, also inside a log call
    that holds the logger's lock: logging in the handler deadlocked the worker (seen: a
    `porch run` source stuck for its whole --stop-timeout, then killed). The handler logs
    nothing; the loop's housekeeping says the stop, once."""
    stop = stops(recorder)
    with capture_logs() as logs:
        stop.on_signal(signal.SIGTERM, None)
        stop.on_parent_death(PARENT_DEATH_SIGNAL, None)
        assert stop.requested and logs == []
        stop.say()
        stop.say()
    assert [(e["event"], e["reason"]) for e in logs] == [("stop_requested", "SIGTERM")]


def test_a_parent_that_is_not_ours_any_more_counts_as_dead(recorder: Recorder) -> None:
    stop = stops(recorder)
    stop.check_parent(None)  # porch.testing runs: no parent to watch
    stop.check_parent(os.getppid())
    assert not stop.requested

    stop.check_parent(os.getppid() + 1_000_000)  # reparented: the supervisor is gone
    assert stop.orphaned and stop.requested and recorder.silenced == 1


@pytest.fixture
def restored_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, PARENT_DEATH_SIGNAL)}
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.mark.usefixtures("restored_signals")
def test_a_real_sigterm_requests_the_stop_and_wakes_the_loop(recorder: Recorder) -> None:
    stop = stops(recorder)
    stop.install()

    os.kill(os.getpid(), signal.SIGTERM)  # handled before os.kill returns (main thread)

    assert stop.requested
    assert stop.wake_r.recv(16) == bytes([signal.SIGTERM])
    stop.wake_r.close()
    stop.wake_w.close()
