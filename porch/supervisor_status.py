"""Status assembly: a pipeline's PipelineStatus from the supervisor's view of it.

The figures come from the pipeline's handle (its process, restart bookkeeping and its current
worker's last HealthReport) and from psutil (CPU and RSS of its worker process). Counters are
totals over every worker instance the pipeline has had (porch/health.py COUNTERS). A handle is
one worker process: the replicas of a replicated pipeline (NAME#TAG-K) are one handle each,
and `statuses` shows them as one pipeline with its replicas under it (porch/status.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import psutil

from porch.health import COUNTERS
from porch.status import ErrorStatus, PipelineStatus, ProcessStatus, TargetStatus, grouped

if TYPE_CHECKING:
    from porch.worker_handle import WorkerHandle


class UsageSampler:
    """CPU percent and RSS of worker processes. One psutil.Process per pid, kept between
    samples: cpu_percent measures the CPU used since the previous sample of the same process."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def sample(self, pid: int | None) -> tuple[float | None, int | None]:
        """(cpu_percent, rss_bytes) of `pid`; (None, None) without a process or access."""
        if pid is None:
            return None, None
        try:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
                process.cpu_percent(None)  # the first call only starts the measurement
            with process.oneshot():
                return process.cpu_percent(None), process.memory_info().rss
        except psutil.Error:
            return None, None

    def keep_only(self, pids: Iterable[int]) -> None:
        """Forget the processes not among `pids` (exited workers)."""
        alive = set(pids)
        for pid in [p for p in self._processes if p not in alive]:
            del self._processes[pid]


def status_of(handle: WorkerHandle, now: float, usage: UsageSampler) -> PipelineStatus:
    """What `porchctl status` shows of one worker process (a pipeline, or one replica of one)
    at `now` (monotonic s)."""
    pid = handle.pid
    cpu, rss = usage.sample(pid)
    health = handle.health.report
    alive = handle.alive
    error = handle.last_error
    return PipelineStatus(
        name=handle.name,
        state=handle.state.value,
        process=ProcessStatus(pid, round(now - handle.started_s, 1) if alive else None, cpu, rss),
        counts={key: handle.health.total(key) for key in COUNTERS},
        queue_depth=health.queue_depth,
        targets=tuple(TargetStatus.decode(t) for t in health.targets) if alive else (),
        rate_per_s=round(handle.health.rate_per_s, 1) if alive else 0.0,
        restarts=handle.restart.tracker.restarts,
        error=ErrorStatus(
            error.splitlines()[0] if error else "",
            None if handle.error_s is None else round(now - handle.error_s, 1),
            handle.error_current,
        ),
        warning=health.warning if alive else "",
        restart_policy=handle.restart.tracker.policy.value,
        config=str(handle.config.path),
    )


def statuses(
    handles: Iterable[WorkerHandle], now: float, usage: UsageSampler
) -> list[PipelineStatus]:
    """Every pipeline's status, in the handles' order, a replicated pipeline's replicas under
    it; forgets the usage of exited workers."""
    processes = [status_of(h, now, usage) for h in handles]
    usage.keep_only(p.process.pid for p in processes if p.process.pid is not None)
    return grouped(processes)
