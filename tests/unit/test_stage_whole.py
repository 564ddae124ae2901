"""A one-source stage's small plain outputs leave as ONE pickle per run (a WHOLE DATA_BATCH),
as a source's bursts do: the same values, markers, origins (its inputs', another pipeline's
stream) and order as one by one; a failure, a marker, a value that is not plain split the run;
a run too large for one frame goes value by value within the byte bounds."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

from porch.config import OnError, PipelineConfig
from porch.stream import SKIP
from porch.wire import FrameKind, HeaderEncoder, Run, decode_prefix, encode_whole, read_batch
from tests.unit.test_hotloop import sent
from tests.unit.test_inbox_spans import STREAM, batch, connect
from workers.hotloop import WHOLE_MIN, HotLoop
from workers.scheduler import Span
from workers.sendqueue import MAX_BATCH_BYTES, data_of
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

MIXED = """
import porch
def step(input_data):
    value = input_data["src"]
    if value == 5:
        return porch.SKIP
    if value == 45:
        raise ValueError("forty-five")
    if value == 55:
        return {"v": value, "s": "x" * 20000}  # plain by type: one pickle with the others
    if value == 70:
        return {1, 2}  # a set: not plain, and the rest of the burst goes one by one
    return {"v": value, "s": "x"}
"""

LARGE = """
def step(input_data):
    return {"v": input_data["src"], "blob": "x" * 100_000}  # plain by type, large by size
"""

PASS = """
def step(input_data):
    return [input_data["src"], 1.5, None]
"""


def make(tmp_path: Path, script: str) -> Worker:
    path = tmp_path / "stage.py"
    path.write_text(script)
    config = PipelineConfig("stage", (path,), 1, ("sink",), on_error=OnError.SKIP)
    made = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    made.host.load()
    assert made.inbox is not None
    return made


@pytest.fixture
def stage_of(tmp_path: Path) -> Iterator[object]:
    made: list[Worker] = []

    def build(script: str) -> Worker:
        folder = tmp_path / f"w{len(made)}"
        folder.mkdir()
        made.append(make(folder, script))
        return made[-1]

    yield build
    for worker in made:
        worker.sockets.ctx.destroy(linger=0)


def frames(made: Worker) -> list[tuple[FrameKind, bool, tuple[Run, ...], int]]:
    """Each outbox entry: its kind, whether it is a WHOLE batch, its origin runs, its count."""
    link = made.outputs[0]
    link.flush()
    found = []
    for entry in link.outbox:
        frame = bytes(entry.frames[0])
        header, end = decode_prefix(frame)
        whole = header.kind is FrameKind.DATA_BATCH and read_batch(frame, end).whole
        found.append((header.kind, whole, header.origins, entry.count))
    return found


def feed(made: Worker, spans: list[tuple[int, int, list[object]]]) -> HeaderEncoder:
    """Batches (first link seq, first origin seq, values) from "src", queued as Spans."""
    inbox = made.inbox
    assert inbox is not None
    headers = connect(inbox)
    inbox.sources["src"].careful = 0  # (a careful start takes its inputs one by one)
    for seq, origin_seq, values in spans:
        inbox._accept(batch(headers, seq, origin_seq, values, raw=False))
    assert all(type(entry) is Span for entry in inbox.fanin.single()[1])
    return headers


def test_a_mixed_burst_keeps_its_order_markers_and_origins(stage_of) -> None:  # type: ignore[no-untyped-def]
    stage = stage_of(MIXED)
    inputs: list[object] = list(range(1, 81))
    inputs[24] = SKIP  # value 25: filtered out upstream, a marker already
    feed(stage, [(1, 101, inputs)])
    assert HotLoop(stage.loop).run_queue(stage.inbox)
    expected: list[object] = []
    for value in inputs:
        if value in (5, 45) or value is SKIP:
            expected.append(SKIP)  # returned SKIP, raised (on_error skip), or a marker
        elif value == 55:
            expected.append({"v": 55, "s": "x" * 20000})
        elif value == 70:
            expected.append({1, 2})
        else:
            expected.append({"v": value, "s": "x"})
    assert sent(stage) == list(zip(expected, range(101, 181), strict=True))
    # runs of plain outputs between markers and the failure: 6-24, 26-44 and 46-69 as one
    # pickle each (the 20 KB value among them), 1-4 (short) and 71-80 (after the set) one by
    # one
    got = frames(stage)
    wholes = [(runs, count) for _, whole, runs, count in got if whole]
    assert wholes == [(((19, (STREAM, 106)),), 19), (((19, (STREAM, 126)),), 19),
                      (((24, (STREAM, 146)),), 24)]  # fmt: skip
    assert sum(count for *_, count in got) == 80
    assert stage.counters.iterations == 78 and stage.counters.msgs_out == 77  # (as one by one)
    assert stage.counters.skipped == 1 and stage.inbox.sources["src"].processed == 80


def test_a_run_across_spans_carries_their_origins_as_runs(stage_of) -> None:  # type: ignore[no-untyped-def]
    stage = stage_of(PASS)
    # consecutive origins (one run), then a gap (a second run)
    feed(stage, [(1, 101, list(range(20))), (21, 121, list(range(20, 40))),
                 (41, 151, list(range(40, 60)))])  # fmt: skip
    assert HotLoop(stage.loop).run_queue(stage.inbox)
    got = frames(stage)
    assert [(whole, runs, count) for _, whole, runs, count in got] == [
        (True, ((40, (STREAM, 101)), (20, (STREAM, 151))), 60)]  # fmt: skip
    values = [[v, 1.5, None] for v in range(60)]
    origins = [*range(101, 141), *range(151, 171)]
    assert sent(stage) == list(zip(values, origins, strict=True))
    # a replay (or a replica's hand-off) splits the entry: each value with its origin
    entry = next(iter(stage.outputs[0].outbox))
    split = data_of(entry)
    assert [pickle.loads(payload[0]) for payload, _ in split] == values
    assert [origin for _, origin in split] == [(STREAM, seq) for seq in origins]


def test_a_run_across_two_origin_streams_keeps_each_ones_run(stage_of) -> None:  # type: ignore[no-untyped-def]
    stage = stage_of(PASS)
    headers = feed(stage, [(1, 101, list(range(20)))])
    other = ("src", 4)  # the source's next epoch: another origin stream
    header = headers.encode_data(FrameKind.DATA_BATCH, 21, [(20, (other, 1))])
    stage.inbox._accept([b"r", encode_whole(header, pickle.dumps(list(range(20, 40)), 5), 20)])
    assert HotLoop(stage.loop).run_queue(stage.inbox)
    assert [(whole, runs) for _, whole, runs, _ in frames(stage)] == [
        (True, ((20, (STREAM, 101)), (20, (other, 1))))]  # fmt: skip


KEEPS = """
out = {}
kept = []
def step(input_data):
    value = input_data["src"]
    if value["n"] % 3 == 0:  # the same dict each time, changed after it was returned
        out["n"] = value["n"]
        return out
    if value["n"] % 3 == 1:  # its input, kept (taken out of the input dict) and changed later
        kept.append(input_data.pop("src"))
        return kept[-1]
    for old in kept:
        old["late"] = True
    return value  # its input, as it came
"""


def test_a_returned_dict_that_the_script_changes_later_leaves_as_it_was_returned(
    stage_of,  # type: ignore[no-untyped-def]
) -> None:
    stage = stage_of(KEEPS)
    feed(stage, [(1, 101, [{"n": n} for n in range(60)])])
    assert HotLoop(stage.loop).run_queue(stage.inbox)
    assert [whole for _, whole, _, _ in frames(stage)] == [True]
    assert sent(stage) == [({"n": n}, 101 + n) for n in range(60)]


def test_the_next_stage_queues_a_stages_whole_batch_with_its_origins(stage_of) -> None:  # type: ignore[no-untyped-def]
    stage = stage_of(PASS)
    feed(stage, [(1, 101, list(range(WHOLE_MIN * 2)))])
    assert HotLoop(stage.loop).run_queue(stage.inbox)
    link = stage.outputs[0]
    link.flush()
    (entry,) = link.outbox
    after = stage_of(PASS.replace('"src"', '"stage"'))
    inbox = after.inbox
    inbox._accept([b"r", link.framer.headers.encode(FrameKind.HELLO, 0)])
    inbox._accept([b"r", bytes(entry.frames[0])])
    (span,) = inbox.fanin.single()[1]
    assert type(span) is Span and span.stream == STREAM and span.origin_seq == 101
    assert span.values == [[v, 1.5, None] for v in range(WHOLE_MIN * 2)]


def test_a_run_too_large_for_one_frame_goes_value_by_value_within_the_byte_bounds(
    stage_of,  # type: ignore[no-untyped-def]
) -> None:
    stage = stage_of(LARGE)
    feed(stage, [(1, 101, list(range(1, 41)))])
    assert HotLoop(stage.loop).run_queue(stage.inbox)
    link = stage.outputs[0]
    link.flush()
    sizes = [sum(len(frame) for frame in entry.frames) for entry in link.outbox]
    assert max(sizes) < 2 * 100_000 < MAX_BATCH_BYTES  # each alone, not one frame of them
    assert [kind for kind, *_ in frames(stage)] == [FrameKind.DATA] * 40
    got = []
    for entry in link.outbox:  # each a message of its own (header, payload)
        header, _ = decode_prefix(bytes(entry.frames[0]))
        got.append((pickle.loads(bytes(entry.frames[1]))["v"], header.origins[0][1]))
    assert got == [(v, (STREAM, 100 + v)) for v in range(1, 41)]
    # each counted once: an iteration of the burst, not again by after_step
    assert stage.counters.iterations == 40 and stage.counters.msgs_out == 40


KEYS = """
import http
def step(input_data):
    value = input_data["src"]
    if 20 <= value < 40:
        return {http.HTTPStatus.OK: value}  # a key of another class: an IntEnum
    return {(value, "t"): value, "v": value}  # builtin keys, a tuple among them
"""


def test_dict_keys_are_checked_when_the_run_is_pickled(stage_of) -> None:  # type: ignore[no-untyped-def]
    stage = stage_of(KEYS)
    headers = feed(stage, [(1, 101, list(range(20)))])
    hot = HotLoop(stage.loop)
    assert hot.run_queue(stage.inbox)
    for seq in (21, 41):  # then a run with IntEnum keys, then builtin keys again
        header = headers.encode_data(FrameKind.DATA_BATCH, seq, [(20, (STREAM, 100 + seq))])
        blob = pickle.dumps(list(range(seq - 1, seq + 19)), 5)
        stage.inbox._accept([b"r", encode_whole(header, blob, 20)])
        assert hot.run_queue(stage.inbox)
    # builtin keys (a tuple: not an atom) leave as one pickle of builtins; a run with an
    # IntEnum key goes value by value, and from then on a dict's keys are checked as step()
    # returns it: the tuple keys go value by value too, as they did before
    assert [(whole, count) for _, whole, _, count in frames(stage)] == [
        (True, 20), (False, 20), (False, 20)]  # fmt: skip
    expected = [{(v, "t"): v, "v": v} if not 20 <= v < 40 else {HTTPStatus.OK: v}
                for v in range(60)]  # fmt: skip
    got = sent(stage)
    assert got == list(zip(expected, range(101, 161), strict=True))
    assert all(type(next(iter(value))) is HTTPStatus for value, _ in got[20:40])
    assert stage.counters.iterations == 60 and stage.counters.msgs_out == 60
