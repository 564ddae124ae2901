"""A batch's values go through a one-source stage per frame (a Span, committed as a range)
with the same values, markers, origins, on_error and exact acknowledgements as one by one;
a batch that overlaps what was seen, or holds a value that does not decode, goes one by one."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from porch.config import OnError, PipelineConfig
from porch.serializers import get
from porch.stream import SKIP
from porch.wire import (
    HELLO_REPLAY,
    FrameKind,
    HeaderEncoder,
    decode_header,
    decode_prefix,
    encode_batch,
)
from tests.unit.test_hotloop import sent
from workers.hotloop import HotLoop
from workers.inbox import Inbox, OpenSeqs, Undecodable
from workers.scheduler import Span
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

STAGE = """
import porch
seen = []
def step(input_data):
    value = input_data["src"]
    seen.append(value)
    if value == 2:
        return porch.SKIP
    if value == 4:
        raise ValueError("four")
    if value == 7:
        return b"x" * 20000  # travels alone
    return value * 10
"""
STREAM = ("src", 3)
CAREFUL = 8  # the first 8 inputs replayed to us are acknowledged one by one; then every 4


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Worker]:
    path = tmp_path / "stage.py"
    path.write_text(STAGE)
    config = PipelineConfig("stage", (path,), 1, ("sink",), on_error=OnError.SKIP)
    made = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    made.host.load()
    assert made.inbox is not None
    made.inbox._careful, made.inbox._ack_every = CAREFUL, CAREFUL // 2  # (its output's: 1000)
    yield made
    made.sockets.ctx.destroy(linger=0)


def batch(
    headers: HeaderEncoder, seq: int, origin_seq: int, values: list[object], raw: bool = True
) -> list[bytes]:
    """A DATA_BATCH of `values` (`raw`: bytes values are payloads as they are; else every
    value as the pickle serializer's dumps_one makes it: the one-pickle layout)."""
    dumps = get("pickle").dumps_one if not raw else pickle.dumps
    assert dumps is not None
    payloads = [b"" if v is SKIP else v if raw and isinstance(v, bytes) else dumps(v)
                for v in values]  # fmt: skip
    header = headers.encode_data(FrameKind.DATA_BATCH, seq, [(len(values), (STREAM, origin_seq))])
    return [b"r", encode_batch(header, payloads)]


def connect(inbox: Inbox, instance: int = 9, flags: int = HELLO_REPLAY) -> HeaderEncoder:
    """A source says hello (HELLO_REPLAY: it replays to us, we restarted: acks one by one)."""
    headers = HeaderEncoder(1, instance, "src")
    inbox._accept([b"r", headers.encode(FrameKind.HELLO, flags)])
    return headers


def record_acks(inbox: Inbox, stage: Worker) -> list[tuple[int, int]]:
    """Every ack the inbox sends, with how many step()s had run then."""
    seen = stage.loop.host.direct_step()[0].__globals__["seen"]  # type: ignore[index]
    acks: list[tuple[int, int]] = []
    inbox.link.ack = lambda route, frame: acks.append((decode_header(frame).seq, len(seen)))  # type: ignore[method-assign]
    return acks


def test_open_seqs_are_runs_done_in_order_or_not() -> None:
    seqs = OpenSeqs()
    seqs.add(1, 5)
    seqs.add(6, 8)  # consecutive: one run
    seqs.append(10)
    assert list(seqs.runs) == [[1, 8], [10, 10]] and seqs.oldest == 1
    seqs.done(1, 3)
    assert seqs.oldest == 4
    seqs.done(6, 6)  # out of order (a join): the run splits
    assert list(seqs) == [4, 5, 7, 8, 10]
    seqs.done(20, 20)  # not here: nothing
    seqs.done(4, 5)
    seqs.done(7, 8)
    assert list(seqs) == [10]
    seqs.done(10, 10)
    assert not seqs
    assert list(OpenSeqs([3, 4, 6]).runs) == [[3, 4], [6, 6]]


def test_a_batch_runs_as_a_span_with_markers_errors_and_exact_acks(stage: Worker) -> None:
    inbox = stage.inbox
    assert inbox is not None
    headers = connect(inbox)
    acks = record_acks(inbox, stage)
    careful = list(range(11, 19))  # seqs 1-8: acknowledged one by one
    rest = [1, 2, 3, 4, SKIP, 6, 7, 8, 9, 10, 11, 12]  # seqs 9-20
    inbox._accept(batch(headers, 1, 101, careful))
    inbox._accept(batch(headers, 9, 109, rest))
    queue = inbox.fanin.single()[1]
    assert [type(entry) for entry in queue] == [Span, Span]
    assert inbox.fanin.depth() == 20 and inbox.counters.msgs_in == 20
    assert HotLoop(stage.loop).run_queue(inbox)
    inbox.flush_acks()
    out = [110, 120, 130, 140, 150, 160, 170, 180, 10, SKIP, 30, SKIP, SKIP, 60, b"x" * 20000,
           80, 90, 100, 110, 120]  # fmt: skip
    assert sent(stage) == list(zip(out, range(101, 121), strict=True))
    assert inbox.sources["src"].processed == 20 and not queue
    assert stage.counters.iterations == 18 and stage.counters.skipped == 1
    # one by one at first, then every 4 (or more: a span's commit), and at the end; never
    # one that covers an input whose step() had not run (values 1-12 call step() once each,
    # the marker at seq 13 does not)
    assert [seq for seq, _ in acks[:8]] == list(range(1, 9))
    assert acks[-1][0] == 20
    for seq, steps in acks:
        assert steps >= seq - (seq >= 13)
    assert [seq for seq, _ in acks] == sorted({seq for seq, _ in acks})


def test_an_undecodable_value_in_a_batch_goes_alone_and_the_rest_are_queued(
    stage: Worker,
) -> None:
    inbox = stage.inbox
    assert inbox is not None
    headers = connect(inbox)
    inbox._accept(batch(headers, 1, 101, [1, b"\x80garbage", 3]))
    assert inbox.undecodable == 1 and inbox.fanin.depth() == 3
    items = [inbox.fanin.next_item() for _ in range(3)]
    assert items[0][1] == 1 and items[2][1] == 3 and isinstance(items[1][1], Undecodable)
    assert [item[2] for item in items] == [(STREAM, 101), (STREAM, 102), (STREAM, 103)]


def test_a_restarted_source_replaying_seen_origins_has_only_its_new_values_queued(
    stage: Worker,
) -> None:
    inbox = stage.inbox
    assert inbox is not None
    headers = connect(inbox)
    inbox._accept(batch(headers, 1, 101, [1, 2, 3, 4]))
    headers = connect(inbox, instance=10)  # it restarted and sends 103 on again
    inbox._accept(batch(headers, 1, 103, [3, 4, 5, 6]))
    assert inbox.counters.duplicates == 2 and inbox.counters.msgs_in == 6
    items = [inbox.fanin.next_item() for _ in range(inbox.fanin.depth())]
    assert [(item[1], item[2][1]) for item in items] == [
        (1, 101), (2, 102), (3, 103), (4, 104), (5, 105), (6, 106)]  # fmt: skip
    # a batch that is all new again is one span
    inbox._accept(batch(headers, 5, 107, [7, 8]))
    assert [type(entry) for entry in inbox.fanin.single()[1]] == [Span]


def test_a_batch_loaded_in_one_call_is_one_span_of_its_values(stage: Worker) -> None:
    inbox = stage.inbox
    assert inbox is not None
    headers = connect(inbox)
    values: list[object] = [b"", pickle.dumps(1, protocol=3), {"a": [1, 2]}, SKIP, "x"]
    inbox._accept(batch(headers, 1, 101, values, raw=False))
    queue = inbox.fanin.single()[1]
    assert [type(entry) for entry in queue] == [Span]
    assert queue[0].values == values  # bytes stay bytes (never loaded twice), a marker is SKIP
    assert inbox.undecodable == 0 and inbox.counters.msgs_in == 5


def test_a_stage_with_a_full_link_waits_for_room_before_its_next_input(
    stage: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = stage.inbox
    assert inbox is not None
    headers = connect(inbox)
    inbox.sources["src"].careful = 0
    inbox._accept(batch(headers, 1, 101, [10, 11, 12, 13, 14]))
    link = stage.outputs[0]
    link.outbox.held = link.settings.limit  # the window is full
    seen = stage.loop.host.direct_step()[0].__globals__["seen"]  # type: ignore[index]
    waits: list[int] = []

    def acked(timeout_ms: int, poller: object = None, ready: object = None) -> None:
        waits.append(len(seen))  # an ack frees 3 places
        link.outbox.held -= 3

    monkeypatch.setattr(stage.loop.waiter, "wait", acked)
    assert HotLoop(stage.loop).run_queue(inbox)
    assert waits == [0, 3]  # no step() ran with its output waiting for room
    link.flush()
    kinds = [decode_prefix(bytes(entry.frames[0]))[0].kind for entry in link.outbox]
    assert kinds == [FrameKind.DATA_BATCH]  # (the wait here sends nothing): none alone
    assert [value for value, _ in sent(stage)] == [100, 110, 120, 130, 140]


def test_a_replica_sources_batch_loaded_in_one_call_still_goes_value_by_value(
    stage: Worker,
) -> None:
    inbox = stage.inbox
    assert inbox is not None
    one, two = HeaderEncoder(1, 9, "B#a1-1"), HeaderEncoder(1, 9, "B#a1-2")
    for headers in (one, two):
        inbox._accept([b"r", headers.encode(FrameKind.HELLO, 0)])
    inbox._accept(batch(one, 1, 101, [1, 2], raw=False))
    # B#a1-1 went away and its values were handed to B#a1-2, which sends them again
    inbox._accept(batch(two, 1, 101, [1, 2, 3], raw=False))
    assert inbox.counters.duplicates == 2 and inbox.counters.msgs_in == 3
    items = [inbox.fanin.next_item() for _ in range(inbox.fanin.depth())]
    assert [(item[1], item[2]) for item in items] == [(1, (STREAM, 101)), (2, (STREAM, 102)),
                                                      (3, (STREAM, 103))]  # fmt: skip
