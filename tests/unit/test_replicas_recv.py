"""Receiving from a replicated pipeline (issue 13), in-process: the replicas NAME#TAG-K of a
source are one fan-in source NAME, its stream ends when every live replica ended, and an
ordered one's values are re-sequenced into their input's order (workers/reorder.py)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zmq
from structlog.testing import capture_logs

from porch.config import OnError, PipelineConfig
from porch.directory import DirectoryEntry, decode_directory
from porch.serializers import get
from porch.stream import SKIP
from porch.wire import (
    FrameKind,
    HeaderEncoder,
    Origin,
    decode_ack,
    decode_batch,
    decode_prefix,
    encode_batch,
    encode_header,
    run_origins,
)
from workers.hotloop import HotLoop
from workers.inbox import Inbox
from workers.links import OutputLink
from workers.reorder import (
    REORDER_GAP_S,
    REORDER_WINDOW,
    RESUME_WAIT_S,
    Reorder,
    split_order,
)
from workers.scheduler import FanIn, Item, Pairing
from workers.signals import DRAIN_TIMEOUT_S, StopSignals
from workers.sources import SourceWatch
from workers.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

B1, B2, B3 = "B#ab12cd-1", "B#ab12cd-2", "B#ab12cd-3"
A = ("A", 7)  # the origin stream of the source upstream of B
ORDER = ("#B", 99)  # the order stream A's sender appends for the ordered pipeline B


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class Peer:
    """One sender process: a DEALER on the inbox's endpoint, with its own name and seqs."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], inbox: Inbox, name: str) -> None:
        self.name = name
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(inbox.endpoint)
        self.seq = 0
        self.instance = 1
        self.sent = 0  # messages sent (the inbox's settle() waits for them all)

    def send(self, frame: bytes) -> None:
        self.socket.send(frame)
        self.sent += 1

    def hello(self) -> None:
        self.send(encode_header(FrameKind.HELLO, 1, self.instance, 0, self.name))

    def data(self, value: Any, origin: Origin = ()) -> None:
        self.seq += 1
        runs = [(1, origin)] if origin else []
        header = encode_header(FrameKind.DATA, 1, self.instance, self.seq, self.name, runs)
        self.send(header if value is SKIP else header + pickle.dumps(value))

    def batch(self, values: list[Any], first: Origin) -> None:
        """One DATA_BATCH of consecutive origins (one run)."""
        header = encode_header(FrameKind.DATA_BATCH, 1, self.instance, self.seq + 1, self.name,
                               [(len(values), first)])  # fmt: skip
        self.seq += len(values)
        self.send(encode_batch(header, [pickle.dumps(v) for v in values]))

    def bye(self) -> None:
        self.send(encode_header(FrameKind.BYE, 1, self.instance, 0, self.name))

    def eos(self) -> None:
        self.seq += 1
        self.send(encode_header(FrameKind.EOS, 1, self.instance, self.seq, self.name))

    def acks(self, first_ms: int = 5000) -> list[int]:
        """The acks that came: the first may take `first_ms` on a loaded machine, the rest
        follow within 100 ms of each other."""
        found = []
        wait_ms = first_ms
        while self.socket.poll(wait_ms):
            seq = decode_ack(self.socket.recv())
            assert seq is not None
            found.append(seq)
            wait_ms = 100
        return found


class Wired:
    def __init__(self, name: str, expected: int, clock: Clock) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.inbox = Inbox(self.ctx, "127.0.0.1", name=name, instance=5, expected=expected,
                           any_input=False, serializer=get("pickle"), limit=64,
                           clock=clock)  # fmt: skip
        self.peers: list[Peer] = []
        self.taken = 0  # messages taken off the inbox's socket
        receive = self.inbox.link.receive

        def counted(limit: int) -> list[list[Any]]:
            messages = receive(limit)
            self.taken += len(messages)
            return messages

        self.inbox.link.receive = counted  # type: ignore[method-assign,assignment]

    def peer(self, name: str) -> Peer:
        peer = Peer(self.ctx, self.inbox, name)
        self.peers.append(peer)
        peer.hello()
        self.settle()  # its hello is in before any other peer's message (TCP connects race)
        return peer

    def pump(self, messages: int) -> None:
        """Receive until `messages` more messages (hello, data, eos) came off the socket."""
        inbox = self.inbox
        goal = self.received() + messages
        for _ in range(400):
            if inbox.link.socket.poll(25):
                inbox.receive()
            if self.received() >= goal:
                return
        raise AssertionError(f"{self.received()} messages in, wanted {goal}")

    def received(self) -> int:
        """Data messages taken off the wire (each sender's link seqs; a restart counts on)."""
        return sum(source.received for source in self.inbox.sources.values())

    def settle(self) -> None:
        """Receive every message the peers sent so far (hellos, ends)."""
        sent = sum(peer.sent for peer in self.peers)
        for _ in range(400):
            if self.taken >= sent:
                return
            if self.inbox.link.socket.poll(25):
                self.inbox.receive()
        raise AssertionError(f"{self.taken} messages taken, {sent} sent")

    def drain(self) -> list[tuple[dict[str, Any], Origin]]:
        out = []
        while self.inbox.fanin.ready():
            values, taken, origin, _ = self.inbox.take()
            out.append((values, origin))
            self.inbox.commit(taken)
        return out

    def close(self) -> None:
        for peer in self.peers:
            peer.socket.close()
        self.inbox.close()
        self.ctx.term()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink(clock: Clock) -> Iterator[Wired]:
    wired = Wired("sink", 1, clock)
    yield wired
    wired.close()


def entries(states: dict[str, str | tuple[str, bool]]) -> dict[str, DirectoryEntry]:
    found: dict[str, object] = {}
    for name, spec in states.items():
        state, final = spec if isinstance(spec, tuple) else (spec, False)
        found[name] = {"state": state, "targets": ["sink"], "final": final}
    return decode_directory({"pipelines": found}).pipelines


# ---- one source ------------------------------------------------------------------------------


def test_two_replicas_are_one_source_with_acks_per_process(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    one.data("a1", (A, 1))
    two.data("b1", (A, 2))
    one.data("a2", (A, 3))
    sink.pump(3)

    assert sink.inbox.fanin.sources == ["B"]
    assert sink.inbox.fanin.all_connected()
    assert sorted(sink.inbox.sources) == [B1, B2]
    got = sink.drain()
    assert sorted(values["B"] for values, _ in got) == ["a1", "a2", "b1"]
    sink.inbox.flush_acks()
    assert one.acks()[-1] == 2 and two.acks()[-1] == 1  # each its own link seqs


def test_a_third_pipeline_is_still_too_many_sources(sink: Wired) -> None:
    sink.peer(B1)
    sink.peer(B2)
    other = sink.peer("other")
    other.data("x")
    sink.settle()
    assert sink.inbox.fanin.sources == ["B"]
    assert sink.inbox.counters.bad_frames >= 1


def test_a_fifo_join_takes_the_next_value_from_any_replica(clock: Clock) -> None:
    wired = Wired("sink", 2, clock)
    try:
        one, two, d = wired.peer(B1), wired.peer(B2), wired.peer("ddd")
        one.data("b1")
        wired.pump(1)  # (the order of arrival across connections is ZeroMQ's)
        d.data("d1")
        d.data("d2")
        wired.pump(2)
        two.data("b2")
        wired.pump(1)
        assert wired.inbox.fanin.pairing is Pairing.FIFO
        got = [values for values, _ in wired.drain()]
        assert got == [{"B": "b1", "ddd": "d1"}, {"B": "b2", "ddd": "d2"}]
    finally:
        wired.close()


def test_an_aligned_join_waits_for_partners_whatever_replica_sends_them(clock: Clock) -> None:
    wired = Wired("sink", 2, clock)
    try:
        one, two, d = wired.peer(B1), wired.peer(B2), wired.peer("ddd")
        d.data("d1", (A, 1))
        one.data("b1", (A, 1))
        wired.pump(2)
        assert wired.inbox.fanin.pairing is Pairing.ALIGNED
        # replica 1 is ahead: d's 2 and 3 wait for B's, which replica 2 sends later
        one.data("b4", (A, 4))
        d.data("d2", (A, 2))
        d.data("d3", (A, 3))
        d.data("d4", (A, 4))
        wired.pump(4)
        two.data("b3", (A, 3))
        two.data("b2", (A, 2))
        wired.pump(2)
        got = sorted((v["B"], v["ddd"]) for v, _ in wired.drain())
        assert got == [("b1", "d1"), ("b2", "d2"), ("b3", "d3"), ("b4", "d4")]
        assert wired.inbox.counters.unpaired == 0
    finally:
        wired.close()


def test_values_of_a_replica_are_not_dropped_by_origin_when_they_come_late(sink: Wired) -> None:
    """A replica handed the values of one that went away sends older origins after newer."""
    one = sink.peer(B1)
    one.data("x5", (A, 5))
    one.data("x2", (A, 2))  # handed over from a replica scaled away
    sink.pump(2)
    assert [v["B"] for v, _ in sink.drain()] == ["x5", "x2"]
    assert sink.inbox.counters.duplicates == 0


def test_a_value_another_replica_instance_sent_already_is_a_duplicate(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    one.data("x5", (A, 5))
    one.data("x6", (A, 6))
    sink.pump(2)
    assert [v["B"] for v, _ in sink.drain()] == ["x5", "x6"]
    two.data("x6 again", (A, 6))  # handed the input of x6 before B1's ack reached its sender
    two.data("x3", (A, 3))  # handed over, never sent before: late, not a duplicate
    sink.pump(2)
    one.instance, one.seq = 2, 0  # B1 restarted and re-processes the input of x5
    one.hello()
    sink.settle()
    one.data("x5 again", (A, 5))
    one.data("x7", (A, 7))
    sink.pump(2)
    assert [v["B"] for v, _ in sink.drain()] == ["x3", "x7"]
    assert sink.inbox.counters.duplicates == 2
    sink.inbox.flush_acks()
    assert two.acks()[-1] == 2 and one.acks()[-1] == 2


def test_a_replica_receiver_keeps_no_origin_windows(clock: Clock) -> None:
    wired = Wired("C#ab12cd-1", 1, clock)
    try:
        a = wired.peer("A_plain")
        a.data("x5", (A, 5))
        a.data("x2", (A, 2))
        wired.pump(2)
        assert [v["A_plain"] for v, _ in wired.drain()] == ["x5", "x2"]
    finally:
        wired.close()


# ---- end of stream ---------------------------------------------------------------------------


def test_one_replica_ending_does_not_end_the_source(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    sink.settle()
    one.eos()
    sink.settle()
    fanin = sink.inbox.fanin
    assert fanin.has_ended(B1) and not fanin.has_ended("B")
    two.data("late")
    two.eos()
    sink.settle()
    assert fanin.has_ended("B")
    assert [v["B"] for v, _ in sink.drain()] == ["late"]
    assert fanin.exhausted()


def test_a_live_replica_that_never_came_holds_the_stream_open(sink: Wired) -> None:
    watch = SourceWatch("sink", sink.inbox, StopSignals("sink", 8.5))
    one = sink.peer(B1)
    sink.settle()
    watch.note(entries({B1: "running", B2: "starting"}))
    one.eos()
    sink.settle()
    assert not sink.inbox.fanin.has_ended("B")
    # B2 is scaled away: its entry leaves the directory, and no longer holds B open
    watch.note(entries({B1: "finished"}))
    assert sink.inbox.fanin.has_ended("B")


def test_a_replica_down_for_good_or_withdrawn_does_not_hold_the_stream_open(sink: Wired) -> None:
    watch = SourceWatch("sink", sink.inbox, StopSignals("sink", 8.5))
    one = sink.peer(B1)
    sink.peer(B2)
    sink.peer(B3)
    sink.settle()
    with capture_logs() as logs:
        watch.note(entries({B1: "running", B2: ("failed", True), B3: "withdrawn"}))
    assert watch.warnings() == []  # B1 carries on: B is not waited for
    assert logs == []
    one.eos()
    sink.settle()
    assert sink.inbox.fanin.has_ended("B")


def test_a_source_whose_replicas_are_all_down_is_waited_for(sink: Wired) -> None:
    watch = SourceWatch("sink", sink.inbox, StopSignals("sink", 8.5))
    sink.peer(B1)
    sink.settle()
    watch.note(entries({B1: ("failed", True), B2: ("stopped", True)}))
    assert watch.warnings() == ["source 'B' failed; waiting for it"]
    watch.note(entries({B1: "backoff", B2: ("stopped", True)}))
    assert watch.warnings() == []


def test_a_finished_replica_without_eos_ends_after_the_grace(sink: Wired, clock: Clock) -> None:
    watch = SourceWatch("sink", sink.inbox, StopSignals("sink", 8.5, clock=clock), clock=clock)
    sink.peer(B1)
    two = sink.peer(B2)
    sink.settle()
    watch.note(entries({B1: "finished", B2: "running"}))
    watch.end_overdue()
    clock.now_s += DRAIN_TIMEOUT_S
    watch.end_overdue()
    fanin = sink.inbox.fanin
    assert fanin.has_ended(B1) and not fanin.has_ended("B")
    two.eos()
    sink.settle()
    assert fanin.has_ended("B")


def test_waiting_for_sources_needs_one_replica_of_each() -> None:
    fanin = FanIn(2)
    fanin.connect(B1)
    assert not fanin.all_connected()
    fanin.connect(B2)
    assert not fanin.all_connected() and fanin.sources == ["B"]
    fanin.connect("ddd")
    assert fanin.all_connected()


def test_a_restarted_replica_reopens_its_source() -> None:
    fanin = FanIn(1)
    fanin.connect(B1)
    fanin.end(B1)
    assert fanin.has_ended("B")
    fanin.connect(B1)  # a new instance: a new stream
    assert not fanin.has_ended("B") and not fanin.has_ended(B1)


# ---- ordered: re-sequencing ------------------------------------------------------------------


def ordered(peer: Peer, n: int, value: Any = None) -> None:
    """Value n of A, handed out as order seq n-1 of B."""
    peer.data(f"v{n}" if value is None else value, (A, n, ORDER, n - 1))


def test_ordered_values_from_two_replicas_come_in_input_order_stripped(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    ordered(two, 2)
    ordered(two, 4)
    ordered(one, 1)
    ordered(one, 3)
    ordered(two, 5, SKIP)  # its step skipped input 5: the marker fills the slot
    ordered(one, 6)
    sink.pump(6)

    got = sink.drain()
    assert [v["B"] for v, _ in got] == ["v1", "v2", "v3", "v4", SKIP, "v6"]
    assert [origin for _, origin in got] == [(A, n) for n in range(1, 7)]
    sink.inbox.flush_acks()
    assert one.acks()[-1] == 3 and two.acks()[-1] == 3


def test_held_values_are_not_acknowledged(sink: Wired) -> None:
    one = sink.peer(B1)
    ordered(one, 2)
    ordered(one, 3)
    sink.pump(2)
    assert not sink.inbox.fanin.ready() and sink.inbox.held() == 2
    sink.inbox.flush_acks()
    assert one.acks(first_ms=200) == []


def test_a_batch_of_order_ids_only_is_re_sequenced(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    one.batch(["v3", "v4"], (ORDER, 2))
    sink.pump(2)
    assert not sink.inbox.fanin.ready()
    two.batch(["v1", "v2"], (ORDER, 0))
    sink.pump(2)
    assert [(v["B"], origin) for v, origin in sink.drain()] == [
        ("v1", ()), ("v2", ()), ("v3", ()), ("v4", ()),
    ]  # fmt: skip


def test_values_below_next_and_several_outputs_of_one_input_go_at_once(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    ordered(one, 1)
    ordered(one, 1, "v1 again")  # a second output of input 1
    ordered(two, 3)
    ordered(two, 3, "v3 again")  # held with its twin
    ordered(one, 2)
    sink.pump(5)
    assert [v["B"] for v, _ in sink.drain()] == ["v1", "v1 again", "v2", "v3", "v3 again"]
    ordered(one, 2, "v2 once more")  # below next, from the replica that sent v2: at once
    sink.pump(1)
    assert [v["B"] for v, _ in sink.drain()] == ["v2 once more"]


def test_a_gap_older_than_the_limit_is_given_up(sink: Wired, clock: Clock) -> None:
    one = sink.peer(B1)
    ordered(one, 2)
    ordered(one, 3)
    sink.pump(2)
    sink.inbox.expire_order(clock() + REORDER_GAP_S - 0.1)
    assert not sink.inbox.fanin.ready()
    with capture_logs() as logs:
        sink.inbox.expire_order(clock() + REORDER_GAP_S)
    assert [v["B"] for v, _ in sink.drain()] == ["v2", "v3"]
    assert sink.inbox.counters.reorder_window_overflow == 1
    assert [e["event"] for e in logs] == ["reorder_gap_given_up"]
    ordered(one, 1, "v1 at last")  # below next now: at once, nothing hangs
    sink.pump(1)
    assert [v["B"] for v, _ in sink.drain()] == ["v1 at last"]


def test_a_gap_every_live_replica_is_past_is_given_up_at_once(sink: Wired, clock: Clock) -> None:
    """B2 went away; its unprocessed inputs were handed to B1, behind what B1 holds here."""
    watch = SourceWatch("sink", sink.inbox, StopSignals("sink", 8.5))
    one, two = sink.peer(B1), sink.peer(B2)
    ordered(one, 1)
    ordered(two, 2)
    ordered(one, 4)
    sink.pump(3)
    watch.note(entries({B1: "running", B2: "running"}))
    sink.inbox.expire_order(clock())
    assert [v["B"] for v, _ in sink.drain()] == ["v1", "v2"]  # B2 may still send 3
    watch.note(entries({B1: "running"}))  # B2 scaled away
    sink.inbox.expire_order(clock())
    assert [v["B"] for v, _ in sink.drain()] == ["v4"]
    assert sink.inbox.counters.reorder_window_overflow == 1
    ordered(one, 3, "v3 handed over")
    sink.pump(1)
    assert [v["B"] for v, _ in sink.drain()] == ["v3 handed over"]


def test_the_end_of_the_stream_flushes_what_is_held_in_order(sink: Wired) -> None:
    one, two = sink.peer(B1), sink.peer(B2)
    ordered(two, 4)
    ordered(one, 3)
    ordered(two, 6)
    sink.pump(3)
    one.eos()
    sink.settle()
    assert not sink.inbox.fanin.ready()  # B2 is still live
    two.eos()
    sink.settle()
    assert [v["B"] for v, _ in sink.drain()] == ["v3", "v4", "v6"]
    assert sink.inbox.fanin.exhausted()


def test_what_is_held_goes_once_no_replica_sends_any_more(sink: Wired) -> None:
    """Stopped replicas (BYE) wait for our acknowledgements: the gap is not waited for."""
    one, two = sink.peer(B1), sink.peer(B2)
    ordered(one, 3)
    ordered(one, 2)
    sink.pump(2)
    one.bye()
    sink.settle()
    assert not sink.inbox.fanin.ready()  # B2 may still fill the gap
    two.eos()
    sink.settle()
    assert [v["B"] for v, _ in sink.drain()] == ["v2", "v3"]
    assert not sink.inbox.fanin.has_ended("B")  # B1 stopped: it may come back
    sink.inbox.flush_acks()
    assert one.acks()[-1] == 2


def test_a_stopping_receiver_waits_for_no_gap(sink: Wired) -> None:
    one = sink.peer(B1)
    ordered(one, 3)
    ordered(one, 2)
    sink.pump(2)
    sink.inbox.release_held()
    assert [v["B"] for v, _ in sink.drain()] == ["v2", "v3"]
    ordered(one, 5)
    sink.pump(1)
    assert [v["B"] for v, _ in sink.drain()] == ["v5"]


def test_after_our_restart_an_order_stream_starts_at_the_lowest_replay(
    sink: Wired, clock: Clock
) -> None:
    """Replicas replay what an earlier instance of ours did not acknowledge (link seq 41 on):
    the stream does not wait for seq 0, it starts at the lowest seq replayed in RESUME_WAIT_S."""
    one, two = sink.peer(B1), sink.peer(B2)
    one.seq, two.seq = 40, 30
    ordered(one, 501)
    ordered(one, 503)
    ordered(two, 499)
    ordered(two, 502)
    sink.settle()  # not pump(4): a resumed link's seqs start at 41, pump counts link seqs
    sink.inbox.expire_order(clock() + RESUME_WAIT_S - 0.01)
    assert not sink.inbox.fanin.ready()
    sink.inbox.expire_order(clock() + RESUME_WAIT_S)
    assert [v["B"] for v, _ in sink.drain()] == ["v499"]  # 500 is next
    ordered(two, 500)
    sink.pump(1)
    assert [v["B"] for v, _ in sink.drain()] == ["v500", "v501", "v502", "v503"]
    assert sink.inbox.counters.reorder_window_overflow == 0


def test_a_restarted_replica_re_sending_delivered_values_is_deduplicated(sink: Wired) -> None:
    one = sink.peer(B1)
    ordered(one, 1)
    ordered(one, 2)
    sink.pump(2)
    assert [v["B"] for v, _ in sink.drain()] == ["v1", "v2"]
    one.instance, one.seq = 2, 0  # it restarted and re-processes input 2
    one.hello()
    sink.settle()
    ordered(one, 2, "v2 again")
    ordered(one, 3)
    sink.pump(2)
    assert [v["B"] for v, _ in sink.drain()] == ["v3"]
    assert sink.inbox.counters.duplicates == 1
    sink.inbox.flush_acks()
    assert one.acks()[-1] == 2  # the replay is acknowledged with the rest


def test_a_replica_receiver_strips_the_order_id_without_waiting(clock: Clock) -> None:
    """C's replicas each see some of B's order ids: none of them can re-sequence."""
    wired = Wired("C#ab12cd-1", 1, clock)
    try:
        one = wired.peer(B1)
        ordered(one, 5)
        ordered(one, 2)
        wired.pump(2)
        assert [(v["B"], o) for v, o in wired.drain()] == [("v5", (A, 5)), ("v2", (A, 2))]
    finally:
        wired.close()


def test_a_plain_source_is_not_re_sequenced(sink: Wired) -> None:
    plain = sink.peer("B")
    plain.data("v2", (A, 2, ORDER, 1))
    sink.pump(1)
    assert [(v["B"], o) for v, o in sink.drain()] == [("v2", (A, 2, ORDER, 1))]


# ---- the re-sequencer alone ------------------------------------------------------------------


def item(n: int, generation: int = 1) -> Item:
    return (n, f"v{n}", (), generation)


def no_drop(dropped: Item) -> None:
    raise AssertionError(f"dropped {dropped}")


def test_a_replay_from_another_instance_is_dropped_another_output_is_not() -> None:
    out: list[Item] = []
    dropped: list[Item] = []
    reorder = Reorder("B", "sink", out.append, Clock(), lambda: None, dropped.append)
    reorder.add(ORDER, 0, item(0, generation=1))
    reorder.add(ORDER, 0, item(10, generation=1))  # a second output of input 0: delivered
    reorder.add(ORDER, 0, item(20, generation=2))  # a restarted replica re-sends it: a replay
    reorder.add(ORDER, 2, item(2, generation=1))
    reorder.add(ORDER, 2, item(22, generation=3))  # a replay of a value still held
    reorder.add(ORDER, 1, item(1, generation=2))
    assert [i[0] for i in out] == [0, 10, 1, 2]
    assert [i[0] for i in dropped] == [20, 22]


def test_the_window_overflows_into_the_lowest_held_value() -> None:
    out: list[Item] = []
    overflows: list[int] = []
    clock = Clock()
    reorder = Reorder("B", "sink", out.append, clock, lambda: overflows.append(1), no_drop)
    for n in range(2, REORDER_WINDOW + 2):  # seq 0 and 1 are missing
        reorder.add(ORDER, n, item(n))
    assert out == [] and reorder.held == REORDER_WINDOW
    with capture_logs() as logs:
        reorder.add(ORDER, REORDER_WINDOW + 2, item(REORDER_WINDOW + 2))
        reorder.add(ORDER, REORDER_WINDOW + 4, item(REORDER_WINDOW + 4))
    assert [i[0] for i in out] == list(range(2, REORDER_WINDOW + 3))
    assert reorder.held == 1 and len(overflows) == 1
    assert len(logs) == 1  # said once
    reorder.add(ORDER, 0, item(0))  # late: at once
    assert out[-1] == item(0)
    for _ in range(REORDER_WINDOW):  # a second overflow is counted, not said again
        reorder.add(ORDER, REORDER_WINDOW + 10, item(0))
    assert len(overflows) == 2


def test_streams_of_several_senders_are_ordered_apart() -> None:
    out: list[Item] = []
    reorder = Reorder("B", "sink", out.append, Clock(), lambda: None, no_drop)
    other = ("#B", 100)
    reorder.add(ORDER, 1, item(1))
    reorder.add(other, 0, item(10))
    reorder.add(ORDER, 0, item(0))
    assert [i[0] for i in out] == [10, 0, 1]


def test_progress_restarts_the_gap_clock() -> None:
    out: list[Item] = []
    clock = Clock()
    reorder = Reorder("B", "sink", out.append, clock, lambda: None, no_drop)
    reorder.add(ORDER, 1, item(1))
    reorder.add(ORDER, 3, item(3))
    clock.now_s += REORDER_GAP_S - 1
    reorder.add(ORDER, 0, item(0))  # progress: 0 and 1 go, 2 is the new gap
    clock.now_s += 2
    reorder.expire(clock())
    assert [i[0] for i in out] == [0, 1]
    reorder.expire(clock() + REORDER_GAP_S)
    assert [i[0] for i in out] == [0, 1, 3]


def test_split_order_strips_only_the_named_stream() -> None:
    assert split_order((A, 3, ORDER, 2), "#B") == ((A, 3), ORDER, 2)
    assert split_order((ORDER, 2, A, 3), "#B") == ((A, 3), ORDER, 2)
    assert split_order((A, 3, ("#C", 1), 2), "#B") == ((A, 3, ("#C", 1), 2), None, 0)


# ---- a replica of an ordered pipeline fills the slots it skips ---------------------------------

STAGE = """
import porch
def step(input_data):
    value = input_data["src"]
    if value == 2:
        return porch.SKIP
    if value == 4:
        raise ValueError("four")
    return value * 10
"""
MID_ORDER = ("#mid", 77)  # what src's sender appends for the ordered pipeline mid


@pytest.mark.usefixtures("clean_process_state")
@pytest.mark.parametrize("bursts", [False, True], ids=["per message", "bursts"])
def test_an_ordered_replica_sends_a_marker_for_each_input_it_skips(
    tmp_path: Path, bursts: bool
) -> None:
    script = tmp_path / "mid.py"
    script.write_text(STAGE)
    config = replace(PipelineConfig("mid", (script,), 1, ("sink",), on_error=OnError.SKIP),
                     name="mid#ab12cd-0", replica_of="mid", replicas=2, replicated=True,
                     ordered=True)  # fmt: skip
    made = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    try:
        made.host.load()
        inbox = made.inbox
        assert inbox is not None
        headers = HeaderEncoder(1, 9, "src")
        inbox._accept([b"r", headers.encode(FrameKind.HELLO, 0)])
        for seq, value in enumerate([1, 2, 3, 4, SKIP, 6], start=1):
            payload = b"" if value is SKIP else pickle.dumps(value)
            runs = [(1, (("src", 3), seq + 100, MID_ORDER, seq - 1))]
            inbox._accept([b"r", headers.encode_data(FrameKind.DATA, seq, runs) + payload])
        if bursts:
            assert HotLoop(made.loop).run_queue(inbox)
        else:
            while inbox.fanin.ready():
                made.loop.take_one(inbox)
        link = made.outputs[0]
        assert isinstance(link, OutputLink)
        link.flush()
        found = []
        for entry in link.outbox:
            header, end = decode_prefix(bytes(entry.frames[0]))
            if header.kind is FrameKind.DATA_BATCH:
                parts = [bytes(p) for p in decode_batch(bytes(entry.frames[0]), end)]
            else:
                parts = [bytes(entry.frames[0])[end:]]
            origins = run_origins(header.origins)
            found += [
                (pickle.loads(p) if p else SKIP, o) for p, o in zip(parts, origins, strict=True)
            ]
        # every input's slot of mid's order stream is filled: a value, or a marker
        assert found == [
            (10 if n == 1 else 30 if n == 3 else 60 if n == 6 else SKIP,
             (("src", 3), 100 + n, MID_ORDER, n - 1))
            for n in range(1, 7)
        ]  # fmt: skip
    finally:
        made.sockets.ctx.destroy(linger=0)
