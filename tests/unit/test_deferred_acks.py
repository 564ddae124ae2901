"""A replica's end-to-end acknowledgements (workers/deferred.py) in-process: an input's commit
waits until every output it produced left its links for good (acked, dropped, retired), marks
go in order, and values taken out of a link to go to another keep their inputs waiting."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
import zmq

from porch.serializers import get
from porch.wire import HELLO_REPLAY, FrameKind, HeaderEncoder, decode_ack, encode_header
from workers.deferred import DeferredAcks
from workers.inbox import Inbox
from workers.links import LinkSettings, OutputLink

pytestmark = pytest.mark.timeout(20)

Context = zmq.Context[zmq.Socket[bytes]]
RECEIVERS: list[zmq.Socket[bytes]] = []  # kept open for the test (a dropped one would close)


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    RECEIVERS.clear()
    context.destroy(linger=0)


def link_to(ctx: Context, target: str, drop_oldest: bool = False) -> OutputLink:
    """A link connected to an inproc ROUTER (so that what it holds is sent, and acks apply)."""
    receiver = ctx.socket(zmq.ROUTER)
    receiver.bind(f"inproc://{target}")
    RECEIVERS.append(receiver)
    settings = LinkSettings(limit=4, drop_oldest=drop_oldest)
    link = OutputLink(ctx, target, HeaderEncoder(1, 5, "work#abc123-0"), settings)
    link.connect(f"inproc://{target}", 1)
    return link


class Recorder:
    """The inbox's side: which commits were applied, and how often acks were flushed."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int | None]] = []
        self.flushes = 0

    def commit(self, seq: int, generation: int | None) -> None:
        self.applied.append((seq, generation))

    def flush(self) -> None:
        self.flushes += 1


def deferred(links: list[OutputLink]) -> tuple[DeferredAcks, Recorder]:
    inbox = Recorder()
    return DeferredAcks(lambda: links, inbox.commit, inbox.flush), inbox


def send(link: OutputLink, count: int) -> None:
    for _ in range(count):
        link.force(FrameKind.DATA, [b"v"], ())


def test_an_input_is_committed_once_every_output_it_produced_is_acknowledged(
    ctx: Context,
) -> None:
    a, b = link_to(ctx, "a"), link_to(ctx, "b")
    acks, inbox = deferred([a, b])
    send(a, 2)  # input 1 produced two values for a and one for b
    send(b, 1)
    acks.defer(1, 7)
    assert acks.release() == 0 and inbox.applied == []
    a.ack(2)
    assert acks.release() == 0, "b has not acknowledged its value"
    b.ack(1)
    assert acks.release() == 1
    assert inbox.applied == [(1, 7)] and inbox.flushes == 1 and acks.held == 0


def test_inputs_without_pending_output_are_committed_at_once(ctx: Context) -> None:
    a = link_to(ctx, "a")
    acks, inbox = deferred([a])
    acks.defer(1, 1)  # SKIP: nothing produced
    acks.defer(2, 1)
    assert acks.release() == 2
    assert inbox.applied == [(1, 1), (2, 1)]


def test_marks_are_released_in_order(ctx: Context) -> None:
    a = link_to(ctx, "a")
    acks, inbox = deferred([a])
    send(a, 2)
    acks.defer(1, 1)
    acks.release()  # sealed: needs a's seq 2
    send(a, 1)
    acks.defer(2, 1)
    acks.release()  # sealed: needs a's seq 3
    a.ack(2)
    acks.release()
    assert inbox.applied == [(1, 1)]
    a.ack(3)
    acks.release()
    assert inbox.applied == [(1, 1), (2, 1)]


def test_values_dropped_by_drop_oldest_or_a_retired_target_count_as_gone(ctx: Context) -> None:
    a, b = link_to(ctx, "a", drop_oldest=True), link_to(ctx, "b")
    acks, inbox = deferred([a, b])
    send(a, 1)
    send(b, 1)
    acks.defer(1, 1)
    acks.release()
    for _ in range(4):  # a holds 4 at most: the oldest (input 1's) is dropped
        assert a.offer(FrameKind.DATA, [b"w"], ())
    a.flush()
    b.retire()  # b's target finished: what it held is dropped (and said)
    acks.release()
    assert inbox.applied == [(1, 1)]


def test_values_handed_from_one_link_to_another_keep_their_input_waiting(ctx: Context) -> None:
    gone, other = link_to(ctx, "gone"), link_to(ctx, "other")
    acks, inbox = deferred([gone, other])
    send(gone, 3)
    acks.defer(1, 1)
    acks.release()
    # the replica behind `gone` left for good: its values go to `other` (workers/replicas.py)
    for payload, origin in gone.take_data():
        other.force(FrameKind.DATA, payload, origin)
    assert gone.released == 3
    assert acks.release() == 0, "the values were handed on, not delivered"
    assert acks.resealed == 1
    other.ack(3)
    assert acks.release() == 1 and inbox.applied == [(1, 1)]


def test_holds_names_the_deferred_seqs_of_one_source_instance(ctx: Context) -> None:
    a = link_to(ctx, "a")
    acks, _ = deferred([a])
    send(a, 1)
    acks.defer(1, 1)
    acks.defer(2, 2)
    acks.release()
    acks.defer(3, 1)
    assert acks.holds(1) == {1, 3} and acks.holds(2) == {2}


def test_an_inbox_with_a_deferral_acknowledges_upstream_once_the_outputs_are(
    ctx: Context,
) -> None:
    inbox = Inbox(ctx, "127.0.0.1", name="work#abc123-0", instance=99, expected=1,
                  any_input=False, serializer=get("pickle"), limit=8)  # fmt: skip
    peer = ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    RECEIVERS.append(peer)
    out = link_to(ctx, "next")
    acks = DeferredAcks(lambda: [out], inbox.apply_commit, inbox.flush_acks)
    inbox.deferral = acks
    try:
        peer.send(encode_header(FrameKind.HELLO, 1, 1, HELLO_REPLAY, "source"))
        peer.send(encode_header(FrameKind.DATA, 1, 1, 1, "source") + pickle.dumps("v"))
        while not inbox.fanin.depth():
            assert inbox.link.socket.poll(2000), "nothing arrived"
            inbox.receive()
        assert inbox.resuming, "a source replaying to a restarted replica, still careful"
        _, taken, _, _ = inbox.take()
        send(out, 1)  # the input's output
        inbox.commit(taken)
        inbox.flush_acks()
        assert acks.release() == 0
        assert not peer.poll(100), "acknowledged before its output was"
        out.ack(1)
        assert acks.release() == 1
        assert peer.poll(2000)
        assert decode_ack(peer.recv()) == 1
    finally:
        inbox.close()


def test_a_hello_again_keeps_a_replaying_source_replaying_a_new_instance_does_not(
    ctx: Context,
) -> None:
    inbox = Inbox(ctx, "127.0.0.1", name="work#abc123-0", instance=99, expected=1,
                  any_input=False, serializer=get("pickle"), limit=8)  # fmt: skip
    peer = ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    RECEIVERS.append(peer)
    try:
        for instance, flags in ((1, HELLO_REPLAY), (1, 0)):  # then linkpeer's hello_again
            peer.send(encode_header(FrameKind.HELLO, 1, instance, flags, "source"))
        peer.send(encode_header(FrameKind.DATA, 1, 1, 1, "source") + pickle.dumps("v"))
        while not inbox.fanin.depth():
            assert inbox.link.socket.poll(2000), "nothing arrived"
            inbox.receive()
        assert inbox.resuming
        peer.send(encode_header(FrameKind.HELLO, 1, 2, 0, "source"))  # the source restarted
        while inbox.resuming:
            assert inbox.link.socket.poll(2000), "no HELLO arrived"
            inbox.receive()
    finally:
        inbox.close()
