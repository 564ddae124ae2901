"""Prometheus metrics of porchd, read from the status snapshot its loop publishes.

The collector never touches the supervisor: it turns the last snapshot (the `status` result
that `porchctl status --json` prints, plus each pipeline's step-duration histogram when its
worker reports one) into metric families at scrape time, so a scrape from the HTTP thread
needs no lock.

A pipeline's series are labelled `pipeline="NAME"`. A replicated pipeline (config `replicas`)
has a series per replica process instead, labelled `pipeline="NAME", replica="K"` (its index
on this host: porch/names.py), so `sum by (pipeline)` gives its totals without counting them
twice, and `porch_pipeline_replicas` says how many replica processes it has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from porch.control import WorkerState
from porch.health import COUNTER_INFO
from porch.names import is_replica, pipeline_of, replica_index
from porch.status import PipelineStatus, Snapshot, StatusReport, remote_pipeline_count

# (metric name without porch_ and _total, status field, help): counters per pipeline, the
# health counters (porch/health.py, one line each there) and porchd's own two.
PIPELINE_COUNTERS = (
    *((info.metric, name, info.help) for name, info in COUNTER_INFO.items()),
    ("restarts", "restarts", "Times porchd restarted the pipeline (restart policy)."),
    ("log_lines_dropped", "log_lines_dropped",
     "Output lines porchd could not write to the pipeline's log file (a full disk)."),
)  # fmt: skip

# (metric name without porch_, status field, help): gauges per pipeline.
PIPELINE_GAUGES = (
    ("queue_depth", "queue_depth", "Messages waiting in the pipeline's input queues."),
    ("iterations_per_second", "rate_per_s", "Iterations per second over the last heartbeats."),
    ("messages_in_per_second", "msgs_in_per_s", "Messages received per second (last ~3 s)."),
    ("messages_out_per_second", "msgs_out_per_s", "Messages sent per second (last ~3 s)."),
    ("cpu_percent", "cpu_percent", "CPU use of the worker process, percent of one core."),
    ("rss_bytes", "rss_bytes", "Resident memory of the worker process."),
    ("uptime_seconds", "uptime_s", "Seconds since the current worker process started."),
)

# (metric name without porch_ and _total, discovery status field, help).
DISCOVERY_COUNTERS = (
    ("beacons_sent", "beacons_sent", "Discovery beacons sent."),
    ("beacons_received", "beacons_received", "Discovery beacons accepted from other hosts."),
    ("beacons_rejected", "beacons_rejected",
     "Discovery beacons refused (malformed, unsigned, bad signature, not from loopback)."),
    ("beacon_send_errors", "send_errors", "Beacons that could not be sent."),
)  # fmt: skip

STATES = tuple(state.value for state in WorkerState)
# Label names of the per-pipeline families. add_metric pairs them with the values it is given,
# so a pipeline that is not replicated gives only its name and its series keep their labels.
PIPELINE_LABELS = ["pipeline", "replica"]
# the snapshot porchd publishes, or its JSON form {"status", "graph", "steps"}
Readable = Snapshot | Mapping[str, object]


class SnapshotCollector(Collector):
    """Metric families of the latest snapshot that `read()` returns."""

    def __init__(self, read: Callable[[], Readable | None]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        """Every Porch metric of the current snapshot (nothing before the first one)."""
        found = self.read()
        if found is None:
            return
        snapshot = found if isinstance(found, Snapshot) else Snapshot.decode(found)
        status = snapshot.status
        yield from pipeline_metrics(status.pipelines)
        yield state_metric(status.pipelines)
        yield from replicas_metric(status.pipelines)
        yield from step_metrics(snapshot.steps)
        yield from daemon_metrics(status)


def pipeline_metrics(pipelines: Sequence[PipelineStatus]) -> Iterator[Metric]:
    """The per-pipeline counters and gauges (per replica for a replicated pipeline); a gauge
    without a value (no process) is left out."""
    series = [(labels(p.name), p) for p in processes(pipelines)]
    for name, key, text in PIPELINE_COUNTERS:
        counter = CounterMetricFamily(f"porch_{name}", text, labels=PIPELINE_LABELS)
        for label, p in series:
            counter.add_metric(label, float(p.number(key) or 0))
        yield counter
    for name, key, text in PIPELINE_GAUGES:
        gauge = GaugeMetricFamily(f"porch_{name}", text, labels=PIPELINE_LABELS)
        for label, p in series:
            value = p.number(key)
            if value is not None:
                gauge.add_metric(label, float(value))
        yield gauge


def processes(pipelines: Sequence[PipelineStatus]) -> list[PipelineStatus]:
    """Each pipeline, or each replica of a replicated one: what has a series of its own."""
    return [r for p in pipelines for r in p.replicas or (p,)]


def labels(process_name: str) -> list[str]:
    """The label values of a process: [pipeline], or [pipeline, replica index] for a replica
    (its whole name when the name has no index)."""
    if not is_replica(process_name):
        return [process_name]
    index = replica_index(process_name)
    return [pipeline_of(process_name), process_name if index is None else str(index)]


def state_metric(pipelines: Sequence[PipelineStatus]) -> Metric:
    """porch_pipeline_state: 1 for each pipeline's (replica's) current state, 0 for the others."""
    gauge = GaugeMetricFamily(
        "porch_pipeline_state", "Current state of each pipeline (1) among all states (0).",
        labels=["pipeline", "state", "replica"],
    )  # fmt: skip
    for p in processes(pipelines):
        name, *replica = labels(p.name)
        for state in STATES:
            gauge.add_metric([name, state, *replica], 1.0 if p.state == state else 0.0)
    return gauge


def replicas_metric(pipelines: Sequence[PipelineStatus]) -> Iterator[Metric]:
    """porch_pipeline_replicas: the replica processes of each replicated pipeline."""
    gauge = GaugeMetricFamily(
        "porch_pipeline_replicas",
        "Replica processes of a replicated pipeline (config `replicas`) on this host.",
        labels=["pipeline"],
    )
    for p in pipelines:
        if p.replicas:
            gauge.add_metric([p.name], float(len(p.replicas)))
    if gauge.samples:
        yield gauge


def step_metrics(steps: Mapping[str, Mapping[str, object]]) -> Iterator[Metric]:
    """porch_step_duration_seconds from workers that report it (see `step_histogram`)."""
    family = HistogramMetricFamily(
        "porch_step_duration_seconds",
        "Duration of one iteration (all of the pipeline's step() calls).",
        labels=PIPELINE_LABELS,
    )
    for name, report in steps.items():
        histogram = step_histogram(report)
        if histogram is not None:
            buckets, total_s = histogram
            family.add_metric(labels(name), buckets, total_s)
    if family.samples:
        yield family


def step_histogram(report: Mapping[str, object]) -> tuple[list[tuple[str, float]], float] | None:
    """A worker's `step_seconds` health field as Prometheus buckets, or None when malformed.

    The field is `{"bounds": [upper bounds in s, ascending], "counts": [per bucket, one more
    than bounds for +Inf], "sum": total seconds}` (non-cumulative counts, cheap to keep).
    """
    bounds, counts = report.get("bounds"), report.get("counts")
    total_s = _number(report.get("sum"))
    if not (isinstance(bounds, list) and isinstance(counts, list)) or total_s is None:
        return None
    if len(counts) != len(bounds) + 1:
        return None
    numbers = [_number(v) for v in (*bounds, *counts)]
    if any(v is None for v in numbers):
        return None
    values = [v for v in numbers if v is not None]
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*values[: len(bounds)], math.inf], values[len(bounds) :], strict=True):
        running += count
        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
    return buckets, total_s


def daemon_metrics(status: StatusReport) -> Iterator[Metric]:
    """porchd itself: uptime, discovery counters, remote pipelines it knows."""
    uptime = status.daemon.uptime_s
    if uptime is not None:
        yield GaugeMetricFamily("porch_daemon_uptime_seconds", "Seconds since porchd started.",
                                value=uptime)  # fmt: skip
    discovery = status.daemon.discovery or {}
    for name, key, text in DISCOVERY_COUNTERS:
        yield CounterMetricFamily(f"porch_{name}", text, value=_number(discovery.get(key)) or 0.0)
    reasons = discovery.get("rejected")
    if isinstance(reasons, Mapping):
        by_reason = CounterMetricFamily(
            "porch_beacon_rejections", "Discovery beacons refused, by reason.", labels=["reason"]
        )
        for reason, count in reasons.items():
            by_reason.add_metric([str(reason)], _number(count) or 0.0)
        yield by_reason
    yield GaugeMetricFamily(
        "porch_remote_pipelines", "Pipelines other hosts announce (discovery table).",
        value=float(remote_pipeline_count(status.remote)),
    )  # fmt: skip


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def registry(read: Callable[[], Readable | None]) -> CollectorRegistry:
    """A registry with the snapshot's metrics plus porchd's own process and Python metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(read))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (version 0.0.4)."""
    return generate_latest(reg)
