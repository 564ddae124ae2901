"""What a worker knows of its sources (workers/sources.py), with a real FanIn and a fake clock:
who targets us, waiting for every source, down and finished sources from the directory."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from structlog.testing import capture_logs

from porch.directory import DirectoryEntry, decode_directory
from workers.inbox import Inbox, SourceState
from workers.scheduler import FanIn
from workers.signals import DRAIN_TIMEOUT_S, StopSignals
from workers.sources import SourceWatch, named_sources
from workers.targets import STALL_WARNING_S

pytestmark = pytest.mark.timeout(10)


def test_named_sources_are_the_entries_that_target_us() -> None:
    pipelines = decode_directory({"pipelines": {
        "a": {"state": "finished", "targets": ["sink", "other"]},
        "b": {"state": "running", "targets": ["other"]},
        "remote": {"state": "running"},  # remote entries carry no targets
        "odd": "not an entry",
        "c": {"state": "failed", "targets": ["sink"]},
    }}).pipelines  # fmt: skip

    assert named_sources(pipelines, "sink") == ["a", "c"]
    assert named_sources(pipelines, "nobody") == []


class Clock:
    def __init__(self) -> None:
        self.now_s = 50.0

    def __call__(self) -> float:
        return self.now_s


def watch(expected: int, clock: Clock) -> tuple[SourceWatch, SimpleNamespace, StopSignals]:
    inbox = SimpleNamespace(fanin=FanIn(expected), sources={})
    stop = StopSignals("sink", 8.5, clock=clock)
    return SourceWatch("sink", cast(Inbox, inbox), stop, clock=clock), inbox, stop


def directory(**states: str | tuple[str, bool]) -> dict[str, DirectoryEntry]:
    """Entries that name "sink" as their target: state, or (state, final)."""
    entries: dict[str, object] = {}
    for name, spec in states.items():
        state, final = spec if isinstance(spec, tuple) else (spec, False)
        entries[name] = {"state": state, "targets": ["sink"], "final": final}
    return decode_directory({"pipelines": entries}).pipelines


def test_waiting_for_sources_says_who_is_missing_every_stall_warning() -> None:
    clock = Clock()
    sources, inbox, _ = watch(2, clock)
    sources.note(directory(a="running", b="starting"))
    inbox.fanin.connect("a")

    def wait(timeout_ms: int) -> None:
        clock.now_s += timeout_ms / 1000
        if clock.now_s >= 50.0 + 2 * STALL_WARNING_S + 1:
            inbox.fanin.connect("b")

    with capture_logs() as logs:
        assert sources.wait_for_all(wait, 2)

    assert [e["event"] for e in logs] == ["waiting_for_sources", *["still_waiting_for_sources"] * 2]
    assert logs[1]["connected"] == ["a"] and logs[1]["not_connected"] == ["b"]


def test_a_stop_ends_the_wait_for_sources() -> None:
    clock = Clock()
    sources, _, stop = watch(1, clock)

    def wait(timeout_ms: int) -> None:
        stop.request("SIGTERM")

    assert not sources.wait_for_all(wait, 1)


def test_a_source_that_ended_before_the_others_came_ends_the_wait() -> None:
    clock = Clock()
    sources, inbox, _ = watch(2, clock)
    inbox.fanin.connect("a")
    inbox.fanin.end("a")  # nothing queued: no input set can form

    assert sources.wait_for_all(lambda ms: pytest.fail("waited"), 2)


def test_a_source_down_for_good_is_said_once_and_shown_until_it_returns() -> None:
    sources, inbox, _ = watch(2, Clock())
    inbox.fanin.connect("a")
    with capture_logs() as logs:
        sources.note(directory(a=("failed", True), b=("stopped", True)))
        sources.note(directory(a=("failed", True), b=("stopped", True)))

    assert [(e["event"], e["source"], e["log_level"]) for e in logs] == [
        ("source_failed", "a", "warning"),
        ("source_stopped", "b", "info"),
    ]
    assert sources.warnings() == [
        "source 'a' failed; waiting for it",
        "source 'b' stopped; waiting for it",
    ]
    sources.note(directory(a="backoff", b="running"))
    assert sources.warnings() == []


def test_a_stopping_worker_does_not_complain_of_its_sources() -> None:
    sources, inbox, stop = watch(1, Clock())
    inbox.fanin.connect("a")
    stop.request("supervisor")
    with capture_logs() as logs:
        sources.note(directory(a=("stopped", True)))
    assert sources.warnings() == [] and logs == []


def test_a_finished_source_ends_its_stream_once_its_messages_stop_arriving() -> None:
    clock = Clock()
    sources, inbox, _ = watch(1, clock)
    inbox.fanin.connect("a")
    inbox.sources["a"] = SourceState(careful=0, received=10)
    sources.note(directory(a="finished"))

    sources.end_overdue()  # its messages: counted now, the grace period starts
    clock.now_s += DRAIN_TIMEOUT_S - 0.1
    inbox.sources["a"].received = 12  # still arriving: the grace period starts again
    sources.end_overdue()
    clock.now_s += DRAIN_TIMEOUT_S - 0.1
    sources.end_overdue()
    assert not inbox.fanin.has_ended("a")

    clock.now_s += 0.1
    with capture_logs() as logs:
        sources.end_overdue()
    assert inbox.fanin.has_ended("a")
    assert [(e["event"], e["source"]) for e in logs] == [("source_finished_without_eos", "a")]


def test_a_source_that_finished_for_good_before_we_started_counts_as_connected() -> None:
    clock = Clock()
    sources, inbox, _ = watch(1, clock)
    with capture_logs() as logs:
        sources.note(directory(early="finished"))  # may come back
        assert "early" not in inbox.fanin
        sources.note(directory(early=("finished", True)))
        sources.end_overdue()
        clock.now_s += DRAIN_TIMEOUT_S
        sources.end_overdue()

    assert inbox.fanin.all_connected() and inbox.fanin.exhausted()
    assert [e["event"] for e in logs] == ["source_already_finished", "source_ended_earlier"]


def test_an_eos_that_came_is_not_ended_twice() -> None:
    clock = Clock()
    sources, inbox, _ = watch(1, clock)
    inbox.fanin.connect("a")
    inbox.sources["a"] = SourceState(careful=0)
    inbox.fanin.end("a")  # its EOS came
    sources.note(directory(a="finished"))
    with capture_logs() as logs:
        sources.end_overdue()
        clock.now_s += DRAIN_TIMEOUT_S
        sources.end_overdue()
    assert logs == []


def test_more_finished_sources_than_expected_are_left_to_validation() -> None:
    sources, inbox, _ = watch(1, Clock())
    inbox.fanin.connect("a")
    sources.note(directory(extra=("finished", True)))
    assert inbox.fanin.sources == ["a"]
