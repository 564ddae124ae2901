"""Prometheus metrics of porchd, read from the status snapshot its loop publishes.

The collector never touches the supervisor: it turns the last snapshot (the `status` result
that `porchctl status --json` prints, plus each pipeline's step-duration histogram when its
worker reports one) into metric families at scrape time, so a scrape from the HTTP thread
needs no lock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

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

Snapshot = Mapping[str, Any]

# (metric name without porch_ and _total, status field, help): counters per pipeline.
PIPELINE_COUNTERS = (
    ("messages_in", "msgs_in", "Messages received on the pipeline's input (after dedup)."),
    ("messages_out", "msgs_out", "Messages the pipeline sent (one per iteration's output)."),
    ("iterations", "iterations", "Iterations (step() chains) run."),
    ("restarts", "restarts", "Times porchd restarted the pipeline (restart policy)."),
    ("dropped", "dropped", "Messages dropped by a full output link (overflow drop_oldest)."),
    ("dead_letters", "dead_letters", "Messages written to the dead-letter folder."),
    ("duplicates", "duplicates", "Duplicate messages the inbox discarded (replays, origin ids)."),
    ("bad_frames", "bad_frames", "Undecodable frames dropped on the data port."),
    ("skipped", "skipped", "Iterations skipped (porch.SKIP or on_error skip)."),
    ("replayed", "replayed", "Messages replayed to a restarted target."),
    ("handshakes_rejected", "handshakes_rejected",
     "Data-link handshakes refused (wrong or no cluster key)."),
    ("handshakes_failed", "handshakes_failed",
     "Output links' handshakes a target refused (it serves with a key this host lacks)."),
    ("reconnects", "reconnects",
     "Output links reopened (a dead connection, or a target rediscovered after a cut)."),
    ("log_lines_dropped", "log_lines_dropped",
     "Output lines porchd could not write to the pipeline's log file (a full disk)."),
    ("unpaired", "unpaired", "Join values dropped: their partner was filtered out upstream."),
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


class SnapshotCollector(Collector):
    """Metric families of the latest snapshot that `read()` returns."""

    def __init__(self, read: Callable[[], Snapshot | None]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        """Every Porch metric of the current snapshot (nothing before the first one)."""
        snapshot = self.read()
        if snapshot is None:
            return
        status = snapshot.get("status") or {}
        pipelines: Sequence[Mapping[str, Any]] = status.get("pipelines") or []
        yield from pipeline_metrics(pipelines)
        yield state_metric(pipelines)
        yield from step_metrics(snapshot.get("steps") or {})
        daemon = status.get("daemon") or {}
        yield from daemon_metrics(daemon, status.get("remote") or [])


def pipeline_metrics(pipelines: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    """The per-pipeline counters and gauges; a gauge without a value (no process) is left out."""
    for name, key, text in PIPELINE_COUNTERS:
        counter = CounterMetricFamily(f"porch_{name}", text, labels=["pipeline"])
        for p in pipelines:
            counter.add_metric([str(p["name"])], _number(p.get(key)) or 0.0)
        yield counter
    for name, key, text in PIPELINE_GAUGES:
        gauge = GaugeMetricFamily(f"porch_{name}", text, labels=["pipeline"])
        for p in pipelines:
            value = _number(p.get(key))
            if value is not None:
                gauge.add_metric([str(p["name"])], value)
        yield gauge


def state_metric(pipelines: Sequence[Mapping[str, Any]]) -> Metric:
    """porch_pipeline_state: 1 for each pipeline's current state, 0 for the others."""
    gauge = GaugeMetricFamily(
        "porch_pipeline_state", "Current state of each pipeline (1) among all states (0).",
        labels=["pipeline", "state"],
    )  # fmt: skip
    for p in pipelines:
        for state in STATES:
            gauge.add_metric([str(p["name"]), state], 1.0 if p.get("state") == state else 0.0)
    return gauge


def step_metrics(steps: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """porch_step_duration_seconds from workers that report it (see `step_histogram`)."""
    family = HistogramMetricFamily(
        "porch_step_duration_seconds",
        "Duration of one iteration (all of the pipeline's step() calls).",
        labels=["pipeline"],
    )
    for name, report in steps.items():
        histogram = step_histogram(report)
        if histogram is not None:
            buckets, total_s = histogram
            family.add_metric([name], buckets, total_s)
    if family.samples:
        yield family


def step_histogram(report: Mapping[str, Any]) -> tuple[list[tuple[str, float]], float] | None:
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
    if not all(_number(v) is not None for v in (*bounds, *counts)):
        return None
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*map(float, bounds), math.inf], counts, strict=True):
        running += float(count)
        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
    return buckets, total_s


def daemon_metrics(daemon: Mapping[str, Any], remote: Sequence[Any]) -> Iterator[Metric]:
    """porchd itself: uptime, discovery counters, remote pipelines it knows."""
    uptime = _number(daemon.get("uptime_s"))
    if uptime is not None:
        yield GaugeMetricFamily("porch_daemon_uptime_seconds", "Seconds since porchd started.",
                                value=uptime)  # fmt: skip
    discovery = daemon.get("discovery") or {}
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
        value=float(len(remote)),
    )  # fmt: skip


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def registry(read: Callable[[], Snapshot | None]) -> CollectorRegistry:
    """A registry with the snapshot's metrics plus porchd's own process and Python metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(read))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (version 0.0.4)."""
    return generate_latest(reg)
