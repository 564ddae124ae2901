"""The durable outbox keeps each value's origin ids and a stamping pipeline's epoch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from porch.wire import FrameKind, HeaderEncoder, decode_prefix
from workers.links import LinkSettings, OutputLink
from workers.outbox import DurableOutbox

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


def link(ctx: zmq.Context[zmq.Socket[bytes]]) -> OutputLink:
    return OutputLink(ctx, "receiver", HeaderEncoder(1, 5, "sender"), LinkSettings())


def test_a_restart_replays_each_value_with_the_origin_it_was_first_sent_with(
    tmp_path: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    path = tmp_path / "outbox" / "sender.sqlite"
    sending = link(ctx)
    first = DurableOutbox(path, [sending])
    epoch, next_seq = first.origin_start(fresh_epoch=1234)
    own = ("sender", epoch)
    sent = [((own, seq), seq) for seq in range(next_seq, next_seq + 3)]
    sent.append(((own, 3, ("other", 9), 40), 0))
    for origin, own_seq in sent:  # as the worker does: commit, then hand to the link
        first.store([b"value"], origin, own_seq)
        assert sending.offer(FrameKind.DATA, [b"value"], origin)
    first.close()  # as if killed: nothing was acknowledged

    restarted = link(ctx)
    second = DurableOutbox(path, [restarted])

    assert second.origin_start(fresh_epoch=999) == (1234, 4)  # the epoch survives, seqs go on
    assert second.restore() == 4
    origins = [decode_prefix(bytes(m.frames[0]))[0].origins for m in restarted.outbox]
    assert origins == [
        ((1, (own, 1)),),
        ((1, (own, 2)),),
        ((1, (own, 3)),),
        ((1, (own, 3, ("other", 9), 40)),),
    ]
    assert all(m.kind is FrameKind.DATA for m in restarted.outbox)
    second.close()
