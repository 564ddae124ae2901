"""Durable outbox rows leave with their message: what a link drops (overflow drop_oldest) or
gives up (a target that finished) is deleted, so a restart replays only what is still owed."""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from porch.wire import FrameKind, HeaderEncoder
from workers.links import LinkSettings, OutputLink
from workers.outbox import DurableOutbox

pytestmark = pytest.mark.timeout(30)

Context = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.term()


def link(ctx: Context, target: str = "receiver", **settings: object) -> OutputLink:
    return OutputLink(ctx, target, HeaderEncoder(1, 5, "sender"), LinkSettings(**settings))  # type: ignore[arg-type]


def send(outbox: DurableOutbox, links: list[OutputLink], values: range) -> None:
    """As the worker does: commit each value, hand it to every link, then sync the outbox."""
    for value in values:
        payload = [str(value).encode()]
        outbox.store(payload)
        for each in links:
            assert each.offer(FrameKind.DATA, payload)
    outbox.sync()


def rows(path: Path) -> list[tuple[str, int, int]]:
    """(target, seq, value) of every row."""
    db = sqlite3.connect(str(path))
    try:
        found = db.execute("SELECT target, seq, payload FROM outbox ORDER BY target, seq")
        return [(t, seq, int(pickle.loads(blob)[0][0])) for t, seq, blob in found.fetchall()]
    finally:
        db.close()


def test_values_dropped_by_drop_oldest_leave_the_outbox_and_are_never_replayed(
    tmp_path: Path, ctx: Context
) -> None:
    path = tmp_path / "sender.sqlite"
    dropping = link(ctx, limit=3, drop_oldest=True)
    outbox = DurableOutbox(path, [dropping])

    send(outbox, [dropping], range(1, 11))

    assert dropping.dropped == 7
    # each row keeps the seq its value is sent under: dropped values use up theirs
    assert rows(path) == [("receiver", 8, 8), ("receiver", 9, 9), ("receiver", 10, 10)]
    outbox.close()

    restarted = link(ctx, limit=3, drop_oldest=True)
    again = DurableOutbox(path, [restarted])
    assert again.restore() == 3
    again.close()


def test_a_finished_targets_rows_leave_the_outbox_and_the_others_stay(
    tmp_path: Path, ctx: Context
) -> None:
    path = tmp_path / "sender.sqlite"
    staying, finishing = link(ctx, "staying"), link(ctx, "finishing")
    outbox = DurableOutbox(path, [staying, finishing])
    send(outbox, [staying, finishing], range(1, 6))

    finishing.retire()  # the directory said it finished its stream
    send(outbox, [staying, finishing], range(6, 8))  # a retired link takes nothing more

    assert [(t, v) for t, _, v in rows(path)] == [("staying", v) for v in range(1, 8)]
    outbox.close()
