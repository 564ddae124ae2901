"""Sending to a replicated target (workers/replicas.py) in-process, over inproc sockets: a
target the directory lists as replicas becomes a group, credit picks the replica holding the
fewest, a replica gone for good hands its unacknowledged values to the others in order,
partition_by is stable, ordered numbers every value once, the EOS reaches every replica."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from structlog.testing import capture_logs

from porch.serializers import get
from porch.wire import FrameKind, HeaderEncoder, decode_batch, decode_prefix, run_origins
from workers.links import InputLink, LinkSettings, OutputLink
from workers.replicas import Output, TargetGroup, links_of
from workers.routing import PartitionError, partition_index
from workers.targets import TargetDirectory, TargetWatch

pytestmark = pytest.mark.timeout(20)

Context = zmq.Context[zmq.Socket[bytes]]
STREAM = ("src", 77)  # the sender's own origin stream (its seqs come as bare ints)
TAG = "abc123"


def name(k: int, pipeline: str = "work") -> str:
    return f"{pipeline}#{TAG}-{k}"


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


class Replica:
    """A fake replica: a ROUTER on inproc:// that reads what it is sent and acknowledges."""

    def __init__(self, ctx: Context, k: int) -> None:
        self.name = name(k)
        self.endpoint = f"inproc://{self.name}"
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.bind(self.endpoint)
        self.acks = HeaderEncoder(0, 1000 + k, self.name)
        self.route = b""
        self.values: list[tuple[bytes, tuple[Any, ...]]] = []  # (payload, origin) in order
        self.kinds: list[FrameKind] = []
        self.last_seq = 0

    def entry(self, state: str = "running", **more: object) -> dict[str, object]:
        return {"state": state, "endpoint": self.endpoint, "instance": 1, **more}

    def read(self) -> None:
        while self.socket.poll(50):
            route, head, *rest = self.socket.recv_multipart()
            self.route = route
            header, end = decode_prefix(head)
            self.kinds.append(header.kind)
            origins = run_origins(header.origins) if header.origins else []
            if header.kind is FrameKind.DATA_BATCH:
                parts = [bytes(p) for p in decode_batch(head, end)]
                self.values += zip(parts, origins, strict=True)
                self.last_seq = header.seq + len(parts) - 1
            elif header.kind is FrameKind.DATA:
                self.values.append((head[end:] or b"".join(rest), origins[0] if origins else ()))
                self.last_seq = header.seq
            elif header.kind is FrameKind.EOS:
                self.last_seq = header.seq

    def ack(self) -> None:
        self.read()
        self.socket.send_multipart([self.route, self.acks.encode(FrameKind.ACK, self.last_seq)])


def sender(ctx: Context, target: str = "work", acked: bool = True) -> OutputLink:
    link = OutputLink(ctx, target, HeaderEncoder(1, 5, "src"), LinkSettings(limit=32, acked=acked))
    link.stream = STREAM
    return link


def directory(outputs: list[Output], **loads: Any) -> TargetDirectory:
    return TargetDirectory("src", outputs, loads=get("pickle").loads if loads else None)


def show(targets: TargetDirectory, entries: dict[str, dict[str, object]]) -> None:
    pipelines = targets.read({"v": 1, "pipelines": entries})
    assert pipelines is not None
    targets.apply(pipelines)


def group_of(outputs: list[Output]) -> TargetGroup:
    group = outputs[0]
    assert isinstance(group, TargetGroup)
    return group


def value(n: int) -> bytes:
    return pickle.dumps({"n": n, "user": f"u{n % 5}"})


def numbers(replica: Replica) -> list[int]:
    return [pickle.loads(payload)["n"] for payload, _ in replica.values]


def both(ctx: Context, **extra: object) -> tuple[list[Output], TargetDirectory, list[Replica]]:
    replicas = [Replica(ctx, 0), Replica(ctx, 1)]
    outputs: list[Output] = [sender(ctx)]
    targets = directory(outputs, loads=True)
    show(targets, {r.name: r.entry(**extra) for r in replicas})
    return outputs, targets, replicas


def test_a_target_listed_as_replicas_becomes_a_group_given_what_its_link_held(
    ctx: Context,
) -> None:
    outputs: list[Output] = [sender(ctx)]
    for seq in range(1, 4):  # held before the directory showed where the target is
        assert outputs[0].offer(FrameKind.DATA, [value(seq)], seq)
    targets = directory(outputs)
    replicas = [Replica(ctx, 0), Replica(ctx, 1)]
    show(targets, {r.name: r.entry() for r in replicas})

    group = group_of(outputs)
    assert sorted(group.links) == [r.name for r in replicas]
    for r in replicas:
        r.read()
    got = sorted(n for r in replicas for n in numbers(r))
    assert got == [1, 2, 3]
    origins = [o for r in replicas for _, o in r.values]
    assert sorted(origins) == [(STREAM, 1), (STREAM, 2), (STREAM, 3)]
    # a plain target stays a link
    plain: list[Output] = [sender(ctx, "plain")]
    show(directory(plain), {"plain": {"state": "running", "endpoint": "inproc://nowhere"}})
    assert isinstance(plain[0], OutputLink)


def test_credit_goes_to_the_replica_holding_the_fewest_ties_in_turn(ctx: Context) -> None:
    outputs, _, (r0, r1) = both(ctx)
    group = group_of(outputs)
    for seq in range(1, 5):  # both hold nothing, then one each: in turn
        assert group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    held = {link.target: link.held for link in group.links.values()}
    assert held == {r0.name: 2, r1.name: 2}

    r1.ack()  # r1 acknowledged its two: the next ones go to r1 until it holds as many
    group.read_acks(_decode_ack)
    for seq in range(5, 7):
        assert group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    r0.read()
    r1.read()
    assert numbers(r0) == [1, 3] or numbers(r0) == [2, 4]
    assert numbers(r1)[-2:] == [5, 6]


def test_a_burst_goes_whole_to_the_lightest_replica_and_room_is_its(ctx: Context) -> None:
    outputs, _, (_r0, _r1) = both(ctx)
    group = group_of(outputs)
    group.offer(FrameKind.DATA, [value(0)], 1)
    group.flush()
    heavy = next(link for link in group.links.values() if link.held)
    assert group.room() == 32  # the empty replica's
    group.extend([value(n) for n in range(1, 4)], range(2, 5))
    group.flush()
    light = next(link for link in group.links.values() if link is not heavy)
    assert (heavy.held, light.held) == (1, 3)


def test_no_value_goes_to_a_restarting_replica_which_keeps_what_it_holds(ctx: Context) -> None:
    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    for seq in range(1, 5):
        group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    show(targets, {r0.name: {"state": "backoff"}, r1.name: r1.entry()})
    assert group.links[r0.name].held == 2  # replayed to its next instance, not handed on
    for seq in range(5, 9):
        group.offer(FrameKind.DATA, [value(seq)], seq)
    group.flush()
    assert group.links[r0.name].held == 2 and group.links[r1.name].held == 6


def test_a_restarted_replica_gets_values_again_once_its_new_process_said_hello(
    ctx: Context,
) -> None:
    """Its supervisor announces it `starting` with the new endpoint, then not again while it
    runs (only ended states are announced): starting with an endpoint is live. Before, it got
    no value again after a kill -9 (all went to the other replica)."""
    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    show(targets, {r0.name: {"state": "backoff"}, r1.name: r1.entry()})
    assert group.router.live == [group.links[r1.name]]
    again = {"state": "starting", "endpoint": r0.endpoint, "instance": 2}
    show(targets, {r0.name: again, r1.name: r1.entry()})
    for seq in range(1, 5):
        group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    assert group.links[r0.name].held == 2 and group.links[r1.name].held == 2


@pytest.mark.parametrize(
    "leaves",
    [
        {},  # scaled away: its entry left the directory
        {"state": "failed", "final": True},
        {"state": "stopped", "final": True},
        {"state": "withdrawn", "since": 5.0},
        {"state": "finished"},
    ],
)
def test_a_replica_gone_for_good_hands_its_unacknowledged_values_on_in_order(
    ctx: Context, leaves: dict[str, object]
) -> None:
    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    group.router.live = [group.links[r0.name]]  # everything to r0 first
    for seq in range(1, 7):
        group.offer(FrameKind.DATA, [value(seq)], seq)
    group.flush()
    r0.read()
    assert numbers(r0) == [1, 2, 3, 4, 5, 6]

    entries = {r1.name: r1.entry()}
    if leaves:
        entries[r0.name] = {"endpoint": r0.endpoint, "instance": 1, **leaves}
    with capture_logs() as logs:
        show(targets, entries)
    group.flush()
    r1.read()
    assert numbers(r1) == [1, 2, 3, 4, 5, 6]
    assert [(e["replica"], e["messages"]) for e in logs if e["event"] == "replica_gone"] == [
        (r0.name, 6)
    ]
    assert group.links[r0.name].data_held() == 0 and group.dropped == 0


def test_a_replica_gone_with_no_other_keeps_its_values_until_one_comes(ctx: Context) -> None:
    outputs, targets, (r0, _r1) = both(ctx)
    group = group_of(outputs)
    group.router.live = [group.links[r0.name]]
    for seq in range(1, 4):
        group.offer(FrameKind.DATA, [value(seq)], seq)
    show(targets, {r0.name: {"state": "withdrawn", "since": 5.0}})  # r1 scaled away too
    assert group.links[r0.name].data_held() == 3
    assert not group.offer(FrameKind.DATA, [value(4)], 4)  # nowhere to go: the producer waits

    r2 = Replica(ctx, 2)
    show(targets, {r0.name: {"state": "withdrawn", "since": 5.0}, r2.name: r2.entry()})
    group.flush()
    r2.read()
    assert numbers(r2) == [1, 2, 3]


def test_partition_by_sends_each_key_to_one_replica_by_the_sorted_names(ctx: Context) -> None:
    outputs, _targets, replicas = both(ctx, partition_by="user")
    group = group_of(outputs)
    assert group.router.partition_by == "user" and group.room() == 0  # each value routed by itself
    for seq in range(1, 21):
        group.aim({"n": seq, "user": f"u{seq % 5}"})
        assert group.offer(FrameKind.DATA, [value(seq)], seq)
    group.flush()
    for r in replicas:
        r.read()
    names = sorted(r.name for r in replicas)
    for r in replicas:
        users = {pickle.loads(p)["user"] for p, _ in r.values}
        assert all(names[partition_index(user, 2)] == r.name for user in users)
    assert sum(len(r.values) for r in replicas) == 20
    assert (
        partition_index("u1", 2)
        == int.from_bytes(__import__("hashlib").blake2b(pickle.dumps("u1", 4)).digest()[:8], "big")
        % 2
    )

    class Point:
        user = "u3"

    group.aim(Point())  # an attribute works too
    with pytest.raises(PartitionError, match=r"a dict without the key 'user'.*partition_by"):
        group.aim({"n": 1})
    with pytest.raises(PartitionError, match=r"a int without the attribute 'user'"):
        group.aim(5)


def test_partition_by_routes_a_value_by_its_bytes_when_it_was_not_aimed(ctx: Context) -> None:
    """A value emitted before the directory showed the replicas (held in the link, waiting on
    it, or in a burst) is routed by its key all the same: decoded (before, by credit)."""
    outputs, _, replicas = both(ctx, partition_by="user")
    group = group_of(outputs)
    names = sorted(r.name for r in replicas)
    for seq in range(1, 11):
        assert group.offer(FrameKind.DATA, [value(seq)], seq)
    group.add(value(11), 11)
    group.extend([value(12), value(13)], [12, 13])
    group.flush()
    for r in replicas:
        r.read()
        users = {pickle.loads(p)["user"] for p, _ in r.values}
        assert all(names[partition_index(user, 2)] == r.name for user in users)
    assert sum(len(r.values) for r in replicas) == 13


@pytest.mark.parametrize("on_error", ["skip", "stop"])
def test_a_value_without_the_partition_field_goes_through_on_error(
    ctx: Context, tmp_path: Any, on_error: str
) -> None:
    from porch.config import OnError
    from porch.errors import ScriptError
    from workers.deadletter import DeadLetters
    from workers.emitter import Emitter
    from workers.heartbeat import Counters
    from workers.onerror import ErrorPolicy

    outputs, targets, _ = both(ctx, partition_by="user")
    counters = Counters()
    errors = ErrorPolicy("src", OnError(on_error), counters, DeadLetters(tmp_path, "src"))

    class Host:
        def output_origin(self) -> str:
            return "step.py:3"

    emitter = Emitter("src", outputs, get("pickle"), None, counters, stamps=True,
                      host=Host(), errors=errors, hand_over=_no_hand_over)  # type: ignore[arg-type]  # fmt: skip
    targets.on_groups = emitter.outputs_changed
    show(targets, {name(0): {"state": "running", "partition_by": "user"}})  # routes now
    assert emitter.emit({"user": "u1"}, None, ())
    if on_error == "stop":
        with pytest.raises(ScriptError, match=r"step.py:3: step\(\) returned a list without"):
            emitter.emit([1, 2], None, ())
        return
    with capture_logs() as logs:
        assert not emitter.emit([1, 2], None, ())
    assert counters.skipped == 1 and counters.msgs_out == 1
    assert "a list without the key 'user'" not in logs[0]["error"]
    assert "a list without the attribute 'user'" in logs[0]["error"]


def _no_hand_over(*args: Any) -> None:
    raise AssertionError("every replica had room")


def test_partition_by_holds_a_key_for_its_replica_while_it_is_down(ctx: Context) -> None:
    outputs, targets, replicas = both(ctx, partition_by="user")
    group = group_of(outputs)
    names = sorted(r.name for r in replicas)
    key = next(f"u{i}" for i in range(20) if names[partition_index(f"u{i}", 2)] == names[0])
    show(targets, {names[0]: {"state": "backoff", "partition_by": "user"},
                   names[1]: replicas[1].entry(partition_by="user")})  # fmt: skip
    group.aim({"user": key})
    assert group.offer(FrameKind.DATA, [pickle.dumps({"user": key})], 1)
    assert group.links[names[0]].data_held() == 1 and group.links[names[1]].data_held() == 0


def test_ordered_appends_one_order_id_per_value_from_0_without_gaps(ctx: Context) -> None:
    outputs, targets, (r0, r1) = both(ctx, ordered=True)
    group = group_of(outputs)
    order = group.numbers.order
    assert order[0] == "#work"
    group.add(value(1), 1)
    group.offer(FrameKind.DATA, [value(2)], 2)
    group.extend([value(3), value(4)], range(3, 5))
    group.offer(FrameKind.DATA, [b""], (("up", 9), 1))  # a skip marker fills its slot too
    group.flush()
    for r in (r0, r1):
        r.read()
    origins = sorted((o for r in (r0, r1) for _, o in r.values), key=lambda o: o[-1])
    assert origins == [
        (STREAM, 1, order, 0),
        (STREAM, 2, order, 1),
        (STREAM, 3, order, 2),
        (STREAM, 4, order, 3),
        (("up", 9), 1, order, 4),
    ]

    # handed on, a value keeps its number
    before = {o for _, o in r0.values}
    show(targets, {r1.name: r1.entry(ordered=True)})
    group.flush()
    r1.read()
    assert before <= {o for _, o in r1.values}
    assert group.numbers.next == 5


def test_the_eos_reaches_every_replica_once_none_holds_a_value(ctx: Context) -> None:
    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    for seq in range(1, 5):
        group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    group.force(FrameKind.EOS, [])
    r0.read()
    r1.read()
    assert FrameKind.EOS not in r0.kinds + r1.kinds and not group.delivered

    r0.ack()  # r1 still holds two: it might die, and r0 must be able to take them
    group.read_acks(_decode_ack)
    r0.read()
    assert FrameKind.EOS not in r0.kinds

    r1.ack()
    group.read_acks(_decode_ack)
    r0.read()
    r1.read()
    assert r0.kinds[-1] is FrameKind.EOS and r1.kinds[-1] is FrameKind.EOS
    r0.ack()
    r1.ack()
    group.read_acks(_decode_ack)
    assert group.delivered

    r2 = Replica(ctx, 2)  # scaled up after our end: it gets the end too
    show(targets, {r.name: r.entry() for r in (r0, r1, r2)})
    r2.read()
    assert r2.kinds == [FrameKind.HELLO, FrameKind.EOS] and not group.delivered


def test_bye_goes_to_every_replica_at_once(ctx: Context) -> None:
    outputs, _, replicas = both(ctx)
    group = group_of(outputs)
    group.offer(FrameKind.DATA, [value(1)], 1)
    group.say_bye()
    for r in replicas:
        r.read()
        assert r.kinds[-1] is FrameKind.BYE


def test_status_reports_each_replica_and_a_target_without_any_up_is_missing(
    ctx: Context,
) -> None:
    outputs: list[Output] = [sender(ctx)]
    targets = directory(outputs)
    show(targets, {name(0): {"state": "starting"}, name(1): {"state": "starting"}})
    assert targets.known == {"work": "starting"}
    group = group_of(outputs)
    watch = TargetWatch("src", outputs, started_s=0.0)
    with capture_logs() as logs:
        watch.check(100.0, targets.known)
    assert [(e["event"], e["target"]) for e in logs] == [("target_missing", "work")]
    assert watch.warnings() == [
        "target 'work' is starting, no endpoint yet; 0 held (queue_limit 32)"
    ]

    from workers.heartbeat import Counters, Heartbeat

    report = Heartbeat(Counters(), outputs, None, _Letters(), None).report("running", "")
    assert [t["name"] for t in report.targets] == [name(0), name(1)]
    assert not group.router.live


class _Letters:
    count = 0


def _decode_ack(frame: bytes) -> int | None:
    from porch.wire import decode_ack

    return decode_ack(frame)


def test_a_value_waiting_on_a_full_link_goes_to_the_group_that_replaced_it(
    tmp_path: Any, clean_process_state: None
) -> None:
    """The directory shows the target as replicas while the producer waits on its full link:
    the group takes the link's values and then the waiting one (before, the retired link
    took it and dropped it: one value lost in a porch run of 20,000)."""
    from porch.config import PipelineConfig
    from workers.worker import Worker, WorkerOptions

    script = tmp_path / "p.py"
    script.write_text("def step():\n    return 1\n")
    config = PipelineConfig("src", (script,), 0, ("work",), queue_limit=4)
    worker = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    try:
        replicas = [Replica(worker.sockets.ctx, k) for k in (0, 1)]
        link = worker.outputs[0]
        assert isinstance(link, OutputLink)
        for seq in range(1, 5):
            assert link.offer(FrameKind.DATA, [value(seq)], seq)
        assert not link.offer(FrameKind.DATA, [value(5)], 5)  # full: the producer waits

        def directory_comes(timeout_ms: int, poller: Any = None) -> None:
            show(worker.house.directory, {r.name: r.entry() for r in replicas})

        worker.loop.waiter.wait = directory_comes  # type: ignore[method-assign]
        worker.loop.waiter.hand_over(link, FrameKind.DATA, [value(5)], 5)
        group = group_of(worker.outputs)
        group.flush()
        for r in replicas:
            r.read()
        assert sorted(n for r in replicas for n in numbers(r)) == [1, 2, 3, 4, 5]
        assert link.dropped == 0 and group.dropped == 0
    finally:
        worker.sockets.ctx.destroy(linger=0)


def test_a_durable_outbox_keeps_each_value_under_its_replica_and_across_a_handover(
    ctx: Context, tmp_path: Any
) -> None:
    """Rows are under the replica a value went to, move with the values of a replica gone
    for good, go once acknowledged, and a restart queues a target's replicas' rows for it."""
    from workers.outbox import DurableOutbox

    path = tmp_path / "outbox" / "src.sqlite"
    outputs: list[Output] = [sender(ctx)]
    durable = DurableOutbox(path, outputs)
    targets = directory(outputs)
    targets.keep = durable.keep
    r0, r1 = Replica(ctx, 0), Replica(ctx, 1)
    show(targets, {r.name: r.entry() for r in (r0, r1)})
    group = group_of(outputs)

    def rows() -> dict[str, int]:
        query = "SELECT target, count(*) FROM outbox GROUP BY target"
        return dict(durable.db.execute(query).fetchall())

    for seq in range(1, 5):  # as the emitter does: the row, then the value to the links
        durable.store([value(seq)], (STREAM, seq))
        assert group.offer(FrameKind.DATA, [value(seq)], seq)
    group.flush()
    assert rows() == {r0.name: 2, r1.name: 2}

    show(targets, {r1.name: r1.entry()})  # r0 scaled away: its two go to r1, rows with them
    durable.sync()
    assert rows() == {r1.name: 4}

    durable.close()  # killed: a restart queues the four for the target, whoever runs it then
    restarted: list[Output] = [sender(ctx)]
    again = DurableOutbox(path, restarted)
    assert again.restore() == 4
    assert rows_of(again) == {"work": 4}
    link = restarted[0]
    assert isinstance(link, OutputLink) and link.data_held() == 4
    again.close()


def rows_of(durable: Any) -> dict[str, int]:
    query = "SELECT target, count(*) FROM outbox GROUP BY target"
    return dict(durable.db.execute(query).fetchall())


def test_values_for_a_target_whose_replicas_all_finished_are_dropped_and_counted(
    ctx: Context,
) -> None:
    from workers.heartbeat import Counters, Heartbeat

    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    group.offer(FrameKind.DATA, [value(1)], 1)
    with capture_logs() as logs:
        show(targets, {r.name: {"state": "finished"} for r in (r0, r1)})
    assert group.gone and group.offer(FrameKind.DATA, [value(2)], 2)
    assert [e["event"] for e in logs if e["event"] == "target_finished"] == ["target_finished"]
    report = Heartbeat(Counters(), outputs, None, _Letters(), None).report("running", "")
    assert report.dropped == 2  # the one a finished replica held, the one offered after


def test_a_target_that_runs_as_one_process_again_gets_what_its_replicas_held(
    ctx: Context,
) -> None:
    """A reload without `replicas`: the directory lists the plain name again; one link to it
    takes every value the replicas' links held (without the order ids)."""
    outputs, targets, _ = both(ctx, ordered=True)
    group = group_of(outputs)
    for seq in range(1, 5):
        group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    one = Replica(ctx, 9)
    with capture_logs() as logs:
        show(targets, {"work": {"state": "running", "endpoint": one.endpoint, "instance": 3}})
    link = outputs[0]
    assert isinstance(link, OutputLink) and link.target == "work"
    assert [e["handed_on"] for e in logs if e["event"] == "target_unreplicated"] == [4]
    one.read()
    assert sorted(numbers(one)) == [1, 2, 3, 4]
    assert sorted(o for _, o in one.values) == [(STREAM, seq) for seq in range(1, 5)]
    assert all(member.gone for member in group.links.values())


def test_the_close_protocol_waits_for_every_replica_and_their_end(ctx: Context) -> None:
    """A finished stream: the EOS waits for r1's acks, then goes to both; the close is done
    once both acknowledged it (workers/closing.py with a real group and fake time)."""
    from workers.closing import OutputClose
    from workers.signals import StopSignals

    outputs, _, (r0, r1) = both(ctx)
    group = group_of(outputs)
    for seq in range(1, 5):
        group.offer(FrameKind.DATA, [value(seq)], seq)
        group.flush()
    now = [0.0]
    stop = StopSignals("src", 8.5, clock=lambda: now[0])
    close = OutputClose("src", outputs, stop, finish_timeout_s=30.0, stop_timeout_s=10.0,
                        kept=False, clock=lambda: now[0])  # fmt: skip
    waits = []

    def wait(timeout_ms: int) -> None:  # time passes; r0 acks at once, r1 after 3 waits
        now[0] += timeout_ms / 1000
        waits.append(timeout_ms)
        r0.ack()
        if len(waits) >= 3:
            r1.ack()
        group.read_acks(_decode_ack)

    close.run(True, wait, lambda: group.read_acks(_decode_ack))
    assert FrameKind.EOS in r0.kinds and FrameKind.EOS in r1.kinds
    assert r0.kinds.index(FrameKind.EOS) == len(r0.kinds) - 1
    assert group.delivered and 3 < len(waits) < 10


def test_a_stopping_sender_hands_what_a_down_replica_holds_to_a_live_one(ctx: Context) -> None:
    """A stop does not wait for a target that is down; with replicas, what the down one holds
    goes to a live one before the BYE (else it would be lost with the sender)."""
    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    group.router.live = [group.links[r0.name]]
    for seq in range(1, 4):
        group.offer(FrameKind.DATA, [value(seq)], seq)
    group.flush()
    show(targets, {r0.name: {"state": "backoff"}, r1.name: r1.entry()})  # r0 restarting
    with capture_logs() as logs:
        group.say_bye()
    r1.read()
    assert numbers(r1) == [1, 2, 3] and r1.kinds[-1] is FrameKind.BYE
    assert group.links[r0.name].data_held() == 0
    assert [(e["event"], e["messages"]) for e in logs] == [("replica_down_handed_on", 3)]


def test_status_shows_a_replica_gone_for_good_only_while_it_holds_values(ctx: Context) -> None:
    from workers.heartbeat import Counters, Heartbeat

    outputs, targets, (r0, r1) = both(ctx)
    group = group_of(outputs)
    group.router.live = [group.links[r0.name]]
    group.offer(FrameKind.DATA, [value(1)], 1)
    show(targets, {r1.name: r1.entry()})  # r0 scaled away: its value goes to r1

    report = Heartbeat(Counters(), outputs, None, _Letters(), None).report("running", "")
    assert [t["name"] for t in report.targets] == [r1.name]
    assert [link.target for link in links_of(group)] == [r0.name, r1.name]  # counters: both


def test_a_durable_value_waiting_on_a_link_that_became_a_group_keeps_one_row(
    tmp_path: Any, clean_process_state: None
) -> None:
    """Its row was written under the target's link; the group's replica gets one and the
    link's goes (before, it stayed behind: replayed at every next start)."""
    from porch.config import Outbox, PipelineConfig
    from workers.worker import Worker, WorkerOptions

    script = tmp_path / "p.py"
    script.write_text("def step():\n    return 1\n")
    config = PipelineConfig("src", (script,), 0, ("work",), queue_limit=4, outbox=Outbox.DURABLE)
    worker = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    durable = worker.durable
    assert durable is not None
    try:
        replicas = [Replica(worker.sockets.ctx, k) for k in (0, 1)]
        link = worker.outputs[0]
        assert isinstance(link, OutputLink)
        stream = link.framer.stream
        for seq in range(1, 6):  # as the emitter does: the row, then the link
            durable.store([value(seq)], (stream, seq), seq)
            if seq < 5:
                assert link.offer(FrameKind.DATA, [value(seq)], seq)

        def directory_comes(timeout_ms: int, poller: Any = None) -> None:
            show(worker.house.directory, {r.name: r.entry() for r in replicas})
            durable.sync()

        worker.loop.waiter.wait = directory_comes  # type: ignore[method-assign]
        worker.loop.waiter.hand_over(link, FrameKind.DATA, [value(5)], 5)
        durable.sync()
        rows = rows_of(durable)
        assert "work" not in rows and sum(rows.values()) == 5, rows
    finally:
        durable.close()
        worker.sockets.ctx.destroy(linger=0)


def test_what_the_link_dropped_before_the_target_showed_replicas_stays_counted(
    ctx: Context,
) -> None:
    """overflow drop_oldest: a fast sender drops on its one link before the first directory;
    that link becomes a group then, and its drops must still be in the heartbeat (porch run:
    2,962 of 3,001 values never arrived and the summary said nothing was dropped)."""
    from workers.heartbeat import Counters, Heartbeat

    link = OutputLink(ctx, "work", HeaderEncoder(1, 5, "src"),
                      LinkSettings(limit=2, drop_oldest=True))  # fmt: skip
    link.stream = STREAM
    outputs: list[Output] = [link]
    for seq in range(1, 6):
        assert link.offer(FrameKind.DATA, [pickle.dumps(seq)], seq)
    assert link.dropped == 3
    targets = directory(outputs)
    show(targets, {r.name: r.entry() for r in (Replica(ctx, 0), Replica(ctx, 1))})
    group_of(outputs)
    heartbeat = Heartbeat(Counters(), outputs, None, _Letters(), None)
    assert heartbeat.report("running", "").dropped == 3
    show(targets, {"work": {"state": "running", "endpoint": "inproc://work-again"}})
    assert isinstance(outputs[0], OutputLink)  # one process again (a reload): still counted
    assert heartbeat.report("running", "").dropped == 3


def test_a_value_held_before_the_directory_without_the_partition_field_is_said(
    ctx: Context,
) -> None:
    """A value emitted before the directory showed the replicas cannot go through on_error
    any more (its step() returned long ago): it goes by credit, but loudly, once per group with
    how many (porch run with a misspelled partition_by ended 0 with no word of it)."""
    outputs: list[Output] = [sender(ctx)]
    for seq in range(1, 4):
        assert outputs[0].offer(FrameKind.DATA, [pickle.dumps({"n": seq})], seq)
    replicas = [Replica(ctx, 0), Replica(ctx, 1)]
    with capture_logs() as logs:
        show(directory(outputs, loads=True),
             {r.name: r.entry(partition_by="usr") for r in replicas})  # fmt: skip
    for r in replicas:
        r.read()
    assert sum(len(r.values) for r in replicas) == 3  # none lost
    said = [e for e in logs if e["event"] == "partition_key_missing"]
    assert len(said) == 1 and said[0]["log_level"] == "warning", logs
    assert said[0]["field"] == "usr" and said[0]["values"] == 3
    assert "a dict without the key 'usr'" in said[0]["error"]


def test_a_replica_whose_connection_died_gets_what_it_holds_again(ctx: Context) -> None:
    """As a plain link (test_link_events): a replica's connection found dead (heartbeats: it
    stopped reading, or a cut) is reopened by the group at once: HELLO, then everything that
    replica has not acknowledged, on the new connection."""
    inputs = [InputLink(ctx, "127.0.0.1", 16), InputLink(ctx, "127.0.0.1", 16)]
    outputs: list[Output] = [sender(ctx)]
    targets = directory(outputs)
    show(targets, {name(k): {"state": "running", "endpoint": link.endpoint, "instance": 1}
                   for k, link in enumerate(inputs)})  # fmt: skip
    group = group_of(outputs)
    for n in range(4):  # two each, in turn
        assert group.offer(FrameKind.DATA, [value(n)], n + 1)
        group.flush()
    victim = group.links[name(0)]
    first: list[list[bytes]] = []

    def received(into: InputLink, wanted: int) -> Callable[[], bool]:
        def check() -> bool:
            group.check_events("src")
            first.extend([bytes(f) for f in m[1:]] for m in into.receive(16))
            return len(first) >= wanted and victim.handshaken

        return check

    wait_for(received(inputs[0], 3), "hello and two values")  # nothing acknowledged
    held = victim.held
    endpoint = inputs[0].endpoint
    inputs[0].socket.close(linger=0)  # the connection dies; the replica is back where it was
    inputs[0].close()
    again = ctx.socket(zmq.ROUTER)
    again.setsockopt(zmq.LINGER, 0)

    def bound() -> bool:  # ZeroMQ closes the old listener in its I/O thread, a moment later
        try:
            again.bind(endpoint)
        except zmq.ZMQError:
            return False
        return True

    wait_for(bound, "the endpoint free again")
    revived = InputLink.__new__(InputLink)
    revived.socket, revived.monitor = again, None
    replayed, first[:] = list(first), []
    kinds = [decode_prefix(m[0])[0].kind for m in replayed]
    assert kinds == [FrameKind.HELLO, FrameKind.DATA, FrameKind.DATA]  # one HELLO: no ack is late
    try:
        wait_for(received(revived, len(replayed)), "hello and the values again")
        assert first == replayed and victim.reconnects == 1 and victim.held == held == 2
        assert decode_prefix(first[0][0])[0].kind is FrameKind.HELLO
    finally:
        group.close(linger_ms=0)
        again.close(linger=0)
        inputs[1].close()


def wait_for(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
