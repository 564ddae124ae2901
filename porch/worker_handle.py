"""The supervisor's view of one pipeline, in typed parts.

A WorkerHandle holds the pipeline's config, state and last error, and four parts, each written
by one side of the supervisor:
- WorkerProcess: its current worker process, from spawn until it is reaped (spawner, reaper);
- RestartBook: what should happen to it next: wanted or stopped, a restart due (policy);
- LatestHealth: its current worker's last HealthReport and the totals of earlier instances
  (worker channel; read by status assembly, porchd's rates and `porch run`'s progress);
- Announcement: where its worker serves, as its hello said (worker channel; directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from porch import forkserver, localsock
from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.health import COUNTERS, EMPTY, HealthReport
from porch.restart import RestartTracker

Process = subprocess.Popen[bytes] | forkserver.ForkedProcess


@dataclass
class WorkerProcess:
    """One OS process of a pipeline's worker, from its spawn until it is reaped."""

    popen: Process
    started_s: float  # monotonic
    heartbeat_s: float  # its last report (any message on the worker channel)
    exited_s: float | None = None  # when its exit was first seen (its output may still drain)
    exit_code: int | None = None  # set once reaped
    kill_at: float | None = None  # SIGKILL due: a commanded stop's timeout ran out
    watchdog_fired: bool = False  # killed for a missing heartbeat

    @property
    def pid(self) -> int:
        """Its pid (its process group's id too)."""
        return self.popen.pid

    @property
    def reaped(self) -> bool:
        """Whether it has exited and been reaped (its output drained)."""
        return self.exit_code is not None


@dataclass
class RestartBook:
    """What should happen to a pipeline next: the restart policy's tracker and the commands."""

    tracker: RestartTracker
    wanted: bool = True  # False after a commanded stop: never restarted
    respawn: bool = False  # a commanded restart: start again as soon as it exits
    stop_pending: bool = False  # commanded to stop; signalled once its stopping sources exited
    restart_at: float | None = None  # a restart after backoff is due then (monotonic)


@dataclass
class LatestHealth:
    """The current worker's last HealthReport, when it came, and earlier instances' totals."""

    report: HealthReport = EMPTY  # EMPTY until one comes
    at_s: float | None = None  # when that report came (monotonic)
    rate_per_s: float = 0.0  # iterations per second between its last two reports
    totals: dict[str, int] = field(default_factory=dict)  # counters of earlier instances
    _message: Mapping[str, object] | None = field(default=None, repr=False, compare=False)
    _decoded: HealthReport = field(default=EMPTY, repr=False, compare=False)  # its report

    def take(self, message: Mapping[str, object], now: float) -> None:
        """A HEALTH message came at `now`: its report, decoded again only when the message
        is another object than the last one (WorkerChannel gives an unchanged report's
        message again, and nothing changes a message after it is decoded)."""
        if message is not self._message:
            self._message, self._decoded = message, HealthReport.decode(message)
        self.receive(self._decoded, now)

    def receive(self, report: HealthReport, now: float) -> None:
        """A report came at `now`: the iteration rate since the one before."""
        if self.at_s is not None:
            elapsed = now - self.at_s
            done = report.iterations - self.report.iterations
            if elapsed > 0:
                self.rate_per_s = max(0.0, done / elapsed)
        self.report, self.at_s = report, now

    def new_instance(self) -> None:
        """A new worker starts: the last one's counts become part of the totals."""
        for key in COUNTERS:
            self.totals[key] = self.totals.get(key, 0) + self.report.counter(key)
        self.report, self.at_s = EMPTY, None

    def total(self, name: str) -> int:
        """A counter over every worker instance the pipeline has had."""
        return self.totals.get(name, 0) + self.report.counter(name)


@dataclass(frozen=True)
class Announcement:
    """Where a pipeline's worker serves its input, as its hello said."""

    endpoint: str | None = None
    endpoints: tuple[str, ...] = ()  # one per data interface when there are several
    instance: int | None = None  # the worker's data-plane instance id (changes on restart)
    key_id: str | None = None  # the cluster key its input socket serves with
    local_endpoint: str | None = None  # ipc:// in our run folder: how our pipelines reach it

    @classmethod
    def from_hello(cls, message: Mapping[str, object]) -> Announcement:
        """Read a HELLO message; ill-typed fields read as unknown."""
        endpoint, endpoints = message.get("endpoint"), message.get("endpoints")
        instance, key_id = message.get("instance"), message.get("key")
        local = message.get("local")
        listed = endpoints if isinstance(endpoints, list) else []
        return cls(
            endpoint if isinstance(endpoint, str) else None,
            tuple(e for e in listed if isinstance(e, str)),
            instance if isinstance(instance, int) else None,
            key_id if isinstance(key_id, str) else None,
            local if isinstance(local, str) and localsock.is_local(local) else None,
        )

    def gone(self) -> Announcement:
        """No worker serves now (what else the hello said is kept for the directory)."""
        return replace(self, endpoint=None, local_endpoint=None)


@dataclass
class WorkerHandle:
    """The supervisor's view of one pipeline and its current worker process."""

    config: PipelineConfig
    restart: RestartBook
    state: WorkerState = WorkerState.STARTING
    process: WorkerProcess | None = None  # None until first spawned
    health: LatestHealth = field(default_factory=LatestHealth)
    announced: Announcement = Announcement()
    digest: str = ""  # fingerprint of the config its worker runs
    error_text: str = ""  # see last_error
    error_s: float | None = None  # when error_text was set (monotonic)

    @property
    def name(self) -> str:
        """Its process name: the pipeline's name, or a replica's NAME#TAG-K."""
        return self.config.name

    @property
    def pipeline(self) -> str:
        """The pipeline it runs (for a replica: the one it is a replica of)."""
        return self.config.pipeline

    @property
    def replica_of(self) -> str | None:
        """The pipeline it is a replica of; None for a pipeline that is not replicated."""
        return self.config.replica_of

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
        process = self.process  # read at every sweep of every worker: kept cheap
        return process is not None and process.exit_code is None

    @property
    def pid(self) -> int | None:
        """Its worker process's pid while one runs (not yet reaped)."""
        return self.process.pid if self.process is not None and self.alive else None

    @property
    def started_s(self) -> float:
        """When its current (or last) worker started (monotonic; 0.0 before the first)."""
        return self.process.started_s if self.process is not None else 0.0

    @property
    def exited_s(self) -> float | None:
        """When its last worker's exit was seen (None while it runs, or before the first)."""
        return self.process.exited_s if self.process is not None else None

    def started(self, popen: Process, now: float) -> None:
        """A new worker process of this pipeline started at `now`."""
        self.process = WorkerProcess(popen, started_s=now, heartbeat_s=now)
        self.state = WorkerState.STARTING
        self.restart.restart_at = None
        self.restart.respawn = self.restart.stop_pending = False
        self.announced = self.announced.gone()
        self.digest = fingerprint(self.config)
        self.health.new_instance()  # the last instance's counts become part of the totals

    def exited(self, code: int) -> None:
        """Its worker was reaped with `code`: it serves nowhere now."""
        assert self.process is not None
        self.process.exit_code = code
        self.announced = self.announced.gone()

    @property
    def final(self) -> bool:
        """Ended for good: exited, and nothing will start it again on its own."""
        book = self.restart
        return self.state.ended and not self.alive and book.restart_at is None and not book.respawn


def fingerprint(config: PipelineConfig) -> str:
    """A digest of a config and its scripts' bytes: reload restarts what changed."""
    digest = hashlib.sha256(repr(config).encode())
    for script in config.scripts:
        with contextlib.suppress(OSError):
            digest.update(script.read_bytes())
    return digest.hexdigest()
