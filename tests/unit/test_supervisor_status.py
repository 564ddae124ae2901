"""Status assembly (porch/supervisor_status.py) and the typed parts of a pipeline's handle
(porch/worker_handle.py) in-process: fake processes (our own pid for psutil's figures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.health import COUNTERS, HealthReport
from porch.restart import RestartPolicy, RestartTracker
from porch.status import ProcessStatus
from porch.supervisor_status import UsageSampler, status_of, statuses
from porch.worker_handle import Announcement, LatestHealth, RestartBook, WorkerHandle

pytestmark = pytest.mark.timeout(30)
NO_SUCH_PID = 2**30  # above any pid_max


class FakePopen:
    def __init__(self, pid: int = NO_SUCH_PID) -> None:
        self.pid = pid
        self.stdout = self.stderr = None

    def poll(self) -> int | None:
        return None


def new_handle(name: str = "p") -> WorkerHandle:
    config = PipelineConfig(name=name, scripts=(), path=Path(f"/c/{name}.json"))
    return WorkerHandle(config, RestartBook(RestartTracker(RestartPolicy.ON_FAILURE)))


def test_counters_are_totals_over_instances_and_the_rate_is_per_report() -> None:
    health = LatestHealth()
    health.receive(HealthReport(iterations=10, dropped=1), 1.0)
    health.receive(HealthReport(iterations=40, dropped=1), 3.0)
    assert health.rate_per_s == 15.0
    health.new_instance()
    health.receive(HealthReport(iterations=5), 4.0)
    assert (health.total("iterations"), health.total("dropped")) == (45, 1)
    assert health.report.iterations == 5 and health.at_s == 4.0


def test_a_hello_reads_what_it_can_and_a_gone_worker_serves_nowhere() -> None:
    hello = Announcement.from_hello({"endpoint": "tcp://h:1", "endpoints": "nope",
                                     "instance": "7", "key": "k"})  # fmt: skip
    assert hello == Announcement("tcp://h:1", (), None, "k")
    assert hello.gone() == Announcement(None, (), None, "k")


def test_a_handle_is_alive_from_spawn_until_reaped_and_final_only_then() -> None:
    handle = new_handle()
    assert not handle.alive and handle.pid is None and handle.started_s == 0.0
    handle.started(FakePopen(), 5.0)  # type: ignore[arg-type]
    assert handle.alive and handle.pid == NO_SUCH_PID and handle.state is WorkerState.STARTING
    handle.state = WorkerState.FINISHED
    assert not handle.final
    handle.exited(0)
    assert not handle.alive and handle.final and handle.started_s == 5.0


def test_status_totals_counters_over_instances_and_reports_usage() -> None:
    handle = new_handle()

    own = FakePopen()
    own.pid = os.getpid()  # our own process: psutil can sample it
    handle.started(own, 100.0)  # type: ignore[arg-type]
    handle.health.receive(HealthReport(iterations=5, msgs_out=5, targets=(
        {"name": "q", "state": "connected", "since": None, "held": 2},)), 101.0)  # fmt: skip
    handle.last_error = "boom\nTraceback..."
    usage = UsageSampler()
    status = status_of(handle, 103.0, usage)
    expected = ("p", os.getpid(), "starting", 3.0)
    assert (status.name, status.process.pid, status.state, status.process.uptime_s) == expected
    assert set(status.counts) == set(COUNTERS) and status.count("msgs_out") == 5
    assert status.targets[0].held == 2 and status.error.text == "boom"
    assert status.process.rss_bytes is not None and status.process.rss_bytes > 0
    handle.exited(0)
    handle.state = WorkerState.FINISHED
    [after] = statuses([handle], 104.0, usage)
    assert (after.process, after.targets) == (ProcessStatus(), ())
    assert after.count("iterations") == 5 and not after.error.current
