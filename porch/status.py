"""A pipeline's status and porchd's `status` reply: one typed definition, encoded and decoded
here once, versioned.

Status assembly (porch/supervisor_status.py) builds a PipelineStatus from the worker's last
HealthReport and the supervisor's view of its process; porchd adds its log and rate figures and
sends a StatusReport. porchctl's tables (porch/porchctl_format.py), `porchctl top`, /metrics,
/api/status and the dashboard read these fields. The counters are porch/health.py's COUNTERS:
a new counter shows everywhere from its one line there. The JSON field names are
docs/supervisor-contract.md's PIPELINE; a field a porchd of another version did not send
decodes as unknown (None), shown as "-".

A replicated pipeline (config key `replicas`) is one PipelineStatus too: its figures are the
totals of its replica processes and its state is derived from theirs (`replicated`), and
`replicas` holds one PipelineStatus per process (named NAME#TAG-K, porch/names.py). A pipeline
that is not replicated has no `replicas` and reads exactly as before; so a reader that does not
know `replicas` still sees each pipeline once, with its totals (STATUS_VERSION stays 1: the
change only adds a field).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from porch.control import WorkerState
from porch.health import COUNTERS, LinkState
from porch.names import is_replica, pipeline_of, replica_index, replica_tag

STATUS_VERSION = 1  # sent as the reply's `status_version`; a reply without it reads the same

# A replicated pipeline's state is the first of these that one of its replicas is in: running
# while any replica runs; a failed replica before finished ones (it needs a look); a state this
# version does not know after all of them.
STATE_PRECEDENCE = tuple(
    s.value
    for s in (WorkerState.RUNNING, WorkerState.STARTING, WorkerState.WAITING_FOR_SOURCES,
              WorkerState.BACKOFF, WorkerState.STOPPING, WorkerState.FAILED,
              WorkerState.STOPPED, WorkerState.FINISHED)
)  # fmt: skip


@dataclass(frozen=True)
class TargetStatus:
    """One output link of a running worker (workers/worker.py link_status)."""

    name: str
    state: str  # a porch.health.LinkState value (text: a newer worker may know more states)
    since: float | None = None  # unix s it became unreachable
    held: int = 0  # messages it holds unacknowledged

    def encode(self) -> dict[str, object]:
        """The JSON object of `status`'s `targets`."""
        return {"name": self.name, "state": self.state, "since": self.since, "held": self.held}

    @classmethod
    def decode(cls, data: Mapping[str, object]) -> TargetStatus:
        """Read one link report; ill-typed fields read as unknown."""
        return cls(_text(data.get("name"), "?"), _text(data.get("state"), "?"),
                   _real(data.get("since")), _int(data.get("held")) or 0)  # fmt: skip


@dataclass(frozen=True)
class ProcessStatus:
    """A pipeline's worker process while one runs (every field None without one)."""

    pid: int | None = None
    uptime_s: float | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None


@dataclass(frozen=True)
class ErrorStatus:
    """A pipeline's most recent error: JSON `last_error`, `last_error_age_s`, `error_current`."""

    text: str = ""  # its first line, "" when none
    age_s: float | None = None  # seconds since it was set
    current: bool = True  # it keeps the pipeline down (else past); unsaid reads as current


@dataclass(frozen=True)
class DaemonFigures:
    """What porchd adds to a pipeline's status (None from `porch run` or an older porchd)."""

    log_lines_dropped: int | None = None  # output lines it could not write to the log file
    msgs_in_per_s: float | None = None
    msgs_out_per_s: float | None = None


@dataclass(frozen=True)
class PipelineStatus:
    """One pipeline in porchd's `status` reply (docs/supervisor-contract.md PIPELINE)."""

    name: str
    state: str  # a WorkerState value (kept as text: a newer porchd may know more states)
    process: ProcessStatus = ProcessStatus()
    counts: Mapping[str, int] = field(default_factory=dict)  # COUNTERS (totals) it reported
    queue_depth: int | None = None
    targets: tuple[TargetStatus, ...] = ()
    rate_per_s: float | None = None
    restarts: int | None = None
    error: ErrorStatus = ErrorStatus()
    warning: str = ""
    restart_policy: str = ""
    config: str = ""
    daemon: DaemonFigures = DaemonFigures()
    # a replicated pipeline's processes (NAME#TAG-K), each with its own figures; the fields
    # above are then their totals (see `replicated`); () for a pipeline that is not replicated
    replicas: tuple[PipelineStatus, ...] = ()

    @classmethod
    def replicated(cls, name: str, replicas: Sequence[PipelineStatus]) -> PipelineStatus:
        """Pipeline `name` run as `replicas`: their totals and a state derived from theirs."""
        ordered = tuple(sorted(replicas, key=_replica_order))
        alive = [r.process for r in ordered if r.process.pid is not None]
        first = ordered[0] if ordered else cls(name, "?")
        return cls(
            name=name,
            state=derived_state(r.state for r in ordered),
            process=ProcessStatus(None, _most(p.uptime_s for p in alive),
                                  _sum(p.cpu_percent for p in alive),
                                  _sum_int(p.rss_bytes for p in alive)),
            counts={k: sum(r.counts.get(k, 0) for r in ordered)
                    for k in COUNTERS if any(k in r.counts for r in ordered)},
            queue_depth=_sum_int(r.queue_depth for r in ordered),
            targets=merged_targets(t for r in ordered for t in r.targets),
            rate_per_s=_sum(r.rate_per_s for r in ordered),
            restarts=_sum_int(r.restarts for r in ordered),
            error=_replica_error(ordered),
            warning=next((r.warning for r in ordered if r.warning), ""),
            restart_policy=first.restart_policy,
            config=first.config,
            daemon=DaemonFigures(_sum_int(r.daemon.log_lines_dropped for r in ordered),
                                 _sum(r.daemon.msgs_in_per_s for r in ordered),
                                 _sum(r.daemon.msgs_out_per_s for r in ordered)),
            replicas=ordered,
        )  # fmt: skip

    def each_process(self, change: Callable[[PipelineStatus], PipelineStatus]) -> PipelineStatus:
        """This status with `change` applied to each of its processes: to itself when it is not
        replicated, else to each replica, with the totals taken again."""
        if not self.replicas:
            return change(self)
        return PipelineStatus.replicated(self.name, [change(r) for r in self.replicas])

    def count(self, name: str) -> int | None:
        """One counter of COUNTERS (None: not reported)."""
        return self.counts.get(name)

    def number(self, name: str) -> float | None:
        """A numeric field or counter by its JSON name (None: unknown); metrics and top read
        their columns through this."""
        if name in COUNTERS:
            return self.count(name)
        read = NUMBERS.get(name)
        return read(self) if read is not None else None

    def with_daemon_figures(self, figures: DaemonFigures) -> PipelineStatus:
        """This status with porchd's log and rate figures."""
        return replace(self, daemon=figures)

    def encode(self) -> dict[str, object]:
        """The JSON object (field order as porchctl status --json has always printed it)."""
        process, error, daemon = self.process, self.error, self.daemon
        data: dict[str, object] = {
            "name": self.name,
            "pid": process.pid,
            "state": self.state,
            "uptime_s": process.uptime_s,
            **{key: self.counts.get(key, 0) for key in COUNTERS},
            "queue_depth": self.queue_depth,
            "targets": [t.encode() for t in self.targets],
            "rate_per_s": self.rate_per_s,
            "cpu_percent": process.cpu_percent,
            "rss_bytes": process.rss_bytes,
            "restarts": self.restarts,
            "last_error": error.text,
            "last_error_age_s": error.age_s,
            "error_current": error.current,
            "warning": self.warning,
            "restart_policy": self.restart_policy,
            "config": self.config,
        }
        if self.replicas:
            data["replicas"] = [r.encode() for r in self.replicas]
        figures = {"log_lines_dropped": daemon.log_lines_dropped,
                   "msgs_in_per_s": daemon.msgs_in_per_s,
                   "msgs_out_per_s": daemon.msgs_out_per_s}  # fmt: skip
        data.update({k: v for k, v in figures.items() if v is not None})
        return data

    @classmethod
    def decode(cls, data: Mapping[str, object]) -> PipelineStatus:
        """Read one pipeline of a `status` reply."""
        counts = {k: v for k in COUNTERS if (v := _int(data.get(k))) is not None}
        current = data.get("error_current")
        return cls(
            name=_text(data.get("name"), "?"),
            state=_text(data.get("state"), "?"),
            process=ProcessStatus(_int(data.get("pid")), _real(data.get("uptime_s")),
                                  _real(data.get("cpu_percent")), _int(data.get("rss_bytes"))),
            counts=counts,
            queue_depth=_int(data.get("queue_depth")),
            targets=tuple(TargetStatus.decode(t) for t in _objects(data.get("targets"))),
            rate_per_s=_real(data.get("rate_per_s")),
            restarts=_int(data.get("restarts")),
            error=ErrorStatus(_text(data.get("last_error")), _real(data.get("last_error_age_s")),
                              current if isinstance(current, bool) else True),
            warning=_text(data.get("warning")),
            restart_policy=_text(data.get("restart_policy")),
            config=_text(data.get("config")),
            daemon=DaemonFigures(_int(data.get("log_lines_dropped")),
                                 _real(data.get("msgs_in_per_s")),
                                 _real(data.get("msgs_out_per_s"))),
            replicas=tuple(replace(cls.decode(r), replicas=())
                           for r in _objects(data.get("replicas"))),
        )  # fmt: skip


def grouped(processes: Iterable[PipelineStatus]) -> list[PipelineStatus]:
    """One status per pipeline from one per process: the replicas of a pipeline (NAME#TAG-K)
    become one replicated PipelineStatus where its first replica was; the others stay as they
    are."""
    groups: dict[str, list[PipelineStatus]] = {}
    for p in processes:
        groups.setdefault(pipeline_of(p.name), []).append(p)
    result = []
    for name, members in groups.items():
        plain = [p for p in members if p.name == name]
        replicas = [p for p in members if p.name != name]
        result += plain  # a plain pipeline beside replicas of its name (a conflict) stays apart
        if replicas:
            result.append(PipelineStatus.replicated(name, replicas))
    return result


def remote_pipeline_count(remote: Iterable[RemoteStatus]) -> int:
    """How many pipelines the remote rows are: each plain one, and once each pipeline whose
    replicas (NAME#TAG-K) other hosts run."""
    rows = list(remote)
    replicated = {pipeline_of(r.name) for r in rows if is_replica(r.name)}
    return sum(not is_replica(r.name) for r in rows) + len(replicated)


def derived_state(states: Iterable[str]) -> str:
    """A replicated pipeline's state from its replicas' (STATE_PRECEDENCE); "?" with none."""
    found = list(states)
    known = [s for s in STATE_PRECEDENCE if s in found]
    return known[0] if known else (found[0] if found else "?")


def merged_targets(targets: Iterable[TargetStatus]) -> tuple[TargetStatus, ...]:
    """One target per name over several processes' links: the messages they hold summed, the
    first state that is trouble (else the first), the earliest `since`."""
    by_name: dict[str, list[TargetStatus]] = {}
    for t in targets:
        by_name.setdefault(t.name, []).append(t)
    merged = []
    for name, links in by_name.items():
        bad = [t for t in links if t.state not in _FINE_LINKS] or links
        since = [t.since for t in links if t.since is not None]
        merged.append(TargetStatus(name, bad[0].state, min(since, default=None),
                                   sum(t.held for t in links)))  # fmt: skip
    return tuple(merged)


_FINE_LINKS = frozenset((LinkState.CONNECTED, LinkState.CONNECTING, LinkState.FINISHED))


def _replica_order(p: PipelineStatus) -> tuple[str, int, str]:
    index = replica_index(p.name)
    return (replica_tag(p.name) or "", -1 if index is None else index, p.name)


def _replica_error(replicas: Sequence[PipelineStatus]) -> ErrorStatus:
    """The error to show for the whole pipeline: one that keeps a replica down, else the most
    recent; named by the replica it came from."""
    errors = [r for r in replicas if r.error.text]
    if not errors:
        return ErrorStatus()
    newest = min(errors, key=lambda r: (not r.error.current, r.error.age_s or 0.0))
    error = newest.error
    return ErrorStatus(f"{newest.name}: {error.text}", error.age_s, error.current)


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 1) if known else None  # the figures summed have one decimal


def _sum_int(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _most(values: Iterable[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)


# the numeric fields by JSON name (PipelineStatus.number; counters are in `counts`)
NUMBERS: Mapping[str, Callable[[PipelineStatus], float | None]] = {
    "pid": lambda p: p.process.pid,
    "uptime_s": lambda p: p.process.uptime_s,
    "cpu_percent": lambda p: p.process.cpu_percent,
    "rss_bytes": lambda p: p.process.rss_bytes,
    "queue_depth": lambda p: p.queue_depth,
    "rate_per_s": lambda p: p.rate_per_s,
    "restarts": lambda p: p.restarts,
    "last_error_age_s": lambda p: p.error.age_s,
    "log_lines_dropped": lambda p: p.daemon.log_lines_dropped,
    "msgs_in_per_s": lambda p: p.daemon.msgs_in_per_s,
    "msgs_out_per_s": lambda p: p.daemon.msgs_out_per_s,
}


@dataclass(frozen=True)
class RemoteStatus:
    """A pipeline another host announces (discovery), as `status` lists it."""

    name: str
    host: str = "?"
    hostname: str = ""
    daemon_id: str = ""
    origin: str = ""
    endpoint: str | None = None
    state: str = "?"
    last_seen_s: float | None = None
    used: bool = False  # this host's workers are given its endpoint
    withdrawn_since: float | None = None  # its host fell silent (state "withdrawn")

    def encode(self) -> dict[str, object]:
        """The JSON object of `status`'s `remote`."""
        return {
            "name": self.name,
            "host": self.host,
            "hostname": self.hostname,
            "daemon_id": self.daemon_id,
            "origin": self.origin,
            "endpoint": self.endpoint,
            "state": self.state,
            "last_seen_s": self.last_seen_s,
            "used": self.used,
            "withdrawn_since": self.withdrawn_since,
        }

    @classmethod
    def decode(cls, data: Mapping[str, object]) -> RemoteStatus:
        """Read one remote pipeline of a `status` reply."""
        endpoint = data.get("endpoint")
        return cls(
            name=_text(data.get("name"), "?"),
            host=_text(data.get("host"), "?"),
            hostname=_text(data.get("hostname")),
            daemon_id=_text(data.get("daemon_id")),
            origin=_text(data.get("origin")),
            endpoint=endpoint if isinstance(endpoint, str) else None,
            state=_text(data.get("state"), "?"),
            last_seen_s=_real(data.get("last_seen_s")),
            used=data.get("used") is True,
            withdrawn_since=_real(data.get("withdrawn_since")),
        )


@dataclass(frozen=True)
class DaemonStatus:
    """porchd itself in the `status` reply."""

    pid: int | None = None
    control: str = ""
    state_dir: str = ""
    uptime_s: float | None = None
    version: str = ""
    # the broker's settings and counters (porch/broker.py Broker.status), when discovery runs
    discovery: Mapping[str, object] | None = None
    # where the dashboard is and its token file (porch/web.py), when porchd serves HTTP
    http: Mapping[str, object] | None = None

    def encode(self) -> dict[str, object]:
        """The JSON object of `status`'s `daemon`."""
        data: dict[str, object] = {
            "pid": self.pid,
            "control": self.control,
            "state_dir": self.state_dir,
            "uptime_s": self.uptime_s,
            "version": self.version,
        }
        if self.discovery is not None:
            data["discovery"] = dict(self.discovery)
        if self.http is not None:
            data["http"] = dict(self.http)
        return data

    @classmethod
    def decode(cls, data: Mapping[str, object]) -> DaemonStatus:
        """Read the `daemon` part of a `status` reply."""
        discovery, http = data.get("discovery"), data.get("http")
        return cls(
            pid=_int(data.get("pid")),
            control=_text(data.get("control")),
            state_dir=_text(data.get("state_dir")),
            uptime_s=_real(data.get("uptime_s")),
            version=_text(data.get("version")),
            discovery=_object(discovery),
            http=_object(http),
        )


@dataclass(frozen=True)
class StatusReport:
    """porchd's `status` reply: itself, its pipelines, the remote pipelines it knows."""

    daemon: DaemonStatus = DaemonStatus()
    pipelines: tuple[PipelineStatus, ...] = ()
    remote: tuple[RemoteStatus, ...] = ()

    def encode(self) -> dict[str, object]:
        """The reply's JSON object (docs/supervisor-contract.md)."""
        return {
            "status_version": STATUS_VERSION,
            "daemon": self.daemon.encode(),
            "pipelines": [p.encode() for p in self.pipelines],
            "remote": [r.encode() for r in self.remote],
        }

    @classmethod
    def decode(cls, data: object) -> StatusReport:
        """Read a `status` reply (a malformed part reads as empty)."""
        report = _object(data) or {}
        return cls(
            daemon=DaemonStatus.decode(_object(report.get("daemon")) or {}),
            pipelines=tuple(PipelineStatus.decode(p) for p in _objects(report.get("pipelines"))),
            remote=tuple(RemoteStatus.decode(r) for r in _objects(report.get("remote"))),
        )


@dataclass(frozen=True)
class Snapshot:
    """What porchd's loop publishes for its HTTP thread every SNAPSHOT_INTERVAL_S (replaced
    whole, never mutated): /api/status, /api/graph and /metrics read it."""

    status: StatusReport
    graph: Mapping[str, object]  # `porchctl graph --format json` (porch/graph.py to_dict)
    # each pipeline's step-duration histogram (HealthReport.step_seconds), when it reports one
    steps: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    @classmethod
    def decode(cls, data: Mapping[str, object]) -> Snapshot:
        """A snapshot from its JSON form `{"status", "graph", "steps"}`."""
        steps = _object(data.get("steps")) or {}
        return cls(
            StatusReport.decode(data.get("status")),
            _object(data.get("graph")) or {},
            {name: o for name, step in steps.items() if (o := _object(step)) is not None},
        )


def read(result: StatusReport | Mapping[str, object]) -> StatusReport:
    """A StatusReport, decoding a `status` reply as porchd sent it (JSON) when needed."""
    return result if isinstance(result, StatusReport) else StatusReport.decode(result)


def _object(value: object) -> Mapping[str, object] | None:
    if not isinstance(value, Mapping):
        return None
    return {str(k): v for k, v in value.items()}


def _objects(value: object) -> list[Mapping[str, object]]:
    items: Sequence[object] = value if isinstance(value, list | tuple) else ()
    return [o for item in items if (o := _object(item)) is not None]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _real(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _text(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default
