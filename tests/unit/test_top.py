"""`porchctl top`'s frame, built without a terminal."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import pytest

from porch import top

pytestmark = pytest.mark.timeout(30)

RESULT = {
    "daemon": {"pid": 42, "uptime_s": 3723, "discovery": {"beacons_rejected": 2}},
    "pipelines": [
        {"name": "source", "state": "running", "pid": 7, "cpu_percent": 1.5,
         "rss_bytes": 31 * 2**20, "rate_per_s": 20.0, "msgs_in_per_s": 0.0,
         "msgs_out_per_s": 20.0, "queue_depth": 0, "iterations": 1234, "restarts": 0,
         "last_error": ""},
        {"name": "sink", "state": "failed", "pid": None, "cpu_percent": None, "rss_bytes": None,
         "rate_per_s": 0.0, "iterations": 5, "restarts": 5,
         "last_error": "step() raised\nValueError: bad"},
    ],
    "remote": [{"name": "far", "state": "running", "hostname": "hostb"}],
}  # fmt: skip


def test_header_sums_rates_and_counts_states() -> None:
    line = top.header_line(RESULT, "12:00:00")
    assert line.startswith("porchd pid 42  up 1:02:03  pipelines 2 (1 running, 1 failed, 1 remote)")
    assert "in 0.0/s  out 20.0/s" in line
    assert "beacons refused 2" in line and line.endswith("12:00:00")


def test_frame_has_a_row_per_pipeline_with_its_style() -> None:
    lines = top.frame(RESULT, 200, "12:00:00")
    assert lines[2][0].split()[:4] == ["PIPELINE", "STATE", "PID", "CPU%"]
    source, sink, far = lines[3:]
    assert source[1] == "running" and source[0].split()[:7] == [
        "source", "running", "7", "1.5", "31.0M", "20.0", "0.0"]  # fmt: skip
    assert sink[1] == "failed" and "-" in sink[0].split() and sink[0].endswith("ValueError: bad")
    assert far[1] == "remote" and far[0].endswith("remote: hostb")


def test_lines_are_cut_to_the_width() -> None:
    assert all(len(line) <= 60 for line, _ in top.frame(RESULT, 60, "12:00:00"))


def test_top_shows_a_past_error_with_its_age() -> None:
    from porch import top

    result = {"pipelines": [{"name": "p", "state": "running", "last_error": "boom",
                             "last_error_age_s": 5, "error_current": False}]}  # fmt: skip
    assert top.frame(result, 200, "12:00:00")[-1][0].endswith("5s ago: boom")


class _Window:
    """A curses window stand-in whose getch() runs `on_key` and reads no key."""

    def __init__(self, on_key: Callable[[], None]) -> None:
        self.on_key = on_key
        self.polls = 0

    def getch(self) -> int:
        self.polls += 1
        self.on_key()
        return -1


def test_ctrl_c_dropped_inside_a_finalizer_still_quits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SIGINT handler's KeyboardInterrupt raised inside a __del__ (as in a zmq socket's,
    once per refresh) is dropped by Python; the loop still quits at its next key poll."""
    screen = top._Screen(lambda: RESULT, 60.0, RESULT)  # type: ignore[arg-type]
    monkeypatch.setattr(screen, "_setup", lambda window: None)
    monkeypatch.setattr(screen, "draw", lambda window: None)
    dropped: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))

    class Finalized:
        def __del__(self) -> None:
            screen.interrupt(signal.SIGINT, None)  # Ctrl+C arrives while this runs

    window = _Window(lambda: Finalized() and None)
    screen.loop(window)  # type: ignore[arg-type]
    assert dropped == [KeyboardInterrupt]
    assert window.polls == 1
