"""Pipeline log files: rotation, the LogFileSink line format, tail and follow."""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from porch import logfiles
from porch.logfiles import LogFileSink, RotatingFile, follow, tail, timestamp

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 10.0
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.002)


def numbered(count: int, start: int = 0) -> list[str]:
    return [f"line-{i:04d}" for i in range(start, start + count)]


def read_lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines()


def all_files(path: Path) -> list[Path]:
    return sorted(path.parent.iterdir())


# RotatingFile


def test_write_appends_lines_and_creates_a_private_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "out.log"
    file = RotatingFile(path)
    file.write("hello")
    file.write("wörld")
    # Flushed on every write: readable before close.
    assert path.read_bytes() == "hello\nwörld\n".encode()
    file.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_write_after_close_appends(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path)
    file.write("one")
    file.close()
    file.write("two")
    file.close()
    assert read_lines(path) == ["one", "two"]


def test_rotation_keeps_exactly_backups_files_and_never_splits_a_line(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=64, backups=3)
    written = [f"{i}:" + "x" * (i % 13) for i in range(500)]
    for line in written:
        file.write(line)
    file.close()
    names = [p.name for p in all_files(path)]
    assert names == ["out.log", "out.log.1", "out.log.2", "out.log.3"]
    kept: list[str] = []
    for p in (file.backup(3), file.backup(2), file.backup(1), path):
        data = p.read_bytes()
        assert len(data) <= 64
        assert data.endswith(b"\n")
        kept += data.decode().splitlines()
    # The four files hold the newest lines, whole and in order.
    assert kept == written[-len(kept) :]


def test_rotation_happens_only_when_the_next_line_would_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=20, backups=1)
    file.write("123456789")  # 10 bytes with the newline
    file.write("abcdefghi")  # exactly 20: still fits
    assert not file.backup(1).exists()
    file.write("z")
    file.close()
    assert read_lines(file.backup(1)) == ["123456789", "abcdefghi"]
    assert read_lines(path) == ["z"]


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=10, backups=2)
    file.write("short")
    file.write("y" * 50)
    file.write("after")
    file.close()
    assert read_lines(file.backup(2)) == ["short"]
    assert read_lines(file.backup(1)) == ["y" * 50]
    assert read_lines(path) == ["after"]


def test_an_oversized_first_line_does_not_rotate_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=10, backups=2)
    file.write("z" * 30)
    file.close()
    assert [p.name for p in all_files(path)] == ["out.log"]


def test_zero_backups_just_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=10, backups=0)
    for line in numbered(5):
        file.write(line)
    file.close()
    assert [p.name for p in all_files(path)] == ["out.log"]
    assert read_lines(path) == ["line-0004"]


def test_an_existing_file_counts_toward_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_text("x" * 15 + "\n")
    file = RotatingFile(path, max_bytes=20, backups=1)
    file.write("next")
    file.close()
    assert read_lines(file.backup(1)) == ["x" * 15]
    assert read_lines(path) == ["next"]


def test_unencodable_text_is_kept_escaped(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path)
    file.write("bad \udce9 byte")
    file.close()
    assert read_lines(path) == ["bad \\udce9 byte"]


@pytest.mark.parametrize(("max_bytes", "backups"), [(0, 1), (10, -1)])
def test_bad_rotation_settings_are_rejected(tmp_path: Path, max_bytes: int, backups: int) -> None:
    with pytest.raises(ValueError):
        RotatingFile(tmp_path / "out.log", max_bytes, backups)


# LogFileSink


def fixed_clock() -> datetime:
    return datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_timestamp_is_utc_iso_with_milliseconds() -> None:
    assert timestamp(fixed_clock()) == "2024-05-01T12:00:00.123Z"
    two_hours_east = timezone(timedelta(hours=2))
    assert timestamp(datetime(2024, 5, 1, 14, 0, 0, tzinfo=two_hours_east)).startswith(
        "2024-05-01T12:00:00.000"
    )


def test_sink_writes_one_file_per_pipeline(tmp_path: Path) -> None:
    sink = LogFileSink(tmp_path / "logs", clock=fixed_clock)
    sink.line("extract-a", "stdout", "hello")
    sink.line("load", "stderr", "Traceback (most recent call last):")
    sink.line("extract-a", "stderr", "  spaced  out ")
    sink.close()
    assert sink.path_of("extract-a") == tmp_path / "logs" / "extract-a.log"
    assert read_lines(sink.path_of("extract-a")) == [
        "2024-05-01T12:00:00.123Z stdout hello",
        "2024-05-01T12:00:00.123Z stderr   spaced  out ",
    ]
    assert read_lines(sink.path_of("load")) == [
        "2024-05-01T12:00:00.123Z stderr Traceback (most recent call last):"
    ]


def test_sink_uses_the_real_clock_by_default(tmp_path: Path) -> None:
    sink = LogFileSink(tmp_path)
    sink.line("pipe", "stdout", "now")
    sink.close()
    (line,) = read_lines(tmp_path / "pipe.log")
    stamp, stream, text = line.split(" ")
    assert STAMP.fullmatch(stamp)
    assert (stream, text) == ("stdout", "now")


def test_sink_rotates_with_its_settings(tmp_path: Path) -> None:
    sink = LogFileSink(tmp_path, max_bytes=200, backups=2, clock=fixed_clock)
    for text in numbered(100):
        sink.line("busy", "stdout", text)
    sink.close()
    assert [p.name for p in all_files(tmp_path / "busy.log")] == [
        "busy.log",
        "busy.log.1",
        "busy.log.2",
    ]
    assert read_lines(tmp_path / "busy.log")[-1].endswith("stdout line-0099")


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "a\0b"])
def test_sink_refuses_names_that_are_not_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        LogFileSink(tmp_path).path_of(name)


def test_sink_survives_a_write_failure_and_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.write_text("a file where the folder should be")
    sink = LogFileSink(folder, clock=fixed_clock)
    with capture_logs() as events:
        sink.line("pipe", "stdout", "lost one")
        sink.line("pipe", "stdout", "lost two")
        folder.unlink()
        sink.line("pipe", "stdout", "kept")
    sink.close()
    warnings = [e for e in events if e["event"] == "log_write_failed"]
    assert len(warnings) == 1
    assert warnings[0]["pipeline"] == "pipe"
    assert sink.dropped == {"pipe": 2}
    first, kept = read_lines(folder / "pipe.log")
    assert first.startswith("2024-05-01T12:00:00.123Z porch dropped 2 lines: "), first
    assert kept == "2024-05-01T12:00:00.123Z stdout kept"


def test_sink_survives_a_full_disk_and_ends_a_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = LogFileSink(tmp_path, clock=fixed_clock)
    sink.line("pipe", "stdout", "before")
    real_write = os.write
    budget = [10]

    def full_disk(fd: int, data: Any) -> int:
        if budget[0] <= 0:
            raise OSError(28, "No space left on device")
        written = real_write(fd, bytes(data)[: budget[0]])
        budget[0] -= written
        return written

    monkeypatch.setattr(logfiles.os, "write", full_disk)
    for _ in range(3):
        sink.line("pipe", "stdout", "lost")  # the first one is torn after 10 bytes
    sink.close()  # nothing buffered: closing raises nothing
    monkeypatch.setattr(logfiles.os, "write", real_write)
    sink.line("pipe", "stdout", "after")
    sink.close()
    assert sink.dropped == {"pipe": 3}
    lines = read_lines(tmp_path / "pipe.log")
    assert lines[0].endswith("stdout before")
    assert len(lines[1]) == 10  # the torn line, ended before the next one
    assert lines[2].endswith("porch dropped 3 lines: No space left on device")
    assert lines[3].endswith("stdout after")


# tail


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize("count", [0, 1, 2, 5, 9, 10, 11, 100])
@pytest.mark.parametrize("block", [1, 3, 7, 64 * 1024])
def test_tail_matches_the_naive_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, block: int
) -> None:
    # Tiny blocks put line ends on every block boundary.
    monkeypatch.setattr(logfiles, "READ_BLOCK_BYTES", block)
    lines = ["", "a", "bb", "", "ccc", "dddd", "é€", "x" * 20, "", "last"]
    path = write_text(tmp_path / "f.log", "\n".join(lines) + "\n")
    expected = lines[-count:] if count else []
    assert tail(path, count) == expected


def test_tail_of_a_big_file_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    with path.open("w") as out:
        for i in range(200_000):
            out.write(f"line-{i:06d}\n")
    assert tail(path, 3) == ["line-199997", "line-199998", "line-199999"]


def test_tail_keeps_an_unfinished_last_line(tmp_path: Path) -> None:
    path = write_text(tmp_path / "f.log", "one\ntwo\nthr")
    assert tail(path, 2) == ["two", "thr"]


@pytest.mark.parametrize(
    ("text", "expected"), [("", []), ("\n", [""]), ("\n\n", ["", ""]), ("solo", ["solo"])]
)
def test_tail_edge_cases(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert tail(write_text(tmp_path / "f.log", text), 5) == expected


def test_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail(tmp_path / "nothing.log", 10) == []


def test_tail_replaces_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    path.write_bytes(b"ok\nbad \xff\n")
    assert tail(path, 1) == ["bad \ufffd"]


# follow


class Follow:
    """Consumes follow() in the test's thread while a writer thread appends to the file."""

    def __init__(self, path: Path, expect: Callable[[list[str]], bool], backlog: int = 0) -> None:
        self.path = path
        self.expect = expect
        self.backlog = backlog
        self.seen: list[str] = []
        self.polls = 0
        self.started = threading.Event()
        self.finished = threading.Event()
        self.errors: list[BaseException] = []
        self.deadline = time.monotonic() + TIMEOUT_S

    def stop(self) -> bool:
        # follow() calls stop() once per poll, so this also tells the writer the follower is in.
        self.polls += 1
        self.started.set()
        done = self.finished.is_set() and (self.errors or self.expect(self.seen))
        return bool(done) or time.monotonic() > self.deadline

    def wait_seen(self, count: int) -> None:
        wait_until(lambda: len(self.seen) >= count, what=f"{count} lines followed")

    def wait_polls(self, count: int = 2) -> None:
        target = self.polls + count
        wait_until(lambda: self.polls >= target, what="the follower to poll")

    def run(self, write: Callable[[Follow], None]) -> list[str]:
        writer = threading.Thread(target=self._write, args=(write,), daemon=True)
        writer.start()
        for line in follow(self.path, poll_s=0.002, stop=self.stop, backlog=self.backlog):
            self.seen.append(line)
        writer.join(TIMEOUT_S)
        if self.errors:
            raise self.errors[0]
        return self.seen

    def _write(self, write: Callable[[Follow], None]) -> None:
        try:
            if self.started.wait(TIMEOUT_S):
                write(self)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.finished.set()


def has(count: int) -> Callable[[list[str]], bool]:
    return lambda seen: len(seen) >= count


def test_follow_sees_lines_written_after_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path)
    for line in numbered(3):
        file.write(line)

    def write(_: Follow) -> None:
        for line in numbered(5, start=3):
            file.write(line)

    assert Follow(path, has(5)).run(write) == numbered(5, start=3)
    file.close()


def test_follow_starts_with_the_backlog(tmp_path: Path) -> None:
    path = write_text(tmp_path / "out.log", "\n".join(numbered(10)) + "\n")

    def write(_: Follow) -> None:
        with path.open("a") as out:
            out.write("fresh\n")

    assert Follow(path, has(3), backlog=2).run(write) == ["line-0008", "line-0009", "fresh"]


def test_follow_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=50, backups=2)  # five 10-byte lines per file
    file.write("before")
    expected = numbered(40)

    def write(follower: Follow) -> None:
        # Batches no longer than one file: at most one rotation between the follower's polls,
        # so every line must arrive (a follower cannot see a file rotated twice past it).
        for start in range(0, len(expected), 5):
            for line in expected[start : start + 5]:
                file.write(line)
            follower.wait_seen(start + 5)

    assert Follow(path, has(len(expected))).run(write) == expected
    assert file.backup(2).exists()
    file.close()


def test_follow_drains_the_old_file_when_rotation_races_a_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=30, backups=1)  # three 10-byte lines per file
    file.write("line-0000")
    real_stat = os.stat
    raced: list[bool] = []

    def racing_stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if not raced and Path(target) == path:
            raced.append(True)
            # Lands between the follower's empty read and its look at the path: two lines finish
            # the old file, the third rotates it away.
            for line in numbered(3, start=1):
                file.write(line)
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", racing_stat)
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S

    def stop() -> bool:
        return len(seen) >= 3 or time.monotonic() > deadline

    for line in follow(path, poll_s=0.001, stop=stop):
        seen.append(line)
    file.close()
    assert raced
    assert seen == numbered(3, start=1)


def test_follow_keeps_up_with_a_free_running_writer(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    file = RotatingFile(path, max_bytes=100, backups=3)
    file.write("before")
    written = numbered(300)

    def write(_: Follow) -> None:
        for line in written:
            file.write(line)

    seen = Follow(path, lambda seen: written[-1] in seen).run(write)
    file.close()
    # Lines in a file rotated twice between polls can be missed, but never out of order,
    # twice, or split; the newest line always arrives.
    assert seen[-1] == written[-1]
    assert seen == sorted(set(seen))
    assert set(seen) <= set(written)


def test_follow_after_truncation_reads_from_the_start(tmp_path: Path) -> None:
    path = write_text(tmp_path / "out.log", "")

    def write(follower: Follow) -> None:
        with path.open("a") as out:
            out.write("aaaaaaaaa\nbbbbbbbbb\nccccccccc\n")
        follower.wait_seen(3)
        with path.open("w") as out:
            out.write("new-1\nnew-2\n")

    seen = Follow(path, has(5)).run(write)
    assert seen == ["aaaaaaaaa", "bbbbbbbbb", "ccccccccc", "new-1", "new-2"]


def test_follow_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "later.log"

    def write(follower: Follow) -> None:
        follower.wait_polls()
        file = RotatingFile(path)
        for line in numbered(3):
            file.write(line)
        file.close()

    assert Follow(path, has(3)).run(write) == numbered(3)


def test_follow_holds_a_partial_line_until_it_is_finished(tmp_path: Path) -> None:
    path = write_text(tmp_path / "out.log", "")

    def write(follower: Follow) -> None:
        with path.open("a") as out:
            out.write("par")
            out.flush()
            follower.wait_polls()
            out.write("tial\nnext\n")

    assert Follow(path, has(2)).run(write) == ["partial", "next"]


def test_follow_returns_when_stop_is_true(tmp_path: Path) -> None:
    path = write_text(tmp_path / "out.log", "old\n")
    assert list(follow(path, poll_s=0.001, stop=lambda: True, backlog=5)) == []
