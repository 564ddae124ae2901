"""The close protocol (workers/closing.py), with fake links and a fake clock: EOS or BYE on
every link, how long the worker waits for acknowledgements, and what it says of the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from porch.errors import DeliveryError
from porch.wire import FrameKind
from workers.closing import FLUSH_TIMEOUT_S, STALL_WARNING_S, OutputClose
from workers.links import LinkSettings, OutputLink
from workers.signals import StopSignals

pytestmark = pytest.mark.timeout(10)


@dataclass
class FakeLink:
    target: str
    held: int = 0
    down: bool = False
    gone: bool = False
    dropped: int = 0
    settings: LinkSettings = field(default_factory=lambda: LinkSettings(limit=10))
    ack_after_waits: int | None = None  # the target acknowledges everything after this many
    said: list[str] = field(default_factory=list)
    linger_ms: int | None = None

    @property
    def delivered(self) -> bool:
        return self.held == 0

    def data_held(self) -> int:
        return self.held

    def force(self, kind: FrameKind, payload: list[Any]) -> None:
        self.said.append(kind.name)

    def say_bye(self) -> None:
        self.said.append("BYE")

    def close(self, linger_ms: int) -> None:
        self.linger_ms = linger_ms


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.waits = 0
        self.acks_read = 0

    def __call__(self) -> float:
        return self.now_s


def closing(
    links: list[FakeLink], clock: Clock, *, kept: bool = False, stopping: bool = False
) -> tuple[OutputClose, StopSignals]:
    stop = StopSignals("src", 8.5, clock=clock)
    if stopping:
        stop.request("supervisor")
    close = OutputClose("src", cast(list[OutputLink], links), stop, finish_timeout_s=30.0,
                        stop_timeout_s=10.0, kept=kept, clock=clock)  # fmt: skip
    return close, stop


def run(close: OutputClose, links: list[FakeLink], clock: Clock, finished: bool) -> None:
    def wait(timeout_ms: int) -> None:  # what Worker._wait does: time passes, acks come
        clock.now_s += timeout_ms / 1000
        clock.waits += 1
        for link in links:
            if link.ack_after_waits is not None and clock.waits >= link.ack_after_waits:
                link.held = 0

    def read_acks() -> None:
        clock.acks_read += 1

    close.run(finished, wait, read_acks)


def test_a_finished_stream_sends_eos_and_waits_until_everything_is_acknowledged() -> None:
    clock = Clock()
    links = [FakeLink("a", held=3, ack_after_waits=4), FakeLink("b")]
    close, _ = closing(links, clock)

    run(close, links, clock, finished=True)

    assert [link.said for link in links] == [["EOS"], ["EOS"]]
    assert clock.waits == 4 and clock.acks_read == 1
    assert links[0].linger_ms == 300  # acknowledged links have nothing left for ZeroMQ


def test_a_stop_says_bye_and_gives_up_on_targets_that_are_down() -> None:
    clock = Clock()
    links = [FakeLink("up", held=1, ack_after_waits=2), FakeLink("dead", held=5, down=True)]
    close, _ = closing(links, clock, stopping=True)

    with capture_logs() as logs, pytest.raises(DeliveryError) as raised:
        run(close, links, clock, finished=False)

    assert [link.said for link in links] == [["BYE"], ["BYE"]]
    assert clock.waits == 2  # not a moment longer for the dead target
    assert links[1].dropped == 5
    assert str(raised.value) == (
        "5 messages for dead were not acknowledged before the stop deadline "
        "(--stop-timeout 10 s): lost"
    )
    assert [(e["event"], e["target"], e["log_level"]) for e in logs] == [
        ("output_unacknowledged", "dead", "error")
    ]


def test_a_finished_stream_waits_for_a_down_target_until_finish_timeout_s() -> None:
    clock = Clock()
    links = [FakeLink("sink", held=2, down=True)]
    close, _ = closing(links, clock)

    with capture_logs() as logs, pytest.raises(DeliveryError) as raised:
        run(close, links, clock, finished=True)

    assert clock.now_s == pytest.approx(30.0, abs=0.1)
    warned = [e for e in logs if e["event"] == "output_waiting"]
    assert STALL_WARNING_S == 10.0  # a warning every 10 s, with what is held
    assert [(e["messages"], e["give_up_in_s"]) for e in warned] == [(2, 20), (2, 10)]
    assert str(raised.value) == (
        "its stream ended but 2 messages for sink were not delivered within "
        "finish_timeout_s 30 s: lost"
    )


def test_a_stop_during_the_wait_moves_the_deadline_to_the_stop_deadline() -> None:
    clock = Clock()
    links = [FakeLink("sink", held=1)]
    close, stop = closing(links, clock)

    def wait(timeout_ms: int) -> None:
        clock.now_s += timeout_ms / 1000
        if clock.now_s >= 1.0:
            stop.request("SIGTERM")  # at 1 s: the stop must be done by 9.5 s

    with pytest.raises(DeliveryError, match="before the stop deadline"):
        close.run(True, wait, lambda: None)
    assert clock.now_s == pytest.approx(9.5, abs=0.1)


def test_a_failed_worker_waits_as_long_as_a_stop_would_take() -> None:
    clock = Clock()
    links = [FakeLink("sink", held=1)]
    close, _ = closing(links, clock)

    with pytest.raises(DeliveryError):
        run(close, links, clock, finished=False)
    assert clock.now_s == pytest.approx(8.5, abs=0.1)


def test_a_durable_outbox_keeps_what_a_stop_left_with_a_warning() -> None:
    clock = Clock()
    links = [FakeLink("sink", held=4, down=True), FakeLink("done", held=9, gone=True)]
    close, _ = closing(links, clock, kept=True, stopping=True)

    with capture_logs() as logs:
        run(close, links, clock, finished=False)  # no error: replayed by the next start

    assert links[0].dropped == 0
    assert [(e["event"], e["log_level"], e["kept"]) for e in logs] == [
        ("output_unacknowledged", "warning", True)
    ]


def test_a_durable_outbox_still_fails_a_finished_stream_it_could_not_deliver() -> None:
    clock = Clock()
    links = [FakeLink("sink", held=4, settings=LinkSettings(limit=10, acked=False))]
    close, _ = closing(links, clock, kept=True)

    with pytest.raises(DeliveryError, match="kept in the durable outbox for the next start"):
        run(close, links, clock, finished=True)
    assert links[0].linger_ms == int(FLUSH_TIMEOUT_S * 1000)  # closed even so
