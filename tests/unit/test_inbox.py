"""The inbox's dedup and acknowledgements, driven by a DEALER peer on loopback in-process."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator

import pytest
import zmq

from porch.serializers import get
from porch.stream import SKIP
from porch.wire import HELLO_REPLAY, HELLO_WINDOW, FrameKind, decode_ack, encode_header
from workers.inbox import Inbox

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def wired() -> Iterator[tuple[Inbox, zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inbox = Inbox(ctx, "127.0.0.1", name="sink", instance=99, expected=1, any_input=False,
                  serializer=get("pickle"), limit=8)  # fmt: skip
    peer = ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    yield inbox, peer
    peer.close()
    inbox.close()
    ctx.term()


def send(
    peer: zmq.Socket[bytes], kind: FrameKind, instance: int, seq: int, value: object = None
) -> None:
    header = encode_header(kind, 1, instance, seq, "source")
    peer.send(header + pickle.dumps(value) if kind is FrameKind.DATA else header)


def pump(inbox: Inbox, expected_depth: int) -> None:
    for _ in range(200):
        if inbox.link.socket.poll(50):
            inbox.receive()
        if inbox.fanin.depth() >= expected_depth:
            return
    raise AssertionError(f"queue depth {inbox.fanin.depth()}, expected {expected_depth}")


def acks(peer: zmq.Socket[bytes]) -> list[int]:
    found = []
    while peer.poll(100):
        seq = decode_ack(peer.recv())
        assert seq is not None
        found.append(seq)
    return found


def test_a_restarted_source_never_gets_acks_for_its_old_instance(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    send(peer, FrameKind.HELLO, 1, 0)
    for seq in range(1, 6):
        send(peer, FrameKind.DATA, 1, seq, f"old {seq}")
    pump(inbox, 5)
    send(peer, FrameKind.HELLO, 2, 0)  # the source restarted with a new instance
    send(peer, FrameKind.DATA, 2, 1, "new 1")
    pump(inbox, 6)
    for expected in ("old 1", "old 2", "old 3", "old 4", "old 5"):
        values, taken, _, _ = inbox.take()
        assert values == {"source": expected}
        inbox.commit(taken)
    inbox.flush_acks()
    # Acks for the old instance's seqs would make the new instance forget unprocessed output.
    assert acks(peer) == []
    values, taken, _, _ = inbox.take()
    assert values == {"source": "new 1"}
    inbox.commit(taken)
    inbox.flush_acks()
    assert acks(peer) == [1]


def test_duplicates_are_dropped_and_counted(wired: tuple[Inbox, zmq.Socket[bytes]]) -> None:
    inbox, peer = wired
    send(peer, FrameKind.HELLO, 1, 0)
    for seq in (1, 2, 2, 1, 3):
        send(peer, FrameKind.DATA, 1, seq, seq)
    pump(inbox, 3)
    assert [inbox.take()[0]["source"] for _ in range(3)] == [1, 2, 3]
    assert inbox.counters.duplicates == 2


def test_a_source_on_a_new_connection_gets_its_acks_there(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    """A link reopened after a cut (same instance, new socket): the HELLO moves the acks to the
    new connection at once, and what was acknowledged on the dead one is acknowledged again."""
    inbox, peer = wired
    send(peer, FrameKind.HELLO, 7, HELLO_REPLAY)  # (we restarted: acks one by one)
    for seq in (1, 2, 3):
        send(peer, FrameKind.DATA, 7, seq, seq)
    pump(inbox, 3)
    inbox.commit(inbox.take()[1])
    assert acks(peer) == [1]  # careful mode: one by one
    again = peer.context.socket(zmq.DEALER)
    again.linger = 0
    again.connect(inbox.endpoint)
    try:
        send(again, FrameKind.HELLO, 7, 0)
        send(again, FrameKind.DATA, 7, 1, 1)  # replayed: a duplicate, dropped
        for _ in range(40):
            if inbox.link.socket.poll(50):
                inbox.receive()
            if inbox.counters.duplicates:
                break
        assert inbox.counters.duplicates == 1
        assert acks(again) == [1]  # re-acknowledged on the new connection
        inbox.commit(inbox.take()[1])
        assert acks(again) == [2] and acks(peer) == []
    finally:
        again.close()


def settle(inbox: Inbox, done: Callable[[], bool]) -> None:
    for _ in range(100):
        if inbox.link.socket.poll(50):
            inbox.receive()
        if done():
            return
    raise AssertionError(f"queued {inbox.fanin.depth()}, {inbox.counters.duplicates} duplicates")


def test_acks_stay_on_the_new_connection_while_the_dead_one_is_drained(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    """A sender reopened its link while we were not reading (its heartbeats timed out: we
    were blocked on our own output), and sent everything again after its HELLO. The dead
    connection's messages are read after that HELLO, interleaved with the replay (duplicates):
    they must not take the acks back to the dead connection, or the sender, full, waits for
    acks forever (porchctl scale 2 -> 1 of an ordered stage: its source stalled)."""
    inbox, peer = wired
    endpoint = "inproc://acks-on-the-new-connection"  # sends land in the pipes at once
    inbox.link.socket.bind(endpoint)
    old = peer.context.socket(zmq.DEALER)
    again = peer.context.socket(zmq.DEALER)
    try:
        for sock in (old, again):
            sock.linger = 0
            sock.connect(endpoint)
        send(old, FrameKind.HELLO, 7, 0)
        send(old, FrameKind.DATA, 7, 1, 1)
        settle(inbox, lambda: inbox.fanin.depth() == 1)
        for seq in range(2, 7):  # not read yet: we are busy
            send(old, FrameKind.DATA, 7, seq, seq)
        old.close()  # the sender gave the connection up, and reopened its link:
        send(again, FrameKind.HELLO, 7, 0)
        for seq in range(1, 4):  # ...everything again (the rest still on its way)
            send(again, FrameKind.DATA, 7, seq, seq)
        settle(inbox, lambda: inbox.fanin.depth() == 6 and inbox.counters.duplicates >= 3)
        for seq in range(4, 7):
            send(again, FrameKind.DATA, 7, seq, seq)
        settle(inbox, lambda: inbox.counters.duplicates == 6)
        for _ in range(6):
            inbox.commit(inbox.take()[1])
        inbox.flush_acks()
        got = acks(again)
        assert got[-1:] == [6]  # on the connection the sender reads
    finally:
        old.close()
        again.close()


def test_a_value_past_a_gap_on_a_connection_given_up_waits_for_the_replay(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    """A connection dropped (heartbeats) with a message in ZeroMQ's buffers: ZeroMQ's own
    reconnect of that socket carries the next ones (no HELLO) before the sender reopens its
    link and sends everything again. The value past the gap must not be taken (nor
    acknowledged): the missing one would then be a 'duplicate' when replayed, and lost
    (SIGSTOP of a stage's target for 8 s: 25 values lost, porch run exit 0)."""
    inbox, peer = wired
    endpoint = "inproc://a-gap-on-a-connection-given-up"
    inbox.link.socket.bind(endpoint)
    first, reconnected, again = (peer.context.socket(zmq.DEALER) for _ in range(3))
    try:
        for sock in (first, reconnected, again):
            sock.linger = 0
            sock.connect(endpoint)
        send(first, FrameKind.HELLO, 7, 0)
        for seq in (1, 2, 3):
            send(first, FrameKind.DATA, 7, seq, seq)
        settle(inbox, lambda: inbox.fanin.depth() == 3)
        for seq in (5, 6):  # 4 went down with the first connection
            send(reconnected, FrameKind.DATA, 7, seq, seq)
        send(again, FrameKind.HELLO, 7, 0)
        for seq in range(1, 7):
            send(again, FrameKind.DATA, 7, seq, seq)
        settle(inbox, lambda: inbox.fanin.depth() == 6 and inbox.counters.duplicates >= 3)
        taken = []
        for _ in range(6):
            values, items, _, _ = inbox.take()
            taken.append(values["source"])
            inbox.commit(items)
        assert taken == [1, 2, 3, 4, 5, 6]
        inbox.flush_acks()
        assert acks(again)[-1:] == [6]
    finally:
        for sock in (first, reconnected, again):
            sock.close()


A = ("pipeline_a", 7)  # an origin stream: what the values derive from


def send_from(
    peer: zmq.Socket[bytes], instance: int, seq: int, origin_seq: int, value: object
) -> None:
    """A DATA message derived from iteration `origin_seq` of A (SKIP: a skip marker)."""
    header = encode_header(FrameKind.DATA, 1, instance, seq, "source", [(1, (A, origin_seq))])
    peer.send(header if value is SKIP else header + pickle.dumps(value))


def test_a_restarted_middle_stage_re_emitting_values_is_deduplicated_by_origin(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    send(peer, FrameKind.HELLO, 1, 0)
    for k in (1, 2, 3):
        send_from(peer, 1, k, k, f"x{k}")
    pump(inbox, 3)
    while inbox.fanin.ready():
        inbox.commit(inbox.take()[1])
    # the stage restarted: new link seqs from 1, and it re-processes iterations 2 and 3
    send(peer, FrameKind.HELLO, 2, 0)
    for seq, k in enumerate((2, 3, 4, 5), start=1):
        send_from(peer, 2, seq, k, f"x{k}")
    pump(inbox, 2)

    taken = []
    while inbox.fanin.ready():
        values, items, origin, marked = inbox.take()
        taken.append((values["source"], origin, marked))
        inbox.commit(items)
    inbox.flush_acks()

    assert taken == [("x4", (A, 4), False), ("x5", (A, 5), False)]
    assert inbox.counters.duplicates == 2
    assert acks(peer)[-1] == 4  # the dropped duplicates are acknowledged with the rest


def test_a_skip_marker_arrives_as_skip_with_its_origin(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    send(peer, FrameKind.HELLO, 1, 0)
    send_from(peer, 1, 1, 1, SKIP)
    send_from(peer, 1, 2, 2, "x2")
    pump(inbox, 2)

    values, _, origin, marked = inbox.take()
    assert (values, origin, marked) == ({"source": SKIP}, (A, 1), True)
    assert inbox.take()[0] == {"source": "x2"}


@pytest.mark.parametrize("replica", [False, True])
def test_the_input_left_when_a_stream_ends_is_acknowledged_except_by_a_replica(
    wired: tuple[Inbox, zmq.Socket[bytes]], replica: bool
) -> None:
    """porch.stop() ends a pipeline's stream: what it will never process is acknowledged (it
    is done with). A replica's porch.stop() ends only that replica: what it did not process
    stays unacknowledged, so its senders hand it to the other replicas (porch run: 833 of
    3,001 values were lost in silence when one of 3 replicas stopped)."""
    from workers.worker import end_input

    inbox, peer = wired
    send(peer, FrameKind.HELLO, 1, HELLO_REPLAY)  # (we restarted: acks one by one)
    for seq in range(1, 6):
        send(peer, FrameKind.DATA, 1, seq, seq)
    pump(inbox, 5)
    for _ in range(2):
        inbox.commit(inbox.take()[1])
    assert acks(peer) == [1, 2]
    assert end_input(inbox, finished=True, replica=replica, pipeline="sink") == 3
    assert acks(peer) == ([] if replica else [5])


@pytest.mark.parametrize("flags", [0, HELLO_REPLAY])
def test_inputs_are_acknowledged_one_by_one_only_while_a_source_replays_to_a_restart(
    wired: tuple[Inbox, zmq.Socket[bytes]], flags: int
) -> None:
    """A source that replays what an earlier instance of ours was sent (we restarted, maybe
    after crashing on one of them) gets an ack per input, so its oldest unacknowledged one is
    the one we crash on; a fresh start is acknowledged every ack_every inputs (limit 8: 3)
    and when the loop idles (flush_acks): the first `limit` inputs of every run were acked
    one by one (999 of 1,460 acks in a 200k-value A -> B)."""
    inbox, peer = wired
    send(peer, FrameKind.HELLO, 1, flags)
    for seq in range(1, 7):
        send(peer, FrameKind.DATA, 1, seq, seq)
    pump(inbox, 6)
    for _ in range(5):
        inbox.commit(inbox.take()[1])
    assert acks(peer) == ([3] if flags == 0 else [1, 2, 3, 4, 5])
    inbox.commit(inbox.take()[1])
    inbox.flush_acks()
    assert acks(peer) == [6]


def test_a_full_window_sent_in_frames_is_acknowledged_before_the_sender_waits() -> None:
    """A sender's window of 1,000 (the default queue_limit, ours too) leaves as frames of
    256, 256, 256 and 232 values; taken frame by frame, both halves are acknowledged (at 512,
    and at 1,000 for the 488 after it): acked at every 500, the second half waited for the
    next frame, which the sender, its window full, could not send."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inbox = Inbox(ctx, "127.0.0.1", name="sink", instance=99, expected=1, any_input=False,
                  serializer=get("pickle"), limit=1000)  # fmt: skip
    peer = ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    try:
        send(peer, FrameKind.HELLO, 1, 0)
        for seq in range(1, 1001):
            send(peer, FrameKind.DATA, 1, seq, seq)
        pump(inbox, 1000)
        for size in (256, 256, 256, 232):
            items = [inbox.take()[1]["source"] for _ in range(size)]
            inbox.commit_span(items[0][0], items[-1][0], items[0][3])
        assert acks(peer) == [512, 1000]
    finally:
        peer.close()
        inbox.close()
        ctx.term()


@pytest.mark.parametrize(("window", "every"), [(200, 80), (0, 400), (5000, 400)])
def test_a_sender_with_a_smaller_window_than_our_limit_is_acknowledged_for_its_window(
    window: int, every: int
) -> None:
    """A sender's HELLO says its window (its queue_limit): one of 200 is acknowledged every
    80 (two fifths of it), not every 400 of our limit of 1,000, which it could never reach
    before an ack: it waited for our idle ack each time. A HELLO without one (0), or with one
    larger than our limit, is acknowledged for ours."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inbox = Inbox(ctx, "127.0.0.1", name="sink", instance=99, expected=1, any_input=False,
                  serializer=get("pickle"), limit=1000)  # fmt: skip
    peer = ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    try:
        send(peer, FrameKind.HELLO, 1, window << HELLO_WINDOW)
        for seq in range(1, 2 * every + 1):
            send(peer, FrameKind.DATA, 1, seq, seq)
        pump(inbox, 2 * every)
        for _ in range(2 * every):
            inbox.commit(inbox.take()[1])
        assert acks(peer) == [every, 2 * every]
    finally:
        peer.close()
        inbox.close()
        ctx.term()
