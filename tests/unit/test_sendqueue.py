"""An output link's parts without sockets: the batch, the framer and the send queue."""

from __future__ import annotations

from porch.wire import FrameKind, HeaderEncoder, decode_batch, decode_prefix
from workers.sendqueue import MAX_BATCH, Batch, Framer, Outgoing, SendQueue

STREAM = ("source", 42)


def framer() -> Framer:
    made = Framer(HeaderEncoder(1, 5, "sender"))
    made.stream = STREAM
    return made


def test_batch_fills_to_one_frame_and_says_when_it_is_full() -> None:
    batch = Batch()
    assert not batch.add(b"a", 1)
    taken = batch.fill([b"x"] * (MAX_BATCH + 10), range(2, MAX_BATCH + 12))
    assert taken == MAX_BATCH - 1 and batch.full() and len(batch) == MAX_BATCH
    items, origins, nbytes = batch.take()
    assert items[:2] == [b"a", b"x"] and origins[:2] == [1, 2] and nbytes == MAX_BATCH
    assert len(batch) == 0 and batch.nbytes == 0


def test_batch_drops_its_oldest_value() -> None:
    batch = Batch()
    batch.add(b"old", 1)
    batch.add(b"new!", 2)
    batch.drop_first()
    assert batch.take() == ([b"new!"], [2], 4)


def test_framer_makes_a_source_batch_one_run_of_its_own_stream() -> None:
    entry = framer().batch(7, [b"p", b"qq", b"r"], [10, 11, 12], 4)
    assert (entry.first, entry.seq, entry.count) == (7, 9, 3)
    header, end = decode_prefix(entry.frames[0])
    assert header.kind is FrameKind.DATA_BATCH and header.seq == 7
    assert header.origins == ((3, (STREAM, 10)),)
    assert [bytes(p) for p in decode_batch(entry.frames[0], end)] == [b"p", b"qq", b"r"]


def test_framer_passes_a_stages_origins_on_as_runs() -> None:
    other = ("other", 1)
    origins = [(STREAM, 5), (STREAM, 6), (other, 9)]
    entry = framer().batch(1, [b"a", b"b", b""], origins, 2)  # type: ignore[arg-type]
    header, _ = decode_prefix(entry.frames[0])
    assert header.origins == ((2, (STREAM, 5)), (1, (other, 9)))


def test_framer_sends_one_value_alone_with_the_payload_in_the_header_frame() -> None:
    entry = framer().batch(3, [b"only"], [8], 4)
    header, end = decode_prefix(entry.frames[0])
    assert header.kind is FrameKind.DATA and header.origins == ((1, (STREAM, 8)),)
    assert bytes(entry.frames[0][end:]) == b"only" and entry.count == 1


def entry(seq: int, first: int = 0, count: int = 1) -> Outgoing:
    parts = [b"x"] * count if first else None
    return Outgoing(seq, [b"frame"], count, FrameKind.DATA, first, parts)


def test_send_queue_releases_what_is_acknowledged_from_the_head_only_once_sent() -> None:
    queue = SendQueue()
    queue.append(entry(3, first=1, count=3))
    queue.append(entry(4))
    assert (queue.held, queue.unsent, queue.data_held()) == (4, 2, 4)
    queue.acknowledged(4)
    assert len(queue) == 2  # nothing was sent yet: nothing can have been acknowledged
    queue.unsent = 1  # ZeroMQ took the first one
    queue.acknowledged(4)
    assert (len(queue), queue.released, queue.held) == (1, 3, 1)


def test_send_queue_forgets_what_was_sent_under_at_most_once() -> None:
    queue = SendQueue()
    for seq in (1, 2, 3):
        queue.append(entry(seq))
    queue.unsent = 1
    queue.forget_sent()
    assert [m.seq for m in queue] == [3] and queue.released == 2


def test_send_queue_counts_the_attempts_of_the_same_head() -> None:
    queue = SendQueue()
    queue.append(entry(1))
    assert [queue.attempt(), queue.attempt()] == [1, 2]
    queue.pop_head()
    queue.append(entry(2))
    assert queue.attempt() == 1


def test_send_queue_splits_a_batch_into_single_messages_with_their_origins() -> None:
    queue = SendQueue()
    made = framer()
    queue.append(made.batch(1, [b"a", b"b"], [20, 21], 2))
    queue.split_batches(made.headers)
    assert [(m.seq, m.count) for m in queue] == [(1, 1), (2, 1)]
    heads = [decode_prefix(m.frames[0])[0] for m in queue]
    assert [h.origins for h in heads] == [((1, (STREAM, 20)),), ((1, (STREAM, 21)),)]
    assert queue.held == 2
