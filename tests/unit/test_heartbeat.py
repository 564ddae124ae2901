"""The worker's heartbeat (workers/heartbeat.py), from fake parts: every counter of the health
report is filled from where it is counted, and the step() histogram buckets durations."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest

from porch.control import MessageType, decode, encode
from porch.health import COUNTERS, INT_FIELDS, HealthReport
from porch.security import LinkSecurity
from workers.deadletter import DeadLetters
from workers.heartbeat import STEP_BOUNDS_S, Counters, Heartbeat, StepHistogram
from workers.inbox import Inbox, InboxCounters
from workers.links import OutputLink

pytestmark = pytest.mark.timeout(10)


@dataclass
class FakeLink:
    target: str
    dropped: int = 0
    replayed: int = 0
    handshakes_failed: int = 0
    reconnects: int = 0
    gone: bool = False
    withdrawn_since: float | None = None
    socket: Any = None
    down: bool = False
    handshaken: bool = False

    def data_held(self) -> int:
        return 5


def parts(counts: int) -> Heartbeat:
    """A heartbeat over fake parts whose every count is `counts` (links: twice, summed)."""
    n = counts
    outputs = [FakeLink(t, n, n, n, n) for t in ("a", "b")]
    inbox = SimpleNamespace(
        counters=InboxCounters(
            msgs_in=n, duplicates=n, bad_frames=n, unpaired=n, reorder_window_overflow=n
        ),
        fanin=SimpleNamespace(depth=lambda: n),
        link=SimpleNamespace(handshakes_failed=n),
    )
    return Heartbeat(
        Counters(iterations=n, msgs_out=n, skipped=n),
        cast(list[OutputLink], outputs),
        cast(Inbox, inbox),
        cast(DeadLetters, SimpleNamespace(count=n)),
        cast(LinkSecurity, SimpleNamespace(denied=n)),
    )


def test_every_counter_of_the_report_is_filled_from_where_it_is_counted() -> None:
    report = parts(1).report("running", "")

    # a counter added to HealthReport but not to the heartbeat would read 0 here
    assert all(report.counter(name) > 0 for name in COUNTERS), report.counters()
    assert report.queue_depth == 1
    assert report.dropped == 2 and report.reconnects == 2  # summed over the links
    assert report.handshakes_rejected == 2  # ZAP denials and refused server keys


def test_each_count_goes_in_its_own_place() -> None:
    """counts() gives the report's ints in INT_FIELDS order (the heartbeat sends them so, no
    report built): each from where it is counted, none in another's place."""
    inbox = SimpleNamespace(
        counters=InboxCounters(
            msgs_in=4, duplicates=5, bad_frames=6, unpaired=7, reorder_window_overflow=8
        ),
        fanin=SimpleNamespace(depth=lambda: 9),
        link=SimpleNamespace(handshakes_failed=10),
    )
    beat = Heartbeat(
        Counters(iterations=1, msgs_out=2, skipped=3),
        cast(list[OutputLink], [FakeLink("a", 13, 14, 15, 16), FakeLink("b", 100, 200, 300, 400)]),
        cast(Inbox, inbox),
        cast(DeadLetters, SimpleNamespace(count=11)),
        cast(LinkSecurity, SimpleNamespace(denied=12)),
    )
    expected = {"iterations": 1, "msgs_in": 4, "msgs_out": 2, "dropped": 113, "bad_frames": 6,
                "duplicates": 5, "dead_letters": 11, "skipped": 3, "replayed": 214,
                "handshakes_rejected": 22, "handshakes_failed": 315, "reconnects": 416,
                "unpaired": 7, "reorder_window_overflow": 8, "queue_depth": 9}  # fmt: skip
    assert set(expected) == set(INT_FIELDS)
    assert beat.report("running", "").counters() == expected
    assert beat.counts() == tuple(expected[name] for name in INT_FIELDS)
    source = Heartbeat(Counters(iterations=1, msgs_out=2, skipped=3), [], None,
                       cast(DeadLetters, SimpleNamespace(count=11)), None)  # fmt: skip
    assert source.counts() == (1, 0, 2, 0, 0, 0, 11, 3, 0, 0, 0, 0, 0, 0, 0)
    counted = dict(zip(INT_FIELDS, source.counts(), strict=True))
    assert source.report("running", "").counters() == counted


def test_a_source_reports_without_an_inbox_or_a_cluster_key() -> None:
    beat = Heartbeat(Counters(iterations=3), [], None, cast(DeadLetters, SimpleNamespace(count=0)),
                     None)  # fmt: skip
    report = beat.report("finished", "")
    assert report.iterations == 3 and report.msgs_in == 0 and report.queue_depth == 0
    assert report.targets == ()


def test_the_report_survives_the_control_channel_with_its_targets_and_histogram() -> None:
    beat = parts(1)
    beat.steps.add(0.00005)
    beat.steps.add(2.0)
    beat.steps.add(99.0)
    report = beat.report("running", "target 'x' not found")

    kind, message = decode(encode(MessageType.HEALTH, **report.encode()))
    back = HealthReport.decode(message)

    assert kind is MessageType.HEALTH
    assert back.warning == "target 'x' not found" and back.state == "running"
    assert [dict(t) for t in back.targets] == [
        {"name": "a", "state": "not found", "since": None, "held": 5},
        {"name": "b", "state": "not found", "since": None, "held": 5},
    ]
    assert back.step_seconds == {
        "bounds": STEP_BOUNDS_S,
        "counts": [0, 1, 0, 0, 0, 0, 1, 1],
        "sum": pytest.approx(101.00005),
    }


def test_a_duration_on_a_bound_counts_in_that_bucket() -> None:
    steps = StepHistogram()
    for seconds in (0.0, 0.00001, 0.1, 10.0, 10.5):
        steps.add(seconds)
    assert steps.counts == [2, 0, 0, 0, 1, 0, 1, 1]
    assert len(steps.counts) == len(STEP_BOUNDS_S) + 1  # the last bucket is +Inf


def test_what_the_loop_and_the_inbox_count_are_counters_of_the_report() -> None:
    # counted under the names porch/health.py gives them (status totals them as COUNTERS)
    counted = {f.name for f in dataclasses.fields(Counters)}
    counted |= {f.name for f in dataclasses.fields(InboxCounters)}
    assert counted <= set(COUNTERS)
