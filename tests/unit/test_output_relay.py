"""Output relay and the supervisor's event loop (porch/output_relay.py, porch/event_loop.py)
in-process: real pipes and a real poll, no worker process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from porch.event_loop import EventLoop, SweepTimer, timeout_ms
from porch.output_relay import READ_BYTES, READS_PER_WAKEUP, OutputRelay

pytestmark = pytest.mark.timeout(30)


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def line(self, pipeline: str, stream: str, text: str) -> None:
        self.lines.append((pipeline, stream, text))


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


def pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    return os.pipe(), os.pipe()


def attach(relay: OutputRelay, name: str) -> tuple[int, int]:
    (out_r, out_w), (err_r, err_w) = pipes()
    relay.attach(name, os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))
    return out_w, err_w


def poll_until(loop: EventLoop, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not met in time"
        loop.dispatch(loop.poll(50))


def test_lines_are_relayed_per_pipeline_and_stream_and_eof_closes(loop: EventLoop) -> None:
    sink = Sink()
    relay = OutputRelay(sink, loop)
    out_w, err_w = attach(relay, "p")
    os.write(out_w, b"one\ntw")
    os.write(err_w, b"oops\n")
    poll_until(loop, lambda: len(sink.lines) == 2)
    assert sorted(sink.lines) == [("p", "stderr", "oops"), ("p", "stdout", "one")]
    os.write(out_w, b"o\n")
    os.close(out_w)
    os.close(err_w)
    poll_until(loop, lambda: not relay.is_open("p"))
    assert sink.lines[-1] == ("p", "stdout", "two")


def test_closing_flushes_a_partial_last_line(loop: EventLoop) -> None:
    sink = Sink()
    relay = OutputRelay(sink, loop)
    out_w, err_w = attach(relay, "p")
    os.write(out_w, b"no newline")
    loop.dispatch(loop.poll(1000))  # read, but held back: no newline yet
    assert sink.lines == []
    relay.close("p")
    assert sink.lines == [("p", "stdout", "no newline")] and not relay.is_open("p")
    os.close(out_w)
    os.close(err_w)


def test_one_chatty_worker_is_read_a_bounded_amount_per_wakeup(loop: EventLoop) -> None:
    sink = Sink()
    relay = OutputRelay(sink, loop)
    out_w, err_w = attach(relay, "chatty")
    line = b"x" * 1023 + b"\n"
    total = READ_BYTES * READS_PER_WAKEUP // len(line) * 2
    os.set_blocking(out_w, False)
    written = 0
    try:
        while written < total:
            os.write(out_w, line)
            written += 1
    except BlockingIOError:
        pass
    loop.dispatch(loop.poll(1000))
    assert 0 < len(sink.lines) <= READ_BYTES * READS_PER_WAKEUP // len(line)
    relay.close_all()
    os.close(out_w)
    os.close(err_w)


def test_the_loop_calls_handlers_and_forgets_removed_ones(loop: EventLoop) -> None:
    r, w = os.pipe()
    seen: list[bytes] = []
    loop.add(r, lambda: seen.append(os.read(r, 100)))
    os.write(w, b"a")
    loop.dispatch(loop.poll(1000))
    assert seen == [b"a"]
    loop.remove(r)
    loop.remove(r)  # twice: nothing
    os.write(w, b"b")
    assert loop.poll(10) == []
    os.close(r)
    os.close(w)


def test_sweeps_wait_for_an_event_or_the_interval() -> None:
    sweep = SweepTimer(0.05)
    assert sweep.due(1.0, event=False)  # the first is due
    assert not sweep.due(1.01, event=False) and sweep.held and sweep.next_s == 1.05
    assert sweep.due(1.02, event=True) and not sweep.held
    assert sweep.due(1.08, event=False)


def test_poll_timeout_is_the_earliest_due_time_rounded_up() -> None:
    assert timeout_ms([], 0.0, 500) == 500
    assert timeout_ms([0.0105, 3.0], 0.0, 500) == 11
    assert timeout_ms([9.0], 0.0, 500) == 500
    assert timeout_ms([-1.0], 0.0, 500) == 0
