"""scripts/bench.py reads a child's output line by line with a deadline (in-process: a pipe,
no child process)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, cast

import pytest

from scripts.bench import BenchError, Benchmark, Child, Outcome, Sample, measure, read_line

pytestmark = pytest.mark.timeout(30)

WAIT_S = 5.0


@pytest.fixture
def piped(tmp_path: Path) -> Iterator[tuple[Child, IO[bytes]]]:
    """A Child whose stdout is the read end of a pipe, and the pipe's (unbuffered) write end."""
    read_end, write_end = os.pipe()
    stdout = os.fdopen(read_end, "r")
    writer = os.fdopen(write_end, "wb", buffering=0)
    proc = cast(Any, SimpleNamespace(pid=0, stdout=stdout))
    yield Child(proc, tmp_path / "stderr.log", time.monotonic()), writer
    stdout.close()
    writer.close()


def test_lines_that_arrive_together_are_each_read_at_once(
    piped: tuple[Child, IO[bytes]],
) -> None:
    """Two `linked` lines in one write: the second is returned at once. Before, readline()
    after select() left it in the file object's buffer and select() waited for more output
    until the deadline (the many-pipelines benchmark's 53 s start "stall")."""
    child, writer = piped
    writer.write(b"sink_01 | linked\nsink_02 | linked\n")

    started = time.monotonic()
    assert read_line(child, WAIT_S) == "sink_01 | linked"
    assert read_line(child, WAIT_S) == "sink_02 | linked"
    assert time.monotonic() - started < WAIT_S / 2
    with pytest.raises(BenchError, match="no output"):
        read_line(child, 0.05)


def test_a_line_in_pieces_then_the_end_of_output(piped: tuple[Child, IO[bytes]]) -> None:
    child, writer = piped
    writer.write("caf\xc3".encode("latin-1"))  # a character cut between two writes
    writer.write("\xa9 | done\nlast words".encode("latin-1"))

    assert read_line(child, WAIT_S) == "café | done"
    writer.close()
    assert read_line(child, WAIT_S) == "last words"
    assert read_line(child, WAIT_S) is None


def test_a_run_that_delivered_less_than_was_sent_is_an_error_not_a_sample(tmp_path: Path) -> None:
    short = Sample({"rate": 187_878.0}, count=110_028, expected=200_000)
    bench = Benchmark("porch_chain", "A -> B", lambda settings: short)
    outcome = Outcome(bench)
    measure(bench, cast(Any, None), outcome, 0)
    assert outcome.samples == []  # its rate stays out of the medians
    assert outcome.errors == ["round 1: only 110028 of 200000 messages delivered"]
    full = Sample({"rate": 300_000.0}, count=200_000, expected=200_000)
    measure(Benchmark("porch_chain", "A -> B", lambda settings: full), cast(Any, None), outcome, 1)
    assert [s.count for s in outcome.samples] == [200_000] and len(outcome.errors) == 1
