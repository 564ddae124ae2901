"""Waiter.blocked_poller: a producer blocked on the same link again waits on the same poller."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import zmq

from workers.waiting import POLL_BOTH, Waiter

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_a_blocked_producer_reuses_its_poller_while_sockets_and_events_stay(
    ctx: zmq.Context[Any],
) -> None:
    control, data, other = (ctx.socket(zmq.DEALER) for _ in range(3))
    wake = ctx.socket(zmq.PAIR)
    waiter = Waiter.__new__(Waiter)
    waiter.control = SimpleNamespace(socket=control)  # type: ignore[assignment]
    waiter.stops = SimpleNamespace(wake_r=wake)  # type: ignore[assignment]
    waiter._blocked = None
    link: Any = SimpleNamespace(socket=data, unsent=0)
    first = waiter.blocked_poller(link)
    assert waiter.blocked_poller(link) is first
    assert dict(first.sockets)[data] == zmq.POLLIN
    link.unsent = 3  # ZeroMQ holds entries: wait for room in its queue too
    second = waiter.blocked_poller(link)
    assert second is not first and dict(second.sockets)[data] == POLL_BOTH
    link.socket = other  # reconnected
    third = waiter.blocked_poller(link)
    assert third is not second and other in dict(third.sockets) and data not in dict(third.sockets)
    assert control in dict(third.sockets) and wake in dict(third.sockets)
