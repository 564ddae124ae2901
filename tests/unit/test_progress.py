"""`porch run`'s progress footer and summary, as text."""

from __future__ import annotations

import pytest

from porch.progress import Row, clock, footer_lines, summary_lines

pytestmark = pytest.mark.timeout(30)

ROWS = [
    Row("source", "finished", 1200, 10.0, 0.0),
    Row("sink", "failed", 40, 2.0, 0.0, error="step() raised KeyError: 'x'", problems="3 dropped"),
]


def test_clock() -> None:
    assert [clock(s) for s in (3, 727, 3723)] == ["0:03", "12:07", "1:02:03"]


def test_footer_has_a_line_per_pipeline_cut_to_the_width() -> None:
    lines = footer_lines(ROWS, height=5, width=60)
    assert len(lines) == 2 and all(len(line) < 60 for line in lines)
    assert lines[0].split()[:4] == ["source", "finished", "1,200", "items"]


def test_footer_sums_up_what_does_not_fit() -> None:
    rows = [Row(f"p{i}", "running", 10, 1.0, 1.0) for i in range(10)]
    lines = footer_lines(rows, height=3, width=120)
    assert len(lines) == 3
    assert lines[-1] == "... 8 more: 8 running, 80 items"


def test_short_summary_is_one_line_per_pipeline() -> None:
    assert summary_lines(ROWS, 10.0, table=False) == [
        "porch: source: finished, 1200 items in 10.0 s (120.0/s)",
        "porch: sink: failed, 40 items in 2.0 s (20.0/s), 3 dropped; error: step() raised "
        "KeyError: 'x'",
    ]


def test_table_summary() -> None:
    lines = summary_lines(ROWS, 10.04, table=True)
    assert lines[0] == "porch: summary after 10.0 s"
    assert lines[1].split() == ["PIPELINE", "STATE", "ITEMS", "TIME", "RATE", "ERRORS"]
    assert lines[2].split() == ["source", "finished", "1,200", "10.0s", "120.0/s", "-"]
    assert lines[3].endswith("3 dropped; error: step() raised KeyError: 'x'")
