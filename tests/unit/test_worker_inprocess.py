"""A Worker run in the test's own process (dramatiq's in-process Worker tests), its supervisor a
ROUTER socket on loopback: the life it tells (HELLO, states, the last health report), a stop
from the supervisor, and the error of a script that fails. No subprocess."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from porch.config import PipelineConfig
from workers.worker import Worker, WorkerOptions

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("clean_process_state")]

DEADLINE_MS = 10_000


class Supervisor:
    """The supervisor's end of the control channel, in the test."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()

    def next(self) -> dict[str, Any]:
        assert self.router.poll(DEADLINE_MS), "the worker said nothing"
        _, data = self.router.recv_multipart()
        message: dict[str, Any] = json.loads(data)
        return message

    def until(self, kind: str, **fields: object) -> list[dict[str, Any]]:
        """Every message up to the first of `kind` with `fields` (that one last)."""
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                return seen

    def send(self, to: str, kind: str) -> None:
        self.router.send_multipart([to.encode(), json.dumps({"type": kind}).encode()])

    def close(self) -> None:
        self.router.close()
        self.ctx.term()


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor()
    yield sup
    sup.close()


def worker(tmp_path: Path, sup: Supervisor, script: str, iterations: int | None) -> Worker:
    path = tmp_path / "source.py"
    path.write_text(script)
    config = PipelineConfig(name="src", scripts=(path,))
    options = WorkerOptions(control=sup.endpoint, iterations=iterations, state_dir=tmp_path,
                            stop_timeout_s=4.0)  # fmt: skip
    return Worker(config, options)


def states(messages: list[dict[str, Any]]) -> list[str]:
    return [m["state"] for m in messages if m["type"] == "state"]


def test_a_source_tells_its_whole_life_and_its_last_count(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    source = worker(tmp_path, supervisor, "def step():\n    return 1\n", iterations=25)

    assert source.run() == 0

    seen = supervisor.until("state", state="finished")
    assert seen[0]["type"] == "hello" and seen[0]["endpoint"] is None
    assert states(seen) == ["starting", "running", "stopping", "finished"]
    (last,) = [m for m in seen if m["type"] == "health" and m["state"] == "stopping"]
    assert last["iterations"] == 25 and last["msgs_out"] == 0  # no targets: nothing sent


def test_a_stop_from_the_supervisor_ends_a_source_that_would_run_for_ever(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    source = worker(tmp_path, supervisor, "def step():\n    return 1\n", iterations=None)
    codes: list[int] = []
    running = threading.Thread(target=lambda: codes.append(source.run()))
    running.start()
    try:
        supervisor.until("state", state="running")
        supervisor.send("src", "stop")
        seen = supervisor.until("state", state="stopped")
    finally:
        source.request_stop("test teardown")
        running.join(DEADLINE_MS / 1000)
    assert codes == [0]
    assert states(seen) == ["stopping", "stopped"]


def test_a_failing_script_fails_the_worker_with_its_error(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    source = worker(tmp_path, supervisor, "def step():\n    raise ValueError('bad input')\n", 5)

    assert source.run() == 1

    seen = supervisor.until("state", state="failed")
    assert "ValueError: bad input" in seen[-1]["error"]
    assert states(seen) == ["starting", "running", "stopping", "failed"]


def test_an_idle_wait_reads_the_control_channel_only_when_a_message_woke_it(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    source = worker(tmp_path, supervisor, "def step():\n    return 1\n", iterations=None)
    try:
        source.sockets.hello()
        supervisor.until("hello")
        reads: list[int] = []
        on_control = source.house.on_control

        def counted() -> None:
            reads.append(1)
            on_control()

        source.house.on_control = counted  # type: ignore[method-assign]
        source.loop.waiter.wait(20)  # times out: its tick (and heartbeat) does not read
        assert reads == [] and supervisor.until("health")
        supervisor.send("src", "stop")
        source.loop.waiter.wait(DEADLINE_MS)  # woken by the stop: read once, taken
        assert reads == [1] and source.stopping
    finally:
        source.sockets.close()
