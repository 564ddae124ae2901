"""LineSplitter: worker output as lines, long lines split and marked, \\r progress collapsed."""

from __future__ import annotations

import time

import pytest

from porch.lines import SPLIT_MARK, LineSplitter

pytestmark = pytest.mark.timeout(30)


def feed_all(splitter: LineSplitter, blocks: list[bytes], now_s: float = 0.0) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        lines += splitter.feed(block, now_s)
    return lines + splitter.finish()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_lines_come_out_whatever_the_block_size(size: int) -> None:
    data = b"one\ntwo\r\n\nthree\r\nfour"
    blocks = [data[i : i + size] for i in range(0, len(data), size)]
    assert feed_all(LineSplitter(), blocks) == ["one", "two", "", "three", "four"]


def test_a_long_line_is_split_into_marked_pieces_at_character_boundaries() -> None:
    text = ("é" * 7 + "x") * 5  # two-byte characters: a cut at 16 bytes would split one
    lines = feed_all(LineSplitter(max_line_bytes=16), [text.encode() + b"\nnext\n"])
    pieces, rest = lines[:-1], lines[-1]
    assert rest == "next"
    assert all(p.endswith(SPLIT_MARK) for p in pieces[:-1]), pieces
    assert not pieces[-1].endswith(SPLIT_MARK)
    assert "".join(p.removesuffix(SPLIT_MARK) for p in pieces) == text
    assert all(len(p.removesuffix(SPLIT_MARK).encode()) <= 16 for p in pieces)


def test_carriage_returns_keep_the_latest_update_and_rate_limit_the_rest() -> None:
    splitter = LineSplitter(progress_interval_s=1.0)
    lines: list[str] = []
    for i in range(100):  # 100 updates in the first half second, one block each
        lines += splitter.feed(f"\r{i:3d}%".encode(), i * 0.005)
    lines += splitter.feed(b"\r 100%", 0.6)
    lines += splitter.feed(b"\r done\n", 1.2)
    # the first update, one more once a second has passed, and the final line
    assert lines == ["  0%", " 100%", " done"]


def test_many_updates_in_one_block_collapse_to_the_latest() -> None:
    splitter = LineSplitter(progress_interval_s=1.0)
    block = b"".join(f"\r{i}".encode() for i in range(1000))
    assert splitter.feed(block, 0.0) == ["998"]
    assert splitter.feed(b"\n", 0.1) == ["999"]


def test_reading_a_huge_line_is_linear() -> None:
    splitter = LineSplitter()
    block = b"x" * 65536
    started = time.perf_counter()
    count = 0
    for _ in range(320):  # 20 MiB without a newline
        count += len(splitter.feed(block, 0.0))
    took = time.perf_counter() - started
    assert count == 320 - 1  # the last piece is still pending
    assert took < 5.0, f"{took:.1f} s for 20 MiB"
