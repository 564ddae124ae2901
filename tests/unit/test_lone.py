"""The idle path of a one-source stage (workers/lone.py): Inbox.receive_lone takes a value
that arrives alone as accept_one would and returns it instead of queuing it; anything else
takes the regular path. Driven by a DEALER peer on loopback in-process."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from porch.config import PipelineConfig
from porch.serializers import get
from porch.wire import (
    HELLO_REPLAY,
    FrameKind,
    HeaderEncoder,
    decode_ack,
    decode_batch,
    decode_prefix,
    encode_header,
)
from workers.hotloop import HotLoop
from workers.inbox import Inbox, Undecodable
from workers.links import OutputLink
from workers.lone import LoneStage
from workers.scheduler import Item
from workers.sendqueue import Framer
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

A = ("a", 5)  # the origin stream of the values (pipeline a, epoch 5)


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


def hello(peer: zmq.Socket[bytes], instance: int = 1) -> None:
    """The source replays to us (we restarted): its inputs are acknowledged one by one."""
    peer.send(encode_header(FrameKind.HELLO, 1, instance, HELLO_REPLAY, "source"))


def data(
    peer: zmq.Socket[bytes], seq: int, origin_seq: int, value: object, instance: int = 1
) -> None:
    header = encode_header(FrameKind.DATA, 1, instance, seq, "source", [(1, (A, origin_seq))])
    peer.send(header + (value if isinstance(value, bytes) else pickle.dumps(value)))


def lone(inbox: Inbox) -> Item | None:
    """What receive_lone gives once the next message is there."""
    assert inbox.link.socket.poll(5000), "nothing arrived"
    return inbox.receive_lone()


def acks(peer: zmq.Socket[bytes]) -> list[int]:
    found = []
    while peer.poll(100):
        seq = decode_ack(peer.recv())
        assert seq is not None
        found.append(seq)
    return found


def started(inbox: Inbox, peer: zmq.Socket[bytes]) -> None:
    """HELLO and a first value: taken the regular way (queued), which teaches the inbox the
    form of this source's lone frames; the value is processed and committed."""
    hello(peer)
    assert lone(inbox) is None  # the HELLO
    data(peer, 1, 1, "v1")
    assert lone(inbox) is None
    values, taken, origin, _ = inbox.take()
    assert (values, origin) == ({"source": "v1"}, (A, 1))
    inbox.commit(taken)
    assert acks(peer) == [1]


def test_a_value_that_arrives_alone_is_returned_not_queued_and_acknowledged_on_commit(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    started(inbox, peer)
    for seq in (2, 3):
        data(peer, seq, seq, {"n": seq})
        item = lone(inbox)
        assert item is not None
        got_seq, value, origin, generation = item
        assert (got_seq, value, origin) == (seq, {"n": seq}, (A, seq))
        assert not inbox.fanin.ready()
        inbox.commit_one(got_seq, generation)
        assert acks(peer) == [seq]  # careful at the start: one by one, as the regular path
    assert inbox.counters.msgs_in == 3
    assert inbox.sources["source"].window[A] == 3


def test_a_replayed_origin_and_a_repeated_seq_are_duplicates_as_on_the_regular_path(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    started(inbox, peer)
    data(peer, 1, 1, "v1 again")  # the same link seq
    assert lone(inbox) is None
    data(peer, 2, 1, "v1 re-derived")  # a new seq, an origin we have
    assert lone(inbox) is None
    assert inbox.counters.duplicates == 2
    assert not inbox.fanin.ready()
    data(peer, 3, 2, "v2")
    item = lone(inbox)
    assert item is not None and item[1] == "v2"


def test_a_value_that_does_not_decode_is_queued_as_undecodable(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    started(inbox, peer)
    data(peer, 2, 2, b"\x80\x05not a pickle")
    assert lone(inbox) is None
    assert inbox.undecodable == 1
    values, _, origin, _ = inbox.take()
    assert isinstance(values["source"], Undecodable) and origin == (A, 2)


def test_a_value_past_a_gap_and_one_of_a_new_instance_take_the_regular_path(
    wired: tuple[Inbox, zmq.Socket[bytes]],
) -> None:
    inbox, peer = wired
    started(inbox, peer)
    data(peer, 5, 5, "v5")  # seqs 2-4 dropped by the sender (drop_oldest): queued
    assert lone(inbox) is None
    assert inbox.take()[0] == {"source": "v5"}
    hello(peer, instance=2)  # the source restarted
    assert lone(inbox) is None
    data(peer, 1, 6, "v6", instance=2)
    assert lone(inbox) is None  # another form (the instance is in it): queued, learned
    assert inbox.take()[0] == {"source": "v6"}
    data(peer, 2, 7, "v7", instance=2)
    item = lone(inbox)
    assert item is not None and item[:3] == (2, "v7", (A, 7))


def test_a_lone_frame_is_packed_as_the_framer_frames_a_single_value() -> None:
    """The source's idle path packs the header at once (Framer.lone): the same bytes as
    single() makes, for any seqs, and for the stream the framer has now."""
    framer = Framer(HeaderEncoder(1, 5, "sender"))
    for stream in (("sender", 42), ("sender", 43)):
        framer.stream = stream
        for seq, origin in ((1, 1), (2**40, 7), (3, 2**63 - 1)):
            single = framer.single(FrameKind.DATA, seq, [b"payload"], origin, 7)
            assert framer.lone(seq, origin, b"payload") == single.frames[0]


STAGE = """
def step(input_data):
    return input_data["src"] * 10
"""


def test_an_idle_stage_runs_a_lone_value_from_its_wait_and_commits_it(tmp_path: Path) -> None:
    """The wait of an idle one-source stage, woken by one DATA message, runs it at once
    (the fan-in queue never holds it), commits it and sends its output with the input's
    origin; the first value (its form not known yet) went the regular way."""
    path = tmp_path / "stage.py"
    path.write_text(STAGE)
    config = PipelineConfig("stage", (path,), 1, ("sink",))
    stage = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    stage.host.load()
    inbox = stage.inbox
    assert inbox is not None
    hot = HotLoop(stage.loop)
    assert hot.step is not None
    lone = LoneStage(stage.loop, inbox, hot.step)
    peer = stage.sockets.ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    headers = HeaderEncoder(1, 3, "src")
    queued = []
    try:
        peer.send(headers.encode(FrameKind.HELLO, 0))
        for seq in (1, 2, 3):
            payload = pickle.dumps(seq, protocol=5)
            peer.send(headers.encode_data(FrameKind.DATA, seq, [(1, (A, seq))]) + payload)
            for _ in range(100):  # each wait returns after what woke it
                stage.loop.waiter.wait(50, ready=inbox.fanin.ready, lone=lone)
                if inbox.fanin.ready():  # taken the regular way: run as usual
                    queued.append(seq)
                    assert hot.run_queue(inbox)
                if inbox.sources["src"].processed == seq:
                    break
            assert inbox.sources["src"].processed == seq
        # the first frame of the link teaches its form (one behind the HELLO, if they came
        # together, was received with it): the last one at least ran from the wait
        assert 3 not in queued and not inbox.fanin.ready()
        link = stage.outputs[0]
        assert isinstance(link, OutputLink)
        link.flush()
        outputs = []
        for entry in link.outbox:
            header, end = decode_prefix(bytes(entry.frames[0]))
            if header.kind is FrameKind.DATA_BATCH:
                parts = [bytes(p) for p in decode_batch(bytes(entry.frames[0]), end)]
            else:
                parts = [bytes(entry.frames[0])[end:]]
            outputs += [pickle.loads(part) for part in parts]
        assert outputs == [10, 20, 30]
        assert link.outbox[len(link.outbox) - 1].runs == [(1, (A, 3))]
        assert stage.counters.iterations == 3 and inbox.counters.msgs_in == 3
    finally:
        peer.close()
        stage.sockets.ctx.destroy(linger=0)
