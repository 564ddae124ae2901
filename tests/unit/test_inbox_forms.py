"""A known source's WHOLE batches are taken without decoding their headers (Inbox._take_batch)
with the same queue, counters, window and seqs as the regular path; whatever the form does not
fit (a duplicate, a gap, a seen origin, another connection, a departed source, a new instance,
a corrupt batch) goes the regular way."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workers.inbox
from porch.config import PipelineConfig
from porch.errors import WireError
from porch.wire import FrameKind, HeaderEncoder, encode_batch, encode_whole
from workers.inbox import Inbox
from workers.scheduler import Span
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

STREAM = ("src", 3)


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[tuple[Worker, Worker]]:
    made = []
    for name in ("fast", "regular"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "stage.py"
        path.write_text("def step(input_data):\n    return None\n")
        config = PipelineConfig("stage", (path,), 1, ("sink",))
        worker = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1",
                                              state_dir=tmp_path / name))  # fmt: skip
        worker.host.load()
        made.append(worker)
    yield made[0], made[1]
    for worker in made:
        worker.sockets.ctx.destroy(linger=0)


def whole(headers: HeaderEncoder, seq: int, origin_seq: int, count: int) -> bytes:
    values = [{"n": origin_seq + i} for i in range(count)]
    head = headers.encode_data(FrameKind.DATA_BATCH, seq, [(count, (STREAM, origin_seq))])
    return encode_whole(head, pickle.dumps(values, 5), count)


def state(inbox: Inbox) -> dict[str, Any]:
    """What the inbox holds and counts (a Span's values one by one)."""
    queued = []
    for entry in inbox.fanin.single()[1]:
        if type(entry) is Span:
            queued += [(entry.seq + i, entry.values[i], entry.origin(i), entry.generation)
                       for i in range(entry.at, len(entry.values))]  # fmt: skip
        else:
            queued.append(entry)
    source = inbox.sources["src"]
    return {
        "queued": queued,
        "counters": vars(inbox.counters).copy(),
        "received": source.received,
        "window": dict(source.window),
        "open": list(source.open),
        "route": source.route,
        "departed": set(inbox.departed),
    }


def test_whole_batches_of_a_known_source_are_taken_as_the_regular_path_takes_them(
    stages: tuple[Worker, Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, regular = (worker.inbox for worker in stages)
    assert fast is not None and regular is not None
    regular._learn_batch = lambda *args: None  # type: ignore[method-assign]
    first = HeaderEncoder(1, 9, "src")
    again = HeaderEncoder(1, 10, "src")  # the source restarted
    corrupt = whole(first, 22, 132, 2)
    corrupt = corrupt[:-6] + b"\x00" * 6  # (what follows the form's checks does not load)
    messages = [
        [b"r", first.encode(FrameKind.HELLO, 0)],
        [b"r", whole(first, 1, 101, 5)],  # learned
        [b"r", whole(first, 6, 106, 5)],  # taken by its form
        [b"r", whole(first, 11, 111, 3)],
        [b"r", whole(first, 11, 111, 3)],  # a duplicate
        [b"r", whole(first, 14, 111, 3)],  # values seen before (by origin)
        [b"r", whole(first, 20, 130, 2)],  # past a gap
        [b"r", corrupt],  # next in line, but it does not load: a bad frame, nothing taken
        [b"x", whole(first, 22, 132, 2)],  # another connection
        [b"r", whole(first, 24, 134, 2)],
        [b"r", first.encode(FrameKind.BYE, 25)],
        [b"r", whole(first, 26, 136, 2)],  # from a departed source
        [b"r", again.encode(FrameKind.HELLO, 0)],
        [b"r", whole(again, 1, 200, 4)],
        [b"r", whole(again, 5, 204, 4)],
        [b"r", whole(first, 28, 138, 2)],  # its old instance: refused
    ]
    decoded = 0
    decode = workers.inbox.decode_prefix

    def counting(frame: bytes) -> Any:
        nonlocal decoded
        decoded += 1
        return decode(frame)

    monkeypatch.setattr(workers.inbox, "decode_prefix", counting)
    for message in messages:
        outcomes = []
        for inbox in (fast, regular):
            try:
                inbox._accept(message)
                outcomes.append("taken")
            except WireError as exc:
                outcomes.append(f"bad: {exc}")
        assert outcomes[0] == outcomes[1], message
        assert state(fast) == state(regular), message
    counters = state(fast)["counters"]
    assert counters["duplicates"] == 4 and counters["msgs_in"] == 29  # (1 by seq, 3 by origin)
    # the regular inbox decoded every header; the other skipped those of the 5 batches its
    # forms took (the corrupt one among them)
    assert decoded == 2 * len(messages) - 5


def test_a_joins_spans_of_whole_batches_are_known_to_hold_no_marker(tmp_path: Path) -> None:
    """A WHOLE batch holds small plain values only (porch/wire.py): its Span is not scanned
    for skip markers (Span.marked), by the form's path and the regular one alike; a batch of
    the separate layout is, and its marker is found."""
    path = tmp_path / "join.py"
    path.write_text("def step(input_data):\n    return None\n")
    config = PipelineConfig("join", (path,), 2, ("sink",))
    join = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    try:
        join.host.load()
        inbox = join.inbox
        assert inbox is not None
        headers = {"b": HeaderEncoder(1, 9, "b"), "c": HeaderEncoder(1, 11, "c")}
        for name, encoder in headers.items():
            inbox._accept([name.encode(), encoder.encode(FrameKind.HELLO, 0)])
            inbox._accept([name.encode(), whole(encoder, 1, 1, 4)])  # (the gate decides)
        assert inbox.fanin.takes_spans()
        log = inbox.fanin._aligner.log
        for seq, name in ((5, "b"), (5, "c"), (9, "b"), (9, "c")):  # learned, then by form
            inbox._accept([name.encode(), whole(headers[name], seq, seq, 4)])
            assert log and log[-1][1].skips is False  # type: ignore[union-attr]
        head = headers["b"].encode_data(FrameKind.DATA_BATCH, 13, [(2, (STREAM, 13))])
        inbox._accept([b"b", encode_batch(head, [pickle.dumps({"n": 13}), b""])])
        span = log[-1][1]
        assert isinstance(span, Span) and span.skips is None and span.marked()
    finally:
        join.sockets.ctx.destroy(linger=0)
