"""A worker's sockets (workers/sockets.py), in-process over loopback: HELLO tells the supervisor
where the input is, the idle poller wakes on a signal's byte, the links follow the config."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import zmq

from porch.config import Delivery, Overflow, PipelineConfig
from porch.serializers import get
from workers.deadletter import DeadLetters, LinkLetters
from workers.sockets import WorkerSockets, link_settings

pytestmark = pytest.mark.timeout(10)


def sockets(tmp_path: Path, endpoint: str, **fields: object) -> WorkerSockets:
    config = PipelineConfig(name="mid", scripts=(), **fields)  # type: ignore[arg-type]
    serializer = get(config.serializer)
    letters = LinkLetters(DeadLetters(tmp_path, "mid"), serializer)
    return WorkerSockets(config, endpoint, "127.0.0.1", serializer, letters)


@pytest.fixture
def supervisor() -> zmq.Socket[bytes]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    yield router
    router.close()
    ctx.term()


def test_hello_says_our_pid_instance_and_input_endpoint(
    tmp_path: Path, supervisor: zmq.Socket[bytes]
) -> None:
    endpoint = supervisor.getsockopt(zmq.LAST_ENDPOINT).decode()
    own = sockets(tmp_path, endpoint, source_pipeline_count=1, target_pipeline_names=("a", "b"))
    try:
        own.hello()
        assert supervisor.poll(5000), "no HELLO"
        name, data = supervisor.recv_multipart()
        hello = json.loads(data)
        assert name == b"mid"
        assert hello["type"] == "hello" and hello["pid"] == os.getpid()
        assert hello["instance"] == own.instance and hello["key"] is None
        assert own.inbox is not None and hello["endpoint"] == own.inbox.endpoint
        assert [link.target for link in own.outputs] == ["a", "b"]
    finally:
        own.close()


def test_a_source_has_no_input_and_says_so(tmp_path: Path, supervisor: zmq.Socket[bytes]) -> None:
    endpoint = supervisor.getsockopt(zmq.LAST_ENDPOINT).decode()
    own = sockets(tmp_path, endpoint)
    try:
        own.hello()
        assert supervisor.poll(5000)
        assert own.inbox is None
        assert json.loads(supervisor.recv_multipart()[1])["endpoint"] is None
    finally:
        own.close()


def test_the_idle_poller_wakes_on_a_signal_byte(
    tmp_path: Path, supervisor: zmq.Socket[bytes]
) -> None:
    endpoint = supervisor.getsockopt(zmq.LAST_ENDPOINT).decode()
    own = sockets(tmp_path, endpoint, source_pipeline_count=1)
    wake_r, wake_w = socket.socketpair()
    try:
        poller = own.poller(wake_r)
        assert dict(poller.poll(0)) == {}
        wake_w.send(b"\x0f")
        events = dict(poller.poll(5000))
        assert wake_r in events or wake_r.fileno() in events
    finally:
        wake_r.close()
        wake_w.close()
        own.close()


def test_link_settings_follow_the_config() -> None:
    config = PipelineConfig(name="p", scripts=(), queue_limit=7, overflow=Overflow.DROP_OLDEST,
                            delivery=Delivery.AT_MOST_ONCE)  # fmt: skip
    settings = link_settings(config)
    assert (settings.limit, settings.drop_oldest, settings.acked) == (7, True, False)
