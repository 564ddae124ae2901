"""The typed pipeline status (porch/status.py): one encoding, read back the same; counters come
from porch/health.py, so a new counter shows in status, porchctl and /metrics at once."""

from __future__ import annotations

import json

import pytest

from porch import metrics
from porch.health import COUNTER_INFO, COUNTERS
from porch.porchctl_format import error_text, format_status
from porch.status import (
    STATUS_VERSION,
    DaemonFigures,
    DaemonStatus,
    ErrorStatus,
    PipelineStatus,
    ProcessStatus,
    RemoteStatus,
    Snapshot,
    StatusReport,
    TargetStatus,
)

pytestmark = pytest.mark.timeout(30)

PIPELINE = PipelineStatus(
    name="p",
    state="running",
    process=ProcessStatus(pid=7, uptime_s=1.5, cpu_percent=None, rss_bytes=1024),
    counts={name: i for i, name in enumerate(COUNTERS)},
    queue_depth=2,
    targets=(TargetStatus("q", "unreachable", 1000.0, 3),),
    rate_per_s=2.5,
    restarts=1,
    error=ErrorStatus("boom", age_s=5.0, current=False),
    warning="w",
    restart_policy="on-failure",
    config="/p.json",
    daemon=DaemonFigures(log_lines_dropped=0, msgs_in_per_s=1.0, msgs_out_per_s=2.0),
)
REPORT = StatusReport(
    DaemonStatus(
        pid=1,
        control="/c",
        state_dir="/s",
        uptime_s=3.0,
        version="0.2.0",
        discovery={"beacons_rejected": 2},
    ),
    (PIPELINE,),
    (RemoteStatus("far", host="10.0.0.2", state="withdrawn", withdrawn_since=9.0),),
)


def test_a_report_reads_back_the_same_through_json() -> None:
    data = json.loads(json.dumps(REPORT.encode()))
    assert data["status_version"] == STATUS_VERSION
    assert StatusReport.decode(data) == REPORT


def test_the_json_has_the_contracts_field_names_and_every_counter() -> None:
    fields = REPORT.encode()["pipelines"][0]  # type: ignore[index]
    assert set(COUNTERS) <= set(fields)
    assert {"name", "pid", "state", "uptime_s", "queue_depth", "targets", "rate_per_s",
            "cpu_percent", "rss_bytes", "restarts", "last_error", "last_error_age_s",
            "error_current", "warning", "restart_policy", "config", "log_lines_dropped",
            "msgs_in_per_s", "msgs_out_per_s"} <= set(fields)  # fmt: skip
    assert fields["targets"] == [{"name": "q", "state": "unreachable", "since": 1000.0, "held": 3}]


def test_missing_and_ill_typed_fields_read_as_unknown() -> None:
    p = PipelineStatus.decode({"name": "p", "pid": "7", "iterations": True, "targets": [1]})
    assert (p.process.pid, p.count("iterations"), p.targets, p.state) == (None, None, (), "?")
    assert p.error.current  # an error without the flag is the current one
    assert StatusReport.decode("not an object") == StatusReport()


def test_porchctl_and_top_read_the_typed_report_or_its_json_alike() -> None:
    assert format_status(REPORT) == format_status(REPORT.encode())
    assert error_text(PIPELINE) == "5s ago: boom"


def test_every_health_counter_is_a_metric() -> None:
    names = {key: name for name, key, _ in metrics.PIPELINE_COUNTERS}
    assert set(COUNTERS) <= set(names)
    assert names["msgs_in"] == COUNTER_INFO["msgs_in"].metric == "messages_in"
    families = list(metrics.pipeline_metrics([PIPELINE]))
    by_name = {f.name: f.samples[0].value for f in families if f.samples}
    assert by_name["porch_unpaired"] == COUNTERS.index("unpaired")
    assert by_name["porch_rss_bytes"] == 1024 and by_name["porch_messages_in_per_second"] == 1.0
    assert "porch_cpu_percent" not in by_name  # unknown: no sample


def test_a_snapshot_reads_from_its_json_form() -> None:
    snapshot = Snapshot(REPORT, {"nodes": []}, {"p": {"bounds": [], "counts": [1], "sum": 0}})
    data = {"status": REPORT.encode(), "graph": {"nodes": []}, "steps": dict(snapshot.steps)}
    assert Snapshot.decode(json.loads(json.dumps(data))) == snapshot
