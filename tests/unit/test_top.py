"""`porchctl top`'s frame, built without a terminal."""

from __future__ import annotations

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
