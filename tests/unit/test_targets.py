"""What a worker says of its targets (workers/targets.py), with fake links: each link's state
for status, the missing-target warning (and its closest known name), unreachable targets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from porch.health import LinkState
from workers.links import LinkSettings, OutputLink
from workers.targets import (
    MISSING_TARGET_S,
    STALL_WARNING_S,
    TargetWatch,
    link_state,
    link_status,
    missing_target,
)

pytestmark = pytest.mark.timeout(10)


@dataclass
class FakeLink:
    target: str
    held: int = 0
    socket: Any = None
    gone: bool = False
    down: bool = False
    handshaken: bool = False
    handshakes_failed: int = 0
    withdrawn_since: float | None = None
    settings: LinkSettings = field(default_factory=lambda: LinkSettings(limit=4))

    def data_held(self) -> int:
        return self.held

    def full(self) -> bool:
        return self.held >= self.settings.limit


def links(*fakes: FakeLink) -> list[OutputLink]:
    return cast(list[OutputLink], list(fakes))


def test_a_misspelled_target_gets_the_closest_known_name_and_what_is_held() -> None:
    text, close = missing_target("snik", 20, 20, {"sink": "running", "source": "running"})

    assert close == "sink"
    assert text == "target 'snik' not found; 20 held (queue_limit 20); did you mean 'sink'?"


def test_a_target_far_from_every_known_name_gets_no_suggestion() -> None:
    text, close = missing_target("zzz", 0, 1000, {"sink": "running"})

    assert close == ""
    assert text == "target 'zzz' not found; 0 held (queue_limit 1000)"


def test_a_listed_target_without_an_endpoint_is_not_a_misspelling_of_itself() -> None:
    text, close = missing_target("sink", 5, 5, {"sink": "stopped", "sinks": "running"})

    assert close == ""
    assert text == "target 'sink' is stopped, no endpoint yet; 5 held (queue_limit 5)"


@pytest.mark.parametrize(
    ("link", "state"),
    [
        (FakeLink("t", gone=True, withdrawn_since=5.0), LinkState.FINISHED),
        (FakeLink("t", socket=object(), withdrawn_since=5.0), LinkState.UNREACHABLE),
        (FakeLink("t", down=True), LinkState.NOT_FOUND),
        (FakeLink("t", socket=object(), down=True, handshaken=True), LinkState.DOWN),
        (FakeLink("t", socket=object(), handshaken=True), LinkState.CONNECTED),
        (FakeLink("t", socket=object(), handshakes_failed=1), LinkState.HANDSHAKE_FAILING),
        (FakeLink("t", socket=object()), LinkState.CONNECTING),
    ],
)
def test_each_link_shows_one_state(link: FakeLink, state: LinkState) -> None:
    assert link_state(cast(OutputLink, link)) is state


def test_a_link_status_carries_its_state_word_since_when_and_what_it_holds() -> None:
    status = link_status(cast(OutputLink, FakeLink("sink", held=3, withdrawn_since=1.5)))
    assert status == {"name": "sink", "state": "unreachable", "since": 1.5, "held": 3}
    assert status["state"].blocked_reason == "target unreachable (withdrawn by discovery)"


def test_status_shows_apart_only_what_nothing_else_shows() -> None:
    assert {s for s in LinkState if s.trouble} == {"unreachable", "handshake failing"}
    assert all(s.blocked_reason for s in LinkState)


def test_a_missing_target_is_said_after_a_few_seconds_then_every_stall_warning() -> None:
    watch = TargetWatch("src", links(FakeLink("snik", held=2), FakeLink("ok", socket=1)), 100.0)
    known = {"sink": "running", "ok": "running"}
    with capture_logs() as logs:
        watch.check(100.0 + MISSING_TARGET_S - 0.1, known)  # too early to tell
        assert watch.warnings() == []
        watch.check(100.0 + MISSING_TARGET_S, known)
        watch.check(100.0 + MISSING_TARGET_S + 1.0, known)  # said already
        watch.check(100.0 + MISSING_TARGET_S + STALL_WARNING_S, known)

    assert [(e["event"], e["target"], e["closest"], e["held"]) for e in logs] == [
        ("target_missing", "snik", "sink", 2),
        ("target_missing", "snik", "sink", 2),
    ]
    assert watch.warnings() == [
        "target 'snik' not found; 2 held (queue_limit 4); did you mean 'sink'?"
    ]


def test_a_listed_target_slow_to_start_is_worth_a_word_only_once_we_block() -> None:
    slow = FakeLink("sink", held=1)
    watch = TargetWatch("src", links(slow), 0.0)
    with capture_logs() as logs:
        watch.check(10.0, {"sink": "starting"})
        assert logs == []
        slow.held = 4  # full: the producer blocks
        watch.check(11.0, {"sink": "starting"})
    assert [e["state"] for e in logs] == ["starting"]

    slow.socket = object()  # it came up: the warning goes
    watch.check(12.0, {"sink": "running"})
    assert watch.warnings() == []


def test_an_unreachable_target_is_in_the_warning_with_since_when() -> None:
    cut = FakeLink("far", socket=object(), held=7, withdrawn_since=3600.0)
    done = FakeLink("done", gone=True, withdrawn_since=1.0)
    watch = TargetWatch("src", links(cut, done), 0.0, localtime=time.gmtime)

    assert watch.warnings() == ["target 'far' unreachable since 01:00:00; 7 held"]
