"""An output link's queue_limit and end in-process (inproc sockets): what counts as full per
delivery mode, and when an at-most-once link is done."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from porch.wire import (
    HELLO_NO_ACKS,
    HELLO_WINDOW,
    FrameKind,
    HeaderEncoder,
    decode_ack,
    decode_header,
)
from workers.links import LinkSettings, OutputLink

pytestmark = pytest.mark.timeout(30)

Context = zmq.Context[zmq.Socket[bytes]]
ENDPOINT = "inproc://target"


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


def linked(ctx: Context, settings: LinkSettings) -> tuple[OutputLink, zmq.Socket[bytes]]:
    target = ctx.socket(zmq.ROUTER)
    target.bind(ENDPOINT)
    link = OutputLink(ctx, "target", HeaderEncoder(1, 5, "source"), settings)
    link.stream = ("source", 1)  # offers carry our own origin seqs as ints
    link.connect(ENDPOINT)
    return link, target


@pytest.mark.parametrize("drop_oldest", [False, True])
def test_at_most_once_link_whose_batch_reaches_the_limit_hands_it_over_and_takes_more(
    ctx: Context, drop_oldest: bool
) -> None:
    """ZeroMQ has room (an idle target): a full batch goes to it, nothing waits or is dropped.
    Before, the 5th value was refused, and the producer waited for acks that never come."""
    link, _target = linked(ctx, LinkSettings(limit=4, acked=False, drop_oldest=drop_oldest))

    assert all(link.offer(FrameKind.DATA, [b"value"], seq) for seq in range(1, 21))
    assert link.dropped == 0
    link.flush()
    assert link.delivered and link.held == 0


def test_at_least_once_link_at_the_limit_waits_for_acks(ctx: Context) -> None:
    link, _target = linked(ctx, LinkSettings(limit=4))

    assert all(link.offer(FrameKind.DATA, [b"value"], seq) for seq in range(1, 5))
    assert not link.offer(FrameKind.DATA, [b"value"], 5)
    assert link.held == 4 and link.unsent == 0  # sent, held until acknowledged
    link.ack(4)
    assert link.offer(FrameKind.DATA, [b"value"], 5)


@pytest.mark.parametrize("acked", [True, False])
def test_a_link_says_its_window_in_its_hello(ctx: Context, acked: bool) -> None:
    """An acknowledged link's HELLO carries its queue_limit (from bit HELLO_WINDOW up), so
    that a target with a larger limit of its own acknowledges often enough for it; an
    at-most-once link's says it wants no acks."""
    _link, target = linked(ctx, LinkSettings(limit=200, acked=acked))
    assert target.poll(5000)
    header = decode_header(target.recv_multipart()[1])
    assert header.kind is FrameKind.HELLO
    assert header.seq == (200 << HELLO_WINDOW if acked else HELLO_NO_ACKS)


def confirm(target: zmq.Socket[bytes], seq: int) -> None:
    """Read what the link sent, then ack `seq` as Inbox._confirm_end does."""
    route = b""
    while target.poll(1000):
        route = target.recv_multipart()[0]
        if not target.poll(100):
            break
    target.send_multipart([route, HeaderEncoder(0, 7, "target").encode(FrameKind.ACK, seq)])


def read_until(link: OutputLink, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 5.0
    while not condition() and time.monotonic() < deadline:
        link.read_acks(decode_ack)
    return condition()


@pytest.mark.parametrize("ending", ["eos", "bye"])
def test_at_most_once_link_is_delivered_once_the_target_confirms_its_end(
    ctx: Context, ending: str
) -> None:
    """Closing an at-most-once link before the target read our end (EOS or BYE) would lose,
    over ipc://, what a target that is behind has not read: the end waits for its ack."""
    link, target = linked(ctx, LinkSettings(limit=4, acked=False))
    for seq in range(1, 10):
        assert link.offer(FrameKind.DATA, [b"value"], seq)
    if ending == "eos":
        link.force(FrameKind.EOS, [])
    else:
        link.say_bye()
    assert not link.delivered and link.data_held() == 0

    confirm(target, link.seq)
    assert read_until(link, lambda: link.delivered)
    assert not link.outbox


def test_a_value_sent_at_once_is_the_message_a_batch_of_one_is(ctx: Context) -> None:
    """send_one (a slow source's idle path) puts on the wire what extend + flush of one value
    does: the same frames, seqs and origins; behind a gathering batch it keeps the order."""
    link, target = linked(ctx, LinkSettings())
    link.extend([b"first"], range(1, 2))
    link.flush()
    link.send_one(b"second", 2)
    link.extend([b"third"], range(3, 4))
    link.send_one(b"fourth", 4)  # a batch is gathering: it goes behind it, in order
    got = []
    while len(got) < 4 and target.poll(2000):  # the hello, then three messages
        got.append(target.recv_multipart()[1])
    assert [frame.endswith(b"second") for frame in got] == [False, False, True, False]
    batched, direct = OutputLink(ctx, "x", HeaderEncoder(1, 5, "source"), LinkSettings()), got[2]
    batched.stream = ("source", 1)
    batched.seq = 1
    batched.extend([b"second"], range(2, 3))
    batched._close_batch()
    assert direct == batched.outbox[0].frames[0]
    assert link.seq == 4 and link.held == 4 and link.unsent == 0
    assert [m.seq for m in link.outbox] == [1, 2, 4]  # the last: a batch of two (3, 4)
