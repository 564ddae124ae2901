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
    TargetDirectory,
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


@dataclass
class RoutedLink:
    """A fake output link that records what the directory made of it."""

    target: str
    held: int = 0
    socket: Any = None
    gone: bool = False
    down: bool = False
    restarting: bool = False
    withdrawn_since: float | None = None
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    acks_later: int = 0  # acknowledged by an ack read after a poll

    def data_held(self) -> int:
        return self.held

    def connect(self, endpoint: str, instance: int | None, key: str | None, force: bool) -> None:
        self.calls.append(("connect", endpoint, instance, key, force))
        self.socket = self
        self.withdrawn_since = None

    def withdraw(self, since: float) -> None:
        self.calls.append(("withdraw", since))
        self.withdrawn_since = since

    def read_acks(self, decode: Any) -> None:
        self.calls.append(("read_acks",))

    def poll(self, timeout_ms: int) -> int:  # the socket's: the final ack is on its way
        self.held -= self.acks_later
        return 1

    def retire(self) -> None:
        self.calls.append(("retire", self.held))
        self.gone = True


def routed(*fakes: RoutedLink) -> TargetDirectory:
    return TargetDirectory("src", cast(list[OutputLink], list(fakes)))


def read(targets: TargetDirectory, **entries: dict[str, object]) -> None:
    pipelines = targets.read({"v": 1, "pipelines": entries})
    assert pipelines is not None
    targets.apply(pipelines)


def test_each_link_goes_where_the_directory_says_its_target_is() -> None:
    up, coming, down = RoutedLink("up"), RoutedLink("coming"), RoutedLink("down")
    targets = routed(up, coming, down, RoutedLink("unlisted"))
    read(targets,
         up={"state": "running", "endpoint": "tcp://h:1", "instance": 7, "key": "k1"},
         coming={"state": "backoff"},
         down={"state": "failed", "endpoint": "tcp://h:3", "final": True})  # fmt: skip

    assert up.calls == [("connect", "tcp://h:1", 7, "k1", False)]
    assert not up.down and not up.restarting
    assert coming.calls == [] and coming.restarting and not coming.down
    assert down.down and not down.restarting
    assert targets.known == {"up": "running", "coming": "backoff", "down": "failed"}


def test_a_withdrawn_target_holds_the_output_and_a_rediscovery_reconnects_at_once() -> None:
    far = RoutedLink("far")
    targets = routed(far)
    read(targets, far={"state": "withdrawn", "since": 1234.5})
    read(targets, far={"state": "running", "endpoint": "tcp://h:9"})

    assert far.calls == [("withdraw", 1234.5), ("connect", "tcp://h:9", None, None, True)]


def test_a_finished_target_gets_a_moment_for_its_last_ack_then_is_retired() -> None:
    acked, lost = RoutedLink("acked", held=2, acks_later=2), RoutedLink("lost", held=3)
    acked.socket, lost.socket = acked, lost
    targets = routed(acked, lost)
    with capture_logs() as logs:
        read(targets, acked={"state": "finished"}, lost={"state": "finished"})
        read(targets, acked={"state": "finished"})  # retired once

    assert acked.calls == [("read_acks",), ("read_acks",), ("retire", 0)]
    assert lost.calls[-1] == ("retire", 3)
    assert [(e["event"], e["target"], e["dropped"]) for e in logs] == [
        ("target_finished", "lost", 3)
    ]


def test_every_name_the_directory_sent_is_known_but_ours() -> None:
    targets = routed()
    pipelines = targets.read({"pipelines": {"src": {"state": "running"}}, "names": ["a", "src"]})
    assert pipelines is not None and targets.known == {"a": "?"}
    targets.read({"pipelines": {"a": {"state": "running"}}})  # names are sent when they change
    assert targets.known == {"a": "running"}


def test_a_directory_of_another_version_is_refused_loudly_and_changes_nothing() -> None:
    link = RoutedLink("t")
    targets = routed(link)
    with capture_logs() as logs:
        assert targets.read({"v": 99, "pipelines": {"t": {"state": "running"}}}) is None
        read(targets, t={"state": "running"}, bad="not an entry")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("bad_directory", "error"),
        ("bad_directory_entry", "warning"),
    ]
    assert logs[1]["entries"] == ["bad"]
