"""The idle path of a stage with one source: a value that arrives alone runs at once.

An idle stage sleeps in its poll (workers/waiting.py). When what wakes it is one DATA message,
nothing is queued and nothing else waits on the socket, Inbox.receive_lone takes it (the seq,
the origin's dedup and the decode that accept_one does, in one place) and it goes straight to
the script's step(): no fan-in queue, no burst. Then it is committed like any input (the acks
go as on the regular path: at once while careful, every ack_every, and when the loop idles)
and its output is sent at once. Anything unusual (a stop, a replica settling its acks, an
undecodable value queued, a message that is not a lone value of the known form) takes the
regular path, which queues it. At 200 msgs/s the regular path cost ~95 us from the poll's
return to step() on a loaded 2-core machine (docs/performance.md, "Latency: a value that
travels alone").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.inbox import Inbox

if TYPE_CHECKING:
    from workers.loop import MessageLoop


class LoneStage:
    """Runs a one-source stage's lone value (module doc); called by the idle wait when the
    input socket alone woke it."""

    def __init__(self, loop: MessageLoop, inbox: Inbox, step: Callable[[Any], Any]) -> None:
        self.loop = loop
        self.inbox = inbox
        self.step = step  # the script's own step() (ScriptHost.direct_step)
        self.stops = loop.stops
        self.intake = inbox.intake

    def __call__(self) -> None:
        loop, inbox = self.loop, self.inbox
        if loop.settle is not None or self.stops.requested or loop.ended or self.intake.undecodable:
            inbox.receive()  # the regular path (take_one settles, draining decides)
            return
        item = inbox.receive_lone()
        if item is None:
            return  # queued (or nothing): the loop runs it as usual
        seq, value, origin, generation = item
        inputs = {inbox.fanin.single()[0]: value}
        started = time.perf_counter()
        try:
            output = self.step(inputs)
        except (Exception, SystemExit) as exc:
            loop.step_failed(loop.host.failure(exc), inputs, origin)
        else:
            loop.step_time(time.perf_counter() - started)
            loop.after_step(output, inputs, origin)
        if loop.outputs:
            loop.flush_outputs()  # idle: its output leaves at once (before the input's ack)
        inbox.commit_one(seq, generation)
