"""The health report (porch/health.py): one encoding, read back the same, counters named once."""

from __future__ import annotations

import dataclasses
import json
from typing import cast

import pytest

from porch import health
from porch.control import MessageType, decode, encode
from porch.health import COUNTERS, EMPTY, HEALTH_VERSION, HealthReport, ReportEncoder
from workers.inbox import InboxCounters
from workers.worker import Counters

pytestmark = pytest.mark.timeout(10)

REPORT = HealthReport(
    iterations=7,
    msgs_in=5,
    msgs_out=6,
    unpaired=1,
    queue_depth=3,
    state="running",
    warning="target 'b' not found yet",
    targets=({"name": "b", "state": "not found", "since": None, "held": 2},),
    step_seconds={"bounds": [0.1], "counts": [4, 1], "sum": 0.3},
)


def test_a_report_survives_the_control_channel() -> None:
    kind, message = decode(encode(MessageType.HEALTH, **REPORT.encode()))
    assert kind is MessageType.HEALTH
    assert message["version"] == HEALTH_VERSION
    assert HealthReport.decode(message) == REPORT


def test_what_is_missing_or_ill_typed_reads_as_the_default() -> None:
    message = json.loads(
        '{"type": "health", "iterations": "many", "msgs_in": true, "msgs_out": 4,'
        ' "warning": 3, "targets": [1, {"name": "x"}], "step_seconds": []}'
    )
    report = HealthReport.decode(message)
    assert (report.iterations, report.msgs_in, report.msgs_out) == (0, 0, 4)
    assert report.warning == "" and report.step_seconds is None
    assert report.targets == ({"name": "x"},)
    assert HealthReport.decode({}) == EMPTY


def test_counters_by_name() -> None:
    assert REPORT.counter("iterations") == 7
    assert REPORT.counters()["unpaired"] == 1 and REPORT.counters()["queue_depth"] == 3
    assert set(REPORT.counters()) == {*COUNTERS, "queue_depth"}


def test_every_count_a_worker_keeps_is_a_field_of_the_report() -> None:
    # the worker builds its report from these: a counter added there must be added here
    fields = {f.name for f in dataclasses.fields(HealthReport)}
    assert {f.name for f in dataclasses.fields(Counters)} <= fields
    assert {f.name for f in dataclasses.fields(InboxCounters)} <= fields
    assert set(COUNTERS) <= fields


def test_the_report_encoder_writes_what_the_control_channel_encodes() -> None:
    """ReportEncoder's text is control.encode's, byte for byte, report after report: counts
    that change, a new state, warning, targets or histogram bounds, and what it does not
    format itself (no histogram, a count that is not an int, a sum that is not finite)."""
    # (the fields in the order it writes them: else every report goes the general way)
    assert health._LAYOUT
    encoder = ReportEncoder({"type": MessageType.HEALTH.value})
    steps = {"bounds": [1e-05, 0.001, 1.0], "counts": [0, 2, 1, 0], "sum": 0.25}
    reports = [
        dataclasses.replace(REPORT, step_seconds=steps),
        dataclasses.replace(REPORT, iterations=8, dropped=2**40, step_seconds=steps),
        dataclasses.replace(REPORT, warning='é "quoted" \\ \n', state="stopping"),
        dataclasses.replace(
            REPORT, targets=({"name": "b", "state": "connected", "since": 1.5, "held": 0},)
        ),
        dataclasses.replace(REPORT, step_seconds={**steps, "bounds": [0.5, 2.0]}),
        dataclasses.replace(REPORT, step_seconds={**steps, "sum": 7}),
        dataclasses.replace(REPORT, step_seconds={**steps, "sum": float("inf")}),
        dataclasses.replace(REPORT, step_seconds=None),
        dataclasses.replace(REPORT, replayed=True),
        EMPTY,
        REPORT,
    ]
    parts = ReportEncoder({"type": MessageType.HEALTH.value})  # a heartbeat's way
    for report in reports:
        expected = encode(MessageType.HEALTH, **report.encode()).decode()
        assert encoder.encode(report) == expected
        if report.step_seconds is None:
            continue  # (a heartbeat always has its histogram)
        ints = tuple(report.counters()[name] for name in health.INT_FIELDS)
        rest = (report.state, report.warning, report.targets)
        steps = report.step_seconds
        bounds, counts = cast(list[float], steps["bounds"]), cast(list[int], steps["counts"])
        histogram = (bounds, tuple(counts), cast(float, steps["sum"]))
        assert parts.encode_parts(ints, rest, *histogram) == expected
        assert parts.encode_parts(ints, rest, *histogram) == expected  # (unchanged)
        assert HealthReport.decode(decode(expected.encode())[1]) == HealthReport.decode(
            json.loads(encoder.encode(report))
        )
