"""The worker's message loop and its parts, in-process (workers/loop.py, emitter.py,
waiting.py, onerror.py): the per-message path gives the links what the bursts give them, a
value the serializer refuses is on_error's, a full link is forced only once a stop's drain
time is over, the housekeeping runs at most every TICK_S, and async steps leave in order.
No subprocess: the worker's supervisor address is never answered."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from porch.config import OnError, PipelineConfig
from porch.errors import ScriptError
from porch.serializers import SerializationError
from porch.stream import SKIP
from porch.wire import FrameKind, HeaderEncoder
from tests.unit.test_hotloop import SOURCE, STAGE, sent
from workers.concurrent import ConcurrentLoop
from workers.deadletter import DeadLetters
from workers.heartbeat import Counters
from workers.inbox import Inbox, Undecodable
from workers.links import OutputLink
from workers.onerror import ErrorPolicy
from workers.waiting import ACK_DELAY_MS, TICK_S
from workers.worker import Worker, WorkerOptions

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_process_state")]


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[Worker]]:
    """The workers a test builds, their sockets closed after it."""
    workers: list[Worker] = []
    yield workers
    for each in workers:
        each.sockets.ctx.destroy(linger=0)


def build(
    made: list[Worker], tmp_path: Path, script: str, sources: int = 0, on_error: str = "skip"
) -> Worker:
    path = tmp_path / f"p{len(made)}.py"
    path.write_text(script)
    config = PipelineConfig(f"p{len(made)}", (path,), sources, ("sink",), on_error=on_error)
    worker = Worker(config, WorkerOptions(control="tcp://127.0.0.1:1", state_dir=tmp_path))
    made.append(worker)
    worker.host.load()
    return worker


def feed(inbox: Inbox, values: list[Any]) -> None:
    """`values` from one source `src`, origins (src, 3, 101...); SKIP: a marker."""
    headers = HeaderEncoder(1, 9, "src")
    inbox._accept([b"r", headers.encode(FrameKind.HELLO, 0)])
    for seq, value in enumerate(values, start=1):
        payload = b"" if value is SKIP else pickle.dumps(value)
        runs = [(1, (("src", 3), seq + 100))]
        inbox._accept([b"r", headers.encode_data(FrameKind.DATA, seq, runs) + payload])


# ---- MessageLoop: the per-message path -------------------------------------------------------


def test_a_source_one_message_at_a_time_sends_what_its_bursts_send(
    made: list[Worker], tmp_path: Path
) -> None:
    source = build(made, tmp_path, SOURCE)
    loop = source.loop
    while not loop.ended:
        loop.iterate(None)
    # as test_hotloop's bursts: 3 SKIP (nothing sent), 5 raised (skipped), 7 called stop()
    assert sent(source) == [({"n": 1}, 1), ({"n": 2}, 2), ({"n": 4}, 3), ({"n": 6}, 4),
                            ({"n": 7}, 5)]  # fmt: skip
    assert source.counters.iterations == 6 and source.counters.skipped == 1
    assert source.counters.msgs_out == 5 and source.ended


def test_a_stage_one_input_set_at_a_time_passes_markers_and_origins_on(
    made: list[Worker], tmp_path: Path
) -> None:
    stage = build(made, tmp_path, STAGE, sources=1)
    inbox = stage.inbox
    assert inbox is not None
    feed(inbox, [1, 2, 3, 4, SKIP, 6])
    while inbox.fanin.ready():
        stage.loop.take_one(inbox)
    assert sent(stage) == [(10, 101), (SKIP, 102), (30, 103), (SKIP, 104), (SKIP, 105),
                           (60, 106)]  # fmt: skip
    assert inbox.sources["src"].processed == 6
    assert stage.counters.iterations == 4 and stage.counters.skipped == 1


def test_a_stopping_loop_drains_until_its_drain_deadline_then_only_departed_sources(
    made: list[Worker], tmp_path: Path
) -> None:
    stage = build(made, tmp_path, STAGE, sources=1)
    inbox = stage.inbox
    assert inbox is not None
    feed(inbox, [1, 2])
    stage.request_stop("test")
    assert stage.loop.stopping and stage.loop.draining(inbox)
    stage.stops.drain_deadline = 0.0  # the moment for live sources is over
    assert not stage.loop.draining(inbox)  # `src` is live: it replays what we did not ack
    inbox.departed.add("src")
    assert stage.loop.draining(inbox)  # a stopped source waits for our acknowledgement
    stage.stops.stop_deadline = 0.0
    assert not stage.loop.draining(inbox)


# ---- Emitter ------------------------------------------------------------------------------


def test_a_value_the_serializer_refuses_is_skipped_and_its_origin_marked(
    made: list[Worker], tmp_path: Path
) -> None:
    stage = build(made, tmp_path, "def step(input_data):\n    return 1\n", sources=1)
    origin = (("src", 3), 101)
    unpicklable = (i for i in range(3))
    assert not stage.loop.emitter.emit(unpicklable, {"src": 1}, origin)
    assert stage.counters.skipped == 1 and stage.counters.msgs_out == 0
    stage.loop.after_step(unpicklable, {"src": 1}, origin)
    assert sent(stage) == [(SKIP, 101)]  # a join downstream drops this origin's partner
    assert stage.counters.iterations == 0 and stage.counters.skipped == 2


def test_a_value_the_serializer_refuses_fails_the_pipeline_under_on_error_stop(
    made: list[Worker], tmp_path: Path
) -> None:
    script = "def step():\n    return (i for i in range(3))\n"
    source = build(made, tmp_path, script, on_error="stop")
    with pytest.raises(ScriptError, match=r"p0\.py:1: step\(\) returned"):
        source.loop.iterate(None)
    assert source.counters.skipped == 0


def test_a_stamping_pipeline_numbers_its_values_and_bursts_in_one_sequence(
    made: list[Worker], tmp_path: Path
) -> None:
    source = build(made, tmp_path, "def step():\n    return 1\n")
    emitter = source.loop.emitter
    assert emitter.emit("a", None, ())
    assert emitter.own_origins(3) == range(2, 5)
    assert emitter.emit("b", None, ())
    emitter.pass_marker((("x", 1), 7))  # a source's own ids are never joined: no marker
    assert sent(source) == [("a", 1), ("b", 5)]
    assert source.outputs[0].framer.stream == emitter.stream == ("p0", emitter.stream[1])


# ---- Waiter -------------------------------------------------------------------------------


def full(worker: Worker) -> None:
    link = worker.outputs[0]
    link.seq = 0
    link.outbox.held = link.settings.limit - len(link.batch)  # the window is full
    assert link.room() == 0 and not link.offer(FrameKind.DATA, [b"x"], 1)


def test_a_full_link_takes_a_stopping_workers_output_once_the_drain_time_is_over(
    made: list[Worker], tmp_path: Path
) -> None:
    source = build(made, tmp_path, "def step():\n    return 1\n")
    full(source)
    link = source.outputs[0]
    held = len(link.outbox)
    source.request_stop("test")
    source.stops.drain_deadline = 0.0
    source.loop.waiter.hand_over(link, FrameKind.DATA, [pickle.dumps("late")], 1)
    assert len(link.outbox) == held + 1  # forced in: its input is processed and acknowledged


class Ticks:
    """The housekeeping's tick, counted."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def tick(self, now: float, control: bool = True, monitor: bool = True) -> None:
        self.at.append(now)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_the_housekeeping_runs_at_most_every_tick(
    made: list[Worker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build(made, tmp_path, "def step():\n    return 1\n")
    waiter = source.loop.waiter
    ticks, clock = Ticks(), Clock()
    monkeypatch.setattr(waiter, "house", ticks)
    monkeypatch.setattr("workers.waiting.time", clock)
    waiter.tick()
    waiter.tick()
    clock.now += TICK_S / 2
    waiter.tick()
    clock.now += TICK_S
    waiter.tick()
    assert ticks.at == [100.0, 100.0 + 1.5 * TICK_S]


def test_a_wait_returns_when_a_signal_wakes_it_and_reads_the_wake_up(
    made: list[Worker], tmp_path: Path
) -> None:
    source = build(made, tmp_path, "def step():\n    return 1\n")
    stops = source.stops
    stops.wake_r.setblocking(False)
    stops.wake_w.send(b"\x0f")  # what the signal handler's wakeup fd receives
    source.loop.waiter.wait(20_000)  # the test's timeout fails it if the byte does not wake it
    with pytest.raises(BlockingIOError):
        stops.wake_r.recv(1)  # read: the next wait blocks again


class ScriptedPoller:
    """A poller whose polls return what the test scripted, noting each timeout."""

    def __init__(self, results: list[list[tuple[Any, int]]]) -> None:
        self.results = results
        self.timeouts: list[int] = []

    def poll(self, timeout_ms: int) -> list[tuple[Any, int]]:
        self.timeouts.append(timeout_ms)
        return self.results.pop(0)


def test_an_idle_wait_reads_the_inputs_monitor_only_when_it_woke_the_wait(
    made: list[Worker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle poller holds the input's socket monitor (failed handshakes): a wait that timed
    out leaves it alone (an idle sink's wake-up each second), a wait it woke reads it once,
    and a tick from anywhere else still looks at it."""
    stage = build(made, tmp_path, "def step(input_data):\n    return 1\n", sources=1)
    inbox, waiter = stage.inbox, stage.loop.waiter
    assert inbox is not None and inbox.link.monitor is not None
    looked: list[str] = []
    monkeypatch.setattr(inbox.link, "check_events", looked.append)
    assert inbox.link.monitor in [sock for sock, _ in waiter._poller.sockets]

    waiter.wait(1)  # times out (its tick runs: the first one)
    assert looked == []

    scripted = ScriptedPoller([[(inbox.link.monitor, zmq.POLLIN)]])
    monkeypatch.setattr(waiter, "_poller", scripted)
    monkeypatch.setattr(waiter, "_next_tick", 0.0)
    waiter.wait(1)
    assert looked == [stage.name] and scripted.timeouts == [1]

    monkeypatch.setattr(waiter, "_next_tick", 0.0)
    waiter.tick()
    assert looked == [stage.name, stage.name]


def test_a_tick_reads_the_sockets_only_when_one_of_them_has_something(
    made: list[Worker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick polls the control channel, the links' sockets and their monitors at once: with
    nothing waiting it reads none of them (an idle source's tick each second), the link's
    hello-again timer still runs; an ack waiting on a link makes it read them all."""
    source = build(made, tmp_path, "def step():\n    return 1\n")
    house, link = source.house, source.outputs[0]
    assert house.probe_sockets and isinstance(link, OutputLink)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        link.connect(f"tcp://127.0.0.1:{port}")
        identity, _ = router.recv_multipart()  # its HELLO: the connection is up
        deadline = time.monotonic() + 10
        while not link.handshaken and time.monotonic() < deadline:
            link.check_events(source.name)  # (its monitor's handshake event, read)
        assert link.handshaken
        read: list[str] = []
        hellos: list[Any] = []
        monkeypatch.setattr(house, "on_control", lambda: read.append("control"))
        monkeypatch.setattr(house, "_read_acks", lambda: read.append("acks"))
        monkeypatch.setattr("workers.housekeeping.hello_again", lambda ln, now: hellos.append(ln))

        house.tick(100.0)
        assert read == [] and hellos == [link]

        router.send_multipart([identity, b"an ack"])
        assert zmq.zmq_poll([(link.socket, zmq.POLLIN)], 10_000)
        house.tick(101.0)
        assert read == ["control", "acks"] and hellos == [link]
    finally:
        router.close(linger=0)
        ctx.term()


def test_a_loop_fed_back_to_back_acknowledges_once_its_input_pauses(
    made: list[Worker], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = build(made, tmp_path, "def step(input_data):\n    return 1\n", sources=1)
    inbox = stage.inbox
    assert inbox is not None
    flushed: list[bool] = []
    monkeypatch.setattr(inbox, "flush_acks", lambda: flushed.append(True))
    monkeypatch.setattr(inbox, "receive", lambda: None)
    waiter = stage.loop.waiter
    came: list[tuple[Any, int]] = [(inbox.link.socket, int(zmq.POLLIN))]
    # idle: the acks go before the wait blocks (input came at once: it is streaming now)
    poller = ScriptedPoller([came])
    waiter.wait(1000, poller)  # type: ignore[arg-type]
    assert (flushed, poller.timeouts) == ([True], [1000])
    # input back to back: it waits ACK_DELAY_MS for more before it acknowledges
    poller = ScriptedPoller([came, [], []])
    waiter.wait(1000, poller)  # type: ignore[arg-type]
    assert (flushed, poller.timeouts) == ([True], [ACK_DELAY_MS])
    # the input paused: the acks go, then the wait blocks
    waiter.wait(1000, poller)  # type: ignore[arg-type]
    assert (flushed, poller.timeouts) == ([True, True], [ACK_DELAY_MS, ACK_DELAY_MS, 1000])


# ---- ErrorPolicy --------------------------------------------------------------------------


class Queue:
    """What ErrorPolicy.decoded reads of an inbox."""

    undecodable = 1


def bad_input() -> dict[str, Any]:
    return {"a": 1, "b": Undecodable("b", "cannot unpickle Thing: import it", [b"\x80junk"])}


def test_an_input_that_did_not_decode_is_dead_lettered_with_its_bytes(tmp_path: Path) -> None:
    counters = Counters()
    letters = DeadLetters(tmp_path, "p")
    policy = ErrorPolicy("p", OnError.DEAD_LETTER, counters, letters)
    queue: Any = Queue()
    assert not policy.decoded(queue, bad_input())
    assert queue.undecodable == 0 and counters.skipped == 1
    (line,) = letters.path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["source"] == "b" and entry["reason"] == "cannot unpickle Thing: import it"
    assert entry["payload_b64"] == ["gGp1bms="]


def test_an_input_that_did_not_decode_fails_the_pipeline_under_on_error_stop(
    tmp_path: Path,
) -> None:
    counters = Counters()
    policy = ErrorPolicy("p", OnError.STOP, counters, DeadLetters(tmp_path, "p"))
    assert policy.fails
    queue: Any = Queue()
    with pytest.raises(SerializationError, match='set "on_error" to skip or dead-letter'):
        policy.decoded(queue, bad_input())
    assert counters.skipped == 0


# ---- ConcurrentLoop on the message loop ----------------------------------------------------

ASYNC_SOURCE = """
import asyncio
n = 0
async def step():
    global n
    n += 1
    mine = n
    await asyncio.sleep(0.002 * (5 - mine % 5))  # later ones finish first
    return mine
"""


def test_async_steps_in_flight_leave_in_order_through_the_message_loop(
    made: list[Worker], tmp_path: Path
) -> None:
    source = build(made, tmp_path, ASYNC_SOURCE)
    ConcurrentLoop(source.loop, concurrency=4).run(None, limit=10)
    assert sent(source) == [(n, n) for n in range(1, 11)]
    assert source.counters.iterations == 10 and source.ended
