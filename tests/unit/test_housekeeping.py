"""A worker's side of the control channel (workers/housekeeping.py), with a fake channel and
fake links: a stop and a directory are taken, state and health are told, the periodic checks
run, the heartbeat goes once per HEARTBEAT_INTERVAL_S."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from porch.control import (
    HEARTBEAT_INTERVAL_S,
    ControlClient,
    Message,
    MessageType,
    WorkerState,
    decode,
)
from workers.deadletter import DeadLetters
from workers.heartbeat import Counters, Heartbeat
from workers.housekeeping import Housekeeping
from workers.inbox import Inbox
from workers.links import LinkSettings, OutputLink
from workers.scheduler import FanIn
from workers.signals import StopSignals

pytestmark = pytest.mark.timeout(10)


class FakeChannel:
    def __init__(self) -> None:
        self.inbox: list[tuple[MessageType, Message]] = []
        self.sent: list[tuple[MessageType, dict[str, Any]]] = []

    def send(self, kind: MessageType, **fields: Any) -> None:
        self.sent.append((kind, fields))

    def send_encoded(self, data: bytes) -> None:
        kind, message = decode(data)
        self.sent.append((kind, {k: v for k, v in message.items() if k != "type"}))

    def receive(self) -> list[tuple[MessageType, Message]]:
        waiting, self.inbox = self.inbox, []
        return waiting

    def kinds(self) -> list[MessageType]:
        return [kind for kind, _ in self.sent]


@dataclass
class FakeLink:
    target: str
    socket: Any = None
    gone: bool = False
    down: bool = False
    restarting: bool = False
    handshaken: bool = False
    handshakes_failed: int = 0
    withdrawn_since: float | None = None
    dropped: int = 0
    replayed: int = 0
    reconnects: int = 0
    settings: LinkSettings = field(default_factory=lambda: LinkSettings(limit=4))
    events_checked: int = 0

    def data_held(self) -> int:
        return 0

    def full(self) -> bool:
        return False

    def connect(self, endpoint: str, instance: int | None, key: str | None, force: bool) -> None:
        self.socket = endpoint

    def check_events(self, pipeline: str) -> None:
        self.events_checked += 1


def house(
    channel: FakeChannel, links: list[FakeLink], inbox: Any = None, parent_pid: int | None = None,
    name: str = "mid",
) -> tuple[Housekeeping, StopSignals, list[int]]:  # fmt: skip
    stops = StopSignals("mid", 8.5, orphaned=lambda: None)
    acks: list[int] = []
    outputs = cast(list[OutputLink], links)
    beat = Heartbeat(Counters(), outputs, cast(Inbox | None, inbox),
                     cast(DeadLetters, SimpleNamespace(count=0)), None)  # fmt: skip
    keeper = Housekeeping(name, cast(ControlClient, channel), outputs, cast(Inbox | None, inbox),
                          stops, beat, started_s=0.0, parent_pid=parent_pid,
                          read_acks=lambda: acks.append(1))  # fmt: skip
    return keeper, stops, acks


def test_a_stop_from_the_supervisor_takes_the_one_stop_path() -> None:
    channel = FakeChannel()
    keeper, stops, _ = house(channel, [])
    channel.inbox.append((MessageType.STOP, {"type": "stop"}))
    keeper.on_control()
    assert stops.requested


def test_a_directory_points_the_links_and_tells_of_the_sources() -> None:
    channel = FakeChannel()
    sink = FakeLink("sink")
    fanin = FanIn(1)
    fanin.connect("src")
    inbox = SimpleNamespace(fanin=fanin, sources={}, link=SimpleNamespace(handshakes_failed=0))
    keeper, _, _ = house(channel, [sink], inbox)
    pipelines = {
        "sink": {"state": "running", "endpoint": "tcp://127.0.0.1:5"},
        "src": {"state": "failed", "final": True, "targets": ["mid"]},
    }
    channel.inbox.append((MessageType.DIRECTORY, {"type": "directory", "pipelines": pipelines}))

    keeper.on_control()

    assert sink.socket == "tcp://127.0.0.1:5"
    assert keeper.warnings() == "source 'src' failed; waiting for it"


def test_a_replica_knows_its_sources_by_its_pipeline_name() -> None:
    channel = FakeChannel()
    fanin = FanIn(1)  # src never connected: only the directory names it
    inbox = SimpleNamespace(fanin=fanin, sources={}, link=SimpleNamespace(handshakes_failed=0))
    keeper, _, _ = house(channel, [], inbox, name="mid#abc123-1")
    pipelines = {"src": {"state": "failed", "final": True, "targets": ["mid"]}}
    channel.inbox.append((MessageType.DIRECTORY, {"type": "directory", "pipelines": pipelines}))
    keeper.on_control()
    assert keeper.warnings() == "source 'src' failed; waiting for it"


def test_state_and_health_are_told_with_the_warnings() -> None:
    channel = FakeChannel()
    keeper, _, _ = house(channel, [FakeLink("snik")])
    keeper.directory.known = {"sink": "running"}
    keeper.targets.check(60.0, keeper.directory.known)

    keeper.report_state(WorkerState.FAILED, "boom")
    keeper.send_health()

    assert channel.sent[0] == (MessageType.STATE, {"state": "failed", "error": "boom"})
    kind, health = channel.sent[1]
    assert kind is MessageType.HEALTH and health["state"] == "failed"
    assert health["warning"].startswith("target 'snik' not found")
    assert health["targets"] == [{"name": "snik", "state": "not found", "since": None, "held": 0}]


def test_each_tick_checks_acks_and_links_and_the_heartbeat_goes_once_an_interval() -> None:
    channel = FakeChannel()
    link = FakeLink("sink", socket="tcp://x")
    keeper, _, acks = house(channel, [link])

    keeper.tick(100.0)
    keeper.tick(100.0 + HEARTBEAT_INTERVAL_S / 2)
    keeper.tick(100.0 + HEARTBEAT_INTERVAL_S)

    assert len(acks) == 3 and link.events_checked == 3
    assert channel.kinds() == [MessageType.HEALTH, MessageType.HEALTH]


def test_a_heartbeat_notices_a_supervisor_that_is_gone() -> None:
    channel = FakeChannel()
    keeper, stops, _ = house(channel, [], parent_pid=os.getppid() + 1_000_000)
    keeper.tick(1.0)
    assert stops.orphaned and stops.requested


def test_a_tick_after_a_wait_that_saw_no_control_message_does_not_read_the_channel() -> None:
    channel = FakeChannel()
    keeper, stops, acks = house(channel, [])
    channel.inbox.append((MessageType.STOP, {"type": "stop"}))

    keeper.tick(100.0, control=False)  # (a wait that timed out: the channel was empty)
    assert not stops.requested and channel.inbox and len(acks) == 1
    assert channel.kinds() == [MessageType.HEALTH]  # the rest of the tick ran

    keeper.tick(100.0 + HEARTBEAT_INTERVAL_S)
    assert stops.requested and not channel.inbox
