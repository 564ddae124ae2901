"""Re-sequencing an ordered replicated source: its values in the order of its input.

A pipeline with `"ordered": true` runs as replicas (NAME#TAG-K), each of which gets some of its
input; their output reaches a target in arrival order. So that the target sees it in input order,
the sender of that input numbers what it hands out: it appends one origin id per value, of the
order stream `("#" + NAME, its epoch)` ('#' cannot start a pipeline name), seq 0, 1, 2, ...
without gaps; the replicas pass origins through. The target (this module, for each source
pipeline whose replicas send such ids) delivers seq n once every seq below it came:

- it holds at most REORDER_WINDOW values; one more, and the gap before the lowest held value is
  given up (that value is delivered and what follows it in order), counted as
  reorder_window_overflow and said once; so is a gap older than REORDER_GAP_S (nothing hangs:
  the housekeeping tick calls `expire`), and a gap every live replica is past (each sent a
  later value, and sends in its input's order): the missing value was handed to one of them
  after one went away, behind what it holds here (it would wait for our acknowledgements);
- a value below the next expected seq (one of several outputs of one input, a value whose gap
  was given up) is delivered at once, unless it is a replay: a value of a seq delivered (or
  held) from another instance of a replica (a restarted one re-processing what its sender had
  not seen acknowledged, or a replica handed what another one had not acknowledged); replays
  of the newest SENT_SEQS seqs are dropped and counted as duplicates;
- an order stream first seen in a value that an earlier instance of the receiver did not
  acknowledge (it restarted: the stream goes on mid-way, each replica replaying what it was not
  acknowledged) does not start at 0: what comes in RESUME_WAIT_S is held, then the stream starts
  at the lowest seq held (not counted as a gap given up);
- at the end of the source's stream, or once none of its replicas sends any more (each ended
  or stopped), everything held is delivered in order (`flush`); a stopping receiver waits for
  no gap (`release`: from then on each value is delivered as it comes).

The order id is stripped from each value's origin before it is delivered, so joins further down
see the origins they would without replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from porch import logs
from porch.wire import Origin, Stream
from workers.scheduler import Item

log = logs.get("porch.worker")

REORDER_WINDOW = 1024  # values held per order stream at most
REORDER_GAP_S = 5.0  # a missing seq is given up after this long without progress
RESUME_WAIT_S = 0.5  # a stream resumed after the receiver's restart: replays gathered this long
MAX_ORDER_STREAMS = 64  # order streams (senders' epochs) remembered per source pipeline
SENT_SEQS = 4096  # delivered seqs remembered per order stream (with their sender's instance)


def order_stream(pipeline: str) -> str:
    """The stream name of the ids a sender appends to the values it hands to `pipeline`."""
    return "#" + pipeline


def split_order(origin: Origin, name: str) -> tuple[Origin, Stream | None, int]:
    """`origin` without its id of the order stream `name`, that stream and the id's seq;
    (origin, None, 0) when it has none."""
    for i in range(0, len(origin), 2):
        stream = origin[i]
        if stream[0] == name:
            return origin[:i] + origin[i + 2 :], stream, origin[i + 1]
    return origin, None, 0


class _Order:
    """One order stream: the next seq to deliver and the values held until it comes."""

    __slots__ = ("by_sender", "count", "held", "next", "resuming", "sent", "since")

    def __init__(self) -> None:
        self.next = 0
        self.held: dict[int, list[Item]] = {}
        # the newest delivered seqs: which instance of a replica sent each (Item[3])
        self.sent: dict[int, int | None] = {}
        self.count = 0  # values held
        self.since = 0.0  # when the current gap was first waited on (monotonic s)
        self.resuming = False  # gathering replays: the stream starts at the lowest seq held
        self.by_sender: dict[int | None, int] = {}  # values held by sender instance (Item[3])

    @property
    def patience_s(self) -> float:
        """How long the current gap is waited on."""
        return RESUME_WAIT_S if self.resuming else REORDER_GAP_S


class Reorder:
    """The order streams of one source pipeline (module doc); `deliver` queues a value in the
    fan-in, `clock` is time.monotonic (a fake in tests), `overflowed` counts a gap given up."""

    def __init__(
        self,
        pipeline: str,
        receiver: str,
        deliver: Callable[[Item], None],
        clock: Callable[[], float],
        overflowed: Callable[[], None],
        dropped: Callable[[Item], None],
        all_past: Callable[[Iterable[int | None]], bool] = lambda _senders: False,
    ) -> None:
        self.pipeline = pipeline
        self.receiver = receiver
        self.deliver = deliver
        self.dropped = dropped  # a replay: counted as a duplicate and acknowledged
        # whether these sender instances are every live replica of the source
        self.all_past = all_past
        self.clock = clock
        self.overflowed = overflowed  # counts a gap given up (window full, or too old)
        self.streams: dict[Stream, _Order] = {}
        self.holding = True  # False once released: each value goes as it comes
        self._warned = False

    @property
    def held(self) -> int:
        """Values held across the order streams."""
        return sum(order.count for order in self.streams.values())

    def add(self, stream: Stream, seq: int, item: Item, resumed: bool = False) -> None:
        """A value of order id (stream, seq), its origin already stripped: deliver it and what
        it makes next, or hold it (`resumed`: its link went on from an earlier receiver's)."""
        if not self.holding:
            self.deliver(item)
            return
        order = self.streams.get(stream)
        if order is None:
            order = self.streams[stream] = _Order()
            order.resuming = resumed
            if len(self.streams) > MAX_ORDER_STREAMS:
                oldest = next(iter(self.streams))
                self._drain(self.streams.pop(oldest))
        if seq < order.next:
            sender = order.sent.get(seq, item[3])
            if sender != item[3]:
                self.dropped(item)  # a replay of another instance's value
            else:  # another output of an input delivered already, or a late one
                self._send(order, seq, item)
            return
        if seq == order.next:
            self._send(order, seq, item)
            order.next = seq + 1
            order.resuming = False
            if order.held:
                self._advance(order)
            return
        if not order.count:
            order.since = self.clock()
        held = order.held.get(seq)
        if held is None:
            order.held[seq] = [item]
        elif held[0][3] != item[3]:
            self.dropped(item)  # a replay of a value that waits already
            return
        else:
            held.append(item)
        order.by_sender[item[3]] = order.by_sender.get(item[3], 0) + 1
        order.count += 1
        if order.count > REORDER_WINDOW:
            self._give_up(order, f"more than {REORDER_WINDOW} values held")

    def expire(self, now: float) -> None:
        """Give up each gap waited on for REORDER_GAP_S or longer (start a resumed stream)."""
        for order in self.streams.values():
            if order.count and now - order.since >= order.patience_s:
                self._give_up(order, f"a value missing for {REORDER_GAP_S:g} s")
            while order.count and not order.resuming and self.all_past(order.by_sender):
                self._give_up(order, "every live replica sent later values")

    def flush(self) -> None:
        """The stream ended: deliver everything held, in order."""
        for order in self.streams.values():
            self._drain(order)

    def release(self) -> None:
        """The receiver stops: deliver what is held, in order, and hold nothing from now on."""
        self.flush()
        self.holding = False

    def _advance(self, order: _Order) -> None:
        """Deliver the held values that are next in order; restart the gap's clock if one
        remains (progress was made)."""
        held = order.held
        seq = order.next
        by_sender = order.by_sender
        while seq in held:
            items = held.pop(seq)
            order.count -= len(items)
            for item in items:
                left = by_sender.pop(item[3]) - 1
                if left:
                    by_sender[item[3]] = left
                self._send(order, seq, item)
            seq += 1
        order.next = seq
        if order.count:
            order.since = self.clock()

    def _give_up(self, order: _Order, why: str) -> None:
        """Deliver from the lowest held seq on: the gap before it will not be waited for."""
        lowest = min(order.held)
        if order.resuming:  # the start of a resumed stream: nothing is missing
            order.resuming = False
            order.next = lowest
            self._advance(order)
            return
        skipped = lowest - order.next
        self.overflowed()
        if not self._warned:
            self._warned = True
            log.warning("reorder_gap_given_up", pipeline=self.receiver, source=self.pipeline,
                        reason=why, missing=skipped, next=order.next,
                        hint="values of this ordered source are delivered out of order when "
                             "a replica is slower than this (counted as "
                             "reorder_window_overflow; said once)")  # fmt: skip
        order.next = lowest
        self._advance(order)

    def _send(self, order: _Order, seq: int, item: Item) -> None:
        """Deliver the value of `seq`, remembering which replica instance sent it."""
        sent = order.sent
        if seq not in sent:
            sent[seq] = item[3]
            if len(sent) > SENT_SEQS:
                del sent[next(iter(sent))]
        self.deliver(item)

    def _drain(self, order: _Order) -> None:
        """Deliver everything `order` holds, lowest seq first."""
        while order.count:
            order.next = min(order.held)
            self._advance(order)
