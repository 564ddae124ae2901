"""A source burst's small plain values leave as ONE pickle (a WHOLE DATA_BATCH): the same
values, origins and order as one by one, one loads at the receiver, a corrupt one is a bad
frame, a replay of it is deduplicated."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from porch.errors import WireError
from porch.wire import (
    WHOLE,
    FrameKind,
    HeaderEncoder,
    decode_prefix,
    encode_whole,
    load_whole,
    read_batch,
)
from tests.unit.test_hotloop import sent, worker
from tests.unit.test_inbox_spans import STREAM, connect, stage
from workers.hotloop import _NOT_PLAIN, HotLoop, _captured
from workers.sendqueue import data_of
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)
__all__ = ["stage"]  # (the fixture, used below)

MIXED = """
import porch
n = 0
def step():
    global n
    n += 1
    if n == 4:
        return {1, 2}  # a set: not plain
    if n == 6:
        return {"deep": [6]}  # nested: not captured
    if n == 9:
        porch.stop()
    return {"n": n, "t": "x"} if n % 2 else [n, None, 1.5]
"""


LARGE = """
import porch
n = 0
def step():
    global n
    n += 1
    if n == 40:
        porch.stop()
    return {"n": n, "blob": "x" * 100_000}  # plain by type, large by size
"""


@pytest.fixture
def large(tmp_path: Path) -> Iterator[Worker]:
    made = worker(tmp_path, "large", LARGE)
    yield made
    made.sockets.ctx.destroy(linger=0)


def test_a_burst_of_plain_but_large_values_sends_each_alone_within_the_byte_bounds(
    large: Worker,
) -> None:
    hot = HotLoop(large.loop)
    while not large.ended:
        assert hot.source_burst(None)
        large.outputs[0].flush()
        sizes = [sum(len(frame) for frame in entry.frames) for entry in large.outputs[0].outbox]
        assert max(sizes) < 2 * 100_000  # no frame of a whole burst of them
    got = []
    for entry in large.outputs[0].outbox:  # each a message of its own (header, payload)
        header, _ = decode_prefix(bytes(entry.frames[0]))
        assert header.kind is FrameKind.DATA and len(entry.frames) == 2
        got.append((pickle.loads(bytes(entry.frames[1]))["n"], header.origins[0][1][1]))
    assert got == [(n, n) for n in range(1, 41)]
    assert large.counters.msgs_out == 40 and large.counters.iterations == 40


def whole_frame(headers: HeaderEncoder, seq: int, origin_seq: int, values: list[object]) -> bytes:
    header = headers.encode_data(FrameKind.DATA_BATCH, seq, [(len(values), (STREAM, origin_seq))])
    return encode_whole(header, pickle.dumps(values, 5), len(values))


def test_a_whole_batch_round_trips_and_a_corrupt_one_is_a_wire_error() -> None:
    values: list[object] = [{"a": 1, "b": "x"}, [1, 2.5, None], (b"b", True), 7, "s"]
    frame = encode_whole(b"H", pickle.dumps(values, 5), len(values))
    batch = read_batch(frame, 1)
    assert batch.whole and len(batch.lengths) == 5
    assert load_whole(batch.region, 5) == values
    assert [pickle.loads(part) for part in batch.parts()] == values  # each alone, protocol 3
    blob = pickle.dumps(values, 5)
    for bad in (blob[:-3], b"garbage", pickle.dumps(tuple(values), 5), pickle.dumps(values[:4])):
        region = read_batch(encode_whole(b"H", bad, 5), 1).region
        with pytest.raises(WireError):
            load_whole(region, 5)
    with pytest.raises(WireError):
        read_batch(b"H" + (0 | WHOLE).to_bytes(4, "big") + blob, 1)  # count 0


def test_only_flat_values_of_exact_atoms_are_captured_and_the_copy_is_taken_now() -> None:
    shared = [1, 2]
    assert _captured({"a": shared, "b": shared}) is _NOT_PLAIN  # nested: today's path
    assert _captured({(1, 2): 3}) is _NOT_PLAIN  # a tuple key
    assert _captured([True, {1}]) is _NOT_PLAIN and _captured({1, 2}) is _NOT_PLAIN

    class Str(str):
        pass

    assert _captured([Str("x")]) is _NOT_PLAIN and _captured(Str("x")) is _NOT_PLAIN
    assert _captured(b"x" * 20000) is _NOT_PLAIN  # large: travels alone (byte bounds)
    value = {"n": 1}
    copy = _captured(value)
    value["n"] = 2  # the script reuses its object after step() returned
    assert copy == {"n": 1}
    items = [1, "a"]
    copied = _captured(items)
    items.append(3)
    assert copied == [1, "a"]


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Worker]:
    made = worker(tmp_path, "mixed", MIXED)
    yield made
    made.sockets.ctx.destroy(linger=0)


def test_a_burst_mixing_plain_and_other_values_keeps_their_order(mixed: Worker) -> None:
    hot = HotLoop(mixed.loop)
    while not mixed.ended:
        assert hot.source_burst(None)
    got = sent(mixed)
    values = [value for value, _ in got]
    first = [{"n": 1, "t": "x"}, [2, None, 1.5], {"n": 3, "t": "x"}, {1, 2}, {"n": 5, "t": "x"}]
    assert values[:5] == first
    assert values[5] == {"deep": [6]}
    assert values[6:] == [{"n": 7, "t": "x"}, [8, None, 1.5], {"n": 9, "t": "x"}]
    assert [origin for _, origin in got] == list(range(1, 10))
    entries = mixed.outputs[0].outbox
    frame = bytes(next(iter(entries)).frames[0])
    header, end = decode_prefix(frame)
    assert header.kind is FrameKind.DATA_BATCH and read_batch(frame, end).whole  # 1-3: one pickle
    assert mixed.counters.msgs_out == 9


def test_a_whole_batch_is_queued_and_its_replay_deduplicated(stage: Worker) -> None:
    inbox = stage.inbox
    assert inbox is not None
    headers = connect(inbox)
    inbox._accept([b"r", whole_frame(headers, 1, 101, [1, 3, 5])])
    assert inbox.fanin.depth() == 3
    inbox._accept([b"r", whole_frame(headers, 1, 101, [1, 3, 5])])  # resent after a reconnect
    assert inbox.fanin.depth() == 3 and inbox.counters.duplicates  # (as a resent batch)
    with pytest.raises(WireError):
        inbox._accept([b"r", whole_frame(headers, 4, 104, [1])[:-4]])  # corrupt: a bad frame
    assert inbox.fanin.depth() == 3
    assert HotLoop(stage.loop).run_queue(inbox)
    assert sent(stage) == [(10, 101), (30, 102), (50, 103)]


SHARED = """
import porch
buf = []
n = 0
def step():
    global n
    n += 1
    if n == 6:
        porch.stop()
    buf.append(n)  # the same list each time, changed after step() returned it
    return {"n": n, "buf": buf} if n % 2 else {"n": n}
"""


def test_a_dict_holding_a_mutable_item_is_sent_as_step_returned_it(tmp_path: Path) -> None:
    made = worker(tmp_path, "shared", SHARED)
    try:
        hot = HotLoop(made.loop)
        while not made.ended:
            assert hot.source_burst(None)
        values = [value for value, _ in sent(made)]
        assert values == [{"n": 1, "buf": [1]}, {"n": 2}, {"n": 3, "buf": [1, 2, 3]}, {"n": 4},
                          {"n": 5, "buf": [1, 2, 3, 4, 5]}, {"n": 6}]  # fmt: skip
    finally:
        made.sockets.ctx.destroy(linger=0)


def test_the_plain_test_takes_exact_atoms_only_at_any_place() -> None:
    class Str(str):
        pass

    class Int(int):
        pass

    plain: list[object] = [{}, [], (), {"a": 1, 2: b"x", None: 1.5, True: None}, (1, "x", False)]
    plain += [[1, 2.5, None, b"y"], 3, 2.5, None, True, "s", b"b"]
    for value in plain:
        copy = _captured(value)
        assert copy == value and type(copy) is type(value)
        assert copy is value or type(value) in (dict, list)
        assert copy is not value or type(value) not in (dict, list)
    bad: list[object] = [{Str("a"): 1}, {"a": Str("b")}, {"a": Int(1)}, {Int(1): 2}]
    bad += [[1, Int(2)], (1, Str("x")), {"a": (1,)}, [[1]], ((1,),), Int(3), Str("x"), 1j]
    for value in [*bad, bytearray(), {1}, b"x" * 20000]:
        assert _captured(value) is _NOT_PLAIN, value


SUBCLASSED = """
import porch
class Key(str):
    pass
n = 0
def step():
    global n
    n += 1
    if n == 5:
        porch.stop()
    return {Key("k") if n == 3 else "k": n}
"""


def test_a_dict_with_a_key_of_a_str_subclass_is_not_in_a_whole_batch(tmp_path: Path) -> None:
    made = worker(tmp_path, "subclassed", SUBCLASSED)
    try:
        hot = HotLoop(made.loop)
        while not made.ended:
            assert hot.source_burst(None)
        made.outputs[0].flush()
        outbox = made.outputs[0].outbox
        whole = [pickle.loads(p) for entry in outbox if entry.whole for p in entry.payloads() or ()]
        assert {"k": 1} in whole and 3 not in [value["k"] for value in whole]
        assert all(type(key) is str for value in whole for key in value)
    finally:
        made.sockets.ctx.destroy(linger=0)


KEPT = """
import porch
kept = {"n": 0}
n = 0
def step():
    global n
    n += 1
    if n == 6:
        porch.stop()
    if n % 2:
        kept["n"] = n  # the script's own dict, changed after step() returned it
        return kept
    return {"n": n}  # a new one: nobody else holds it, no copy needed
"""


def test_a_dict_the_script_keeps_is_copied_a_new_one_is_not_changed(tmp_path: Path) -> None:
    made = worker(tmp_path, "kept", KEPT)
    try:
        hot = HotLoop(made.loop)
        while not made.ended:
            assert hot.source_burst(None)
        assert [value for value, _ in sent(made)] == [{"n": n} for n in range(1, 7)]
    finally:
        made.sockets.ctx.destroy(linger=0)


PLAIN = """
import porch
n = 0
def step():
    global n
    n += 1
    if n == 5:
        porch.stop()
    return {"n": n, "t": "x"}
"""


def test_a_whole_entry_keeps_only_its_frame_and_splits_for_a_replay(tmp_path: Path) -> None:
    made = worker(tmp_path, "plain", PLAIN)
    try:
        hot = HotLoop(made.loop)
        while not made.ended:
            assert hot.source_burst(None)
        link = made.outputs[0]
        link.flush()
        entries = list(link.outbox)
        assert [entry.count for entry in entries] == [5] and entries[0].whole
        values = [{"n": n, "t": "x"} for n in range(1, 6)]
        assert [value for value, _ in sent(made)] == values
        taken = data_of(entries[0])  # (a replica gone hands its values to the others)
        assert [pickle.loads(frames[0]) for frames, _ in taken] == values
        assert [origin[1] for _, origin in taken] == [1, 2, 3, 4, 5]
        assert [pickle.dumps(value, 3) for value in values] == [f[0] for f, _ in taken]
        link.outbox.split_batches(link.framer.headers)  # a restarted target: one by one
        assert [entry.seq for entry in link.outbox] == [1, 2, 3, 4, 5]
        assert [value for value, _ in sent(made)] == values
    finally:
        made.sockets.ctx.destroy(linger=0)
