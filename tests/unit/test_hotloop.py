"""The worker's tight loops, in-process: a source's bursts and a one-source stage's queue
give the links exactly what the per-message path would (values, markers, origins, order)."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from porch.config import PipelineConfig
from porch.control import HEARTBEAT_INTERVAL_S
from porch.stream import SKIP
from porch.wire import FrameKind, HeaderEncoder, decode_batch, decode_prefix, encode_batch
from workers.hotloop import HotLoop
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

SOURCE = """
import porch
n = 0
def step():
    global n
    n += 1
    if n == 3:
        return porch.SKIP
    if n == 5:
        raise ValueError("five")
    if n == 7:
        porch.stop()
    return {"n": n}
"""

STAGE = """
import porch
def step(input_data):
    value = input_data["src"]
    if value == 2:
        return porch.SKIP
    if value == 4:
        raise ValueError("four")
    return value * 10
"""


def worker(tmp_path: Path, name: str, script: str, sources: int = 0) -> Worker:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    config = PipelineConfig(name, (path,), sources, ("sink",), on_error="skip")
    made = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    made.host.load()
    return made


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Worker]:
    made = worker(tmp_path, "src", SOURCE)
    yield made
    made.sockets.ctx.destroy(linger=0)


def sent(made: Worker) -> list[tuple[object, object]]:
    """Every value the worker's one link holds, with its origin seq, in order."""
    link = made.outputs[0]
    link.flush()
    found = []
    for entry in link.outbox:
        header, end = decode_prefix(bytes(entry.frames[0]))
        runs = [(count, origin) for count, origin in header.origins]
        if header.kind is FrameKind.DATA_BATCH:
            parts = [bytes(p) for p in decode_batch(bytes(entry.frames[0]), end)]
        else:
            parts = [bytes(entry.frames[0])[end:]]
        origins = [origin[1] + i for count, origin in runs for i in range(count)]
        found += [(pickle.loads(p) if p else SKIP, o) for p, o in zip(parts, origins, strict=True)]
    return found


def test_a_source_burst_sends_its_values_with_consecutive_origins(source: Worker) -> None:
    hot = HotLoop(source.loop)
    while not source.ended:
        assert hot.source_burst(None)
    # 3 returned SKIP (a source sends nothing for it), 5 raised (on_error skip), 7 stopped
    assert sent(source) == [({"n": 1}, 1), ({"n": 2}, 2), ({"n": 4}, 3), ({"n": 6}, 4),
                            ({"n": 7}, 5)]  # fmt: skip
    assert source.counters.iterations == 6 and source.counters.skipped == 1
    assert source.counters.msgs_out == 5


def test_a_value_that_travels_alone_can_end_the_stream_too(tmp_path: Path) -> None:
    big = worker(tmp_path, "big", SOURCE.replace('return {"n": n}', 'return b"x" * 20000'))
    try:
        hot = HotLoop(big.loop)
        while not big.ended:
            assert hot.source_burst(None)
        assert big.counters.iterations == 6  # 7 called stop(): no 8th step()
        assert len(sent(big)) == 5
    finally:
        big.sockets.ctx.destroy(linger=0)


def test_a_source_burst_stops_at_the_iteration_limit_and_at_the_links_room(
    source: Worker,
) -> None:
    hot = HotLoop(source.loop)
    assert hot.source_burst(2) and source.counters.iterations == 2
    link = source.outputs[0]
    link.seq = 0
    link.outbox.held = link.settings.limit - len(link.batch)  # the window is full
    assert hot.budget() == 0
    source.request_stop("test")  # the wait for room ends at a stop, no value made
    assert hot.source_burst(None) and source.counters.iterations == 2


def test_a_source_with_a_full_link_waits_for_room_before_its_next_step(
    source: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot = HotLoop(source.loop)
    link = source.outputs[0]
    link.outbox.held = link.settings.limit  # the window is full
    waits: list[int] = []

    def acked(timeout_ms: int, poller: object = None) -> None:  # an ack frees 3 places
        waits.append(source.counters.iterations)
        link.outbox.held -= 3

    monkeypatch.setattr(source.loop.waiter, "wait", acked)
    assert hot.source_burst(None)  # waited, made nothing
    assert waits == [0] and source.counters.iterations == 0
    assert hot.source_burst(None) and source.counters.iterations == 3  # 3 places, one SKIP
    assert [value for value, _ in sent(source)] == [{"n": 1}, {"n": 2}]


def test_a_full_link_that_drops_the_oldest_takes_the_regular_path(tmp_path: Path) -> None:
    path = tmp_path / "src.py"
    path.write_text(SOURCE)
    config = PipelineConfig("src", (path,), 0, ("sink",), on_error="skip",
                            overflow="drop_oldest")  # fmt: skip
    made = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    made.host.load()
    try:
        hot = HotLoop(made.loop)
        made.outputs[0].outbox.held = made.outputs[0].settings.limit
        assert not hot.source_burst(None)  # MessageLoop.iterate: offer() drops the oldest
    finally:
        made.sockets.ctx.destroy(linger=0)


def test_a_stage_burst_passes_markers_and_origins_on(tmp_path: Path) -> None:
    stage = worker(tmp_path, "stage", STAGE, sources=1)
    inbox = stage.inbox
    assert inbox is not None
    headers = HeaderEncoder(1, 9, "src")
    inbox._accept([b"r", headers.encode(FrameKind.HELLO, 0)])
    stream = ("src", 3)
    for seq, value in enumerate([1, 2, 3, 4, SKIP, 6], start=1):
        payload = b"" if value is SKIP else pickle.dumps(value)
        frame = headers.encode_data(FrameKind.DATA, seq, [(1, (stream, seq + 100))]) + payload
        inbox._accept([b"r", frame])
    try:
        assert HotLoop(stage.loop).run_queue(inbox)
        # 2 returned SKIP, 4 raised, 5 was a marker already: each passes a marker on
        assert sent(stage) == [(10, 101), (SKIP, 102), (30, 103), (SKIP, 104), (SKIP, 105),
                               (60, 106)]  # fmt: skip
        assert inbox.sources["src"].processed == 6
        assert stage.counters.iterations == 4 and stage.counters.skipped == 1
    finally:
        stage.sockets.ctx.destroy(linger=0)


JOIN = """
def step(input_data):
    return input_data["b"] + input_data["c"]
"""


def test_a_join_runs_its_sets_and_passes_a_marker_for_a_set_without_a_partner(
    tmp_path: Path,
) -> None:
    join = worker(tmp_path, "join", JOIN, sources=2)
    inbox = join.inbox
    assert inbox is not None
    stream = ("a", 4)
    for name, values in (("b", [1, 2, SKIP]), ("c", [10, 20, 30])):
        headers = HeaderEncoder(1, 9, name)
        inbox._accept([name.encode(), headers.encode(FrameKind.HELLO, 0)])
        for seq, value in enumerate(values, start=1):
            payload = b"" if value is SKIP else pickle.dumps(value)
            runs = [(1, (stream, seq))]
            inbox._accept([name.encode(), headers.encode_data(FrameKind.DATA, seq, runs) + payload])
    try:
        assert HotLoop(join.loop).run_sets(inbox)
        # iteration 3 of `a` was filtered out on b's side: its set passes a marker on
        assert sent(join) == [(11, 1), (22, 2), (SKIP, 3)]
        assert join.counters.iterations == 2
        assert all(source.processed == 3 for source in inbox.sources.values())
    finally:
        join.sockets.ctx.destroy(linger=0)


JOIN_BURST = """
import porch
def step(input_data):
    b, c = input_data["b"], input_data["c"]
    if b == 4:
        raise ValueError("four")
    if b == 5:
        return porch.SKIP
    return b + c
"""

JOIN_INPUTS: tuple[list[object], list[object]] = ([1, 2, SKIP, 4, 5, 6, 7, 8],
                                                  [10, 20, 30, 40, 50, 60])  # fmt: skip


def joined(
    tmp_path: Path,
    name: str,
    burst: bool,
    careful: bool,
    script: str = JOIN_BURST,
    inputs: tuple[list[object], list[object]] = JOIN_INPUTS,
) -> tuple[list[tuple[object, object]], Worker]:
    """A join fed batches of b and c (ids 1..8 of `a`; b filtered 3 out), run by run_sets
    (`burst`: in runs of pairs, else one set at a time as the regular path does)."""
    join = worker(tmp_path / name, "join", script, sources=2)
    inbox = join.inbox
    assert inbox is not None
    stream = ("a", 4)
    for name_, values in zip("bc", inputs, strict=True):
        headers = HeaderEncoder(1, 9, name_)
        inbox._accept([name_.encode(), headers.encode(FrameKind.HELLO, 0)])
        for first in range(0, len(values), 3):  # batches of 3, b's and c's in turn
            chunk = values[first : first + 3]
            payloads = [b"" if v is SKIP else pickle.dumps(v) for v in chunk]
            head = headers.encode_data(FrameKind.DATA_BATCH, first + 1,
                                       [(len(chunk), (stream, first + 1))])  # fmt: skip
            inbox._accept([name_.encode(), encode_batch(head, payloads)])
    for source in inbox.sources.values():  # careful: replayed to a restarted join
        source.careful = 1000 if careful else 0
    hot = HotLoop(join.loop)
    bursts = []
    if burst:
        run_pairs = hot._join_burst
        hot._join_burst = lambda *args: bursts.append(run_pairs(*args))  # type: ignore[method-assign]
    else:
        hot.step = None  # every set through MessageLoop.take_one
    assert hot.run_sets(inbox)
    assert bool(bursts) == burst  # (the first values align one by one: they decide how)
    return sent(join), join


@pytest.mark.parametrize("careful", [True, False])
def test_a_join_burst_runs_pairs_as_the_regular_path_runs_sets(
    tmp_path: Path, careful: bool
) -> None:
    (tmp_path / "burst").mkdir()
    (tmp_path / "regular").mkdir()
    got, burst = joined(tmp_path, "burst", True, careful)
    want, regular = joined(tmp_path, "regular", False, careful)
    try:
        # 3 was filtered out on b's side, 4 raised (on_error skip), 5 returned SKIP: markers;
        # 7 and 8 wait for their partners
        assert got == want == [(11, 1), (22, 2), (SKIP, 3), (SKIP, 4), (SKIP, 5), (66, 6)]
        for made in (burst, regular):
            assert made.counters.iterations == 4 and made.counters.skipped == 1
            assert made.inbox is not None and made.inbox.counters.unpaired == 1
            assert [s.processed for s in made.inbox.sources.values()] == [6, 6]
            assert made.inbox.fanin.queued("b") == 2 and made.inbox.fanin.queued("c") == 0
    finally:
        burst.sockets.ctx.destroy(linger=0)
        regular.sockets.ctx.destroy(linger=0)


JOIN_TIGHT = """
import porch
def step(input_data):
    b, c = input_data["b"], input_data["c"]
    if b == 4:
        raise ValueError("four")
    if b == 5:
        return b"x" * 20000  # it travels alone
    if b == 7:
        return porch.SKIP
    if b == 8:
        porch.stop()
    return b + c
"""


def test_a_join_burst_without_markers_runs_as_the_regular_path_runs_sets(
    tmp_path: Path,
) -> None:
    """Pairs without markers, none careful, run in one tight loop: a failure (on_error), a
    SKIP, a value that travels alone and porch.stop() as on the regular path."""
    (tmp_path / "burst").mkdir()
    (tmp_path / "regular").mkdir()
    inputs = (list(range(1, 11)), [10 * b for b in range(1, 11)])
    got, burst = joined(tmp_path, "burst", True, False, JOIN_TIGHT, inputs)
    want, regular = joined(tmp_path, "regular", False, False, JOIN_TIGHT, inputs)
    try:
        # 4 raised (on_error skip) and 7 returned SKIP: markers; 8 stopped the stream
        assert got == want
        assert [value for value, _ in got] == [11, 22, 33, SKIP, b"x" * 20000, 66, SKIP, 88]
        for made in (burst, regular):
            assert made.ended
            assert made.counters.iterations == 7 and made.counters.skipped == 1
            assert made.inbox is not None and made.inbox.counters.unpaired == 0
            assert [s.processed for s in made.inbox.sources.values()] == [8, 8]
    finally:
        burst.sockets.ctx.destroy(linger=0)
        regular.sockets.ctx.destroy(linger=0)


def test_a_slow_sources_values_leave_one_by_one_with_the_same_bookkeeping(
    tmp_path: Path,
) -> None:
    """A slow step() runs in HotLoop._slow_source: same values, origins, counts, on_error,
    SKIP and stop() as the bursts; the iteration limit holds."""
    slow = SOURCE.replace("    n += 1\n", "    n += 1\n    time.sleep(0.003)\n")
    made = worker(tmp_path, "slow", "import time\n" + slow)
    try:
        hot = HotLoop(made.loop)
        calls = 0
        while not made.ended:
            assert hot.source_burst(None)
            calls += 1
        assert sent(made) == [({"n": 1}, 1), ({"n": 2}, 2), ({"n": 4}, 3), ({"n": 6}, 4),
                              ({"n": 7}, 5)]  # fmt: skip
        assert made.counters.iterations == 6 and made.counters.skipped == 1
        assert made.counters.msgs_out == 5
        assert calls < 6  # the slow values ran in one source_burst call, not one each
    finally:
        made.sockets.ctx.destroy(linger=0)
    limited = worker(tmp_path, "limited", "import time\n" + slow)
    try:
        hot = HotLoop(limited.loop)
        assert hot.source_burst(2) and limited.counters.iterations == 2
        assert [value for value, _ in sent(limited)] == [{"n": 1}, {"n": 2}]
    finally:
        limited.sockets.ctx.destroy(linger=0)


IDLE = """
import time
import porch
n = 0
def step():
    global n
    n += 1
    time.sleep(0.06)  # longer than TICK_S: each step() ended its run with the whole tick
    if n == 22:
        porch.stop()
    return {"n": n} if n == 6 else porch.SKIP
"""


def test_a_source_that_sends_nothing_does_its_housekeeping_with_its_heartbeat(
    tmp_path: Path,
) -> None:
    """A slow step() that returns SKIP: the tick (control, acks, link events) comes with the
    heartbeat, once a second, not after each step(); a value sent is followed by the tick as
    before, and the heartbeat keeps its cadence."""
    made = worker(tmp_path, "idle", IDLE)
    ticks: list[tuple[int, int]] = []  # (iterations, values sent) at each tick
    beats: list[float] = []
    tick, send_health = made.house.tick, made.house.send_health

    def counted_tick(now: float, control: bool = True, monitor: bool = True) -> None:
        ticks.append((made.counters.iterations, made.counters.msgs_out))
        tick(now, control, monitor)

    def counted_health() -> None:
        beats.append(time.monotonic())
        send_health()

    made.house.tick = counted_tick  # type: ignore[method-assign]
    made.house.send_health = counted_health  # type: ignore[method-assign]
    try:
        made.loop.run_source(None, HotLoop(made.loop))
        assert made.counters.iterations == 22 and made.counters.msgs_out == 1
        assert [value for value, _ in sent(made)] == [{"n": 6}]
        assert (6, 1) in ticks  # right after the value
        assert len(ticks) <= 5, ticks  # 22 step()s of 60 ms: one tick each before
        assert len(beats) >= 2 and all(
            later - earlier < HEARTBEAT_INTERVAL_S + 0.2 for earlier, later in pairwise(beats)
        ), beats
    finally:
        made.sockets.ctx.destroy(linger=0)
