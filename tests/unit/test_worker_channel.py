"""The worker channel and directory publishing (porch/worker_channel.py) in-process: a real
ROUTER on an inproc:// socket with DEALERs standing in for workers; fake processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from structlog.testing import capture_logs

from porch.config import PipelineConfig
from porch.control import MessageType, WorkerState, decode, encode
from porch.directory import decode_directory
from porch.health import HealthReport
from porch.restart import RestartPolicy, RestartTracker
from porch.scaling import process_configs
from porch.worker_channel import DirectoryPublisher, WorkerChannel, apply_report, local_entries
from porch.worker_handle import RestartBook, WorkerHandle

pytestmark = pytest.mark.timeout(30)
RECV_TIMEOUT_MS = 2000


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout = self.stderr = None

    def poll(self) -> int | None:
        return None


def handle(name: str, targets: tuple[str, ...] = (), pid: int = 1) -> WorkerHandle:
    config = PipelineConfig(name=name, scripts=(), target_pipeline_names=targets,
                            path=Path(f"/c/{name}.json"))  # fmt: skip
    h = WorkerHandle(config, RestartBook(RestartTracker(RestartPolicy.NEVER)))
    h.started(FakePopen(pid), 0.0)  # type: ignore[arg-type]
    return h


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def worker(ctx: zmq.Context[zmq.Socket[bytes]], name: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, name.encode())
    sock.connect("inproc://workers")
    return sock


def test_reports_of_known_alive_workers_are_read_and_garbage_is_skipped(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    channel = WorkerChannel(ctx, "inproc://workers")
    p = handle("p")
    a, stranger = worker(ctx, "p"), worker(ctx, "nobody")
    stranger.send(encode(MessageType.HELLO, endpoint="tcp://x:1"))
    a.send(b"not json")
    a.send(encode(MessageType.HELLO, endpoint="tcp://127.0.0.1:5000", instance=7))
    assert channel.socket.poll(RECV_TIMEOUT_MS)
    with capture_logs() as logs:
        reports = []
        while len(reports) < 1:
            channel.socket.poll(RECV_TIMEOUT_MS)
            reports += list(channel.receive({"p": p}.get))
    assert [(h.name, kind) for h, kind, _ in reports] == [("p", MessageType.HELLO)]
    assert any(e["event"] == "bad_control_message" for e in logs)
    channel.send("p", encode(MessageType.STOP))
    assert a.poll(RECV_TIMEOUT_MS) and decode(a.recv())[0] is MessageType.STOP
    channel.close()


def test_an_unchanged_health_report_is_not_decoded_again(
    ctx: zmq.Context[zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker sends the same report every second: the channel gives its decoded
    message again (the same dict), the handle its report, and the heartbeat and the rate
    are taken each time; a report that differs is decoded."""
    channel = WorkerChannel(ctx, "inproc://workers")
    p = handle("p")
    a = worker(ctx, "p")
    decoded: list[bytes] = []
    monkeypatch.setattr(
        "porch.worker_channel.decode", lambda data: decoded.append(data) or decode(data)
    )
    reports = [
        HealthReport(iterations=10),
        HealthReport(iterations=10),
        HealthReport(iterations=12),
    ]
    messages = []
    for at, report in enumerate(reports, start=1):
        a.send(encode(MessageType.HEALTH, **report.encode()))
        assert channel.socket.poll(RECV_TIMEOUT_MS)
        [(h, kind, message)] = list(channel.receive({"p": p}.get))
        assert h is p and kind is MessageType.HEALTH
        apply_report(p, kind, message, float(at))
        messages.append(message)
        assert p.health.report == report and p.process is not None
        assert p.process.heartbeat_s == float(at)
    assert len(decoded) == 2 and messages[0] is messages[1] and messages[2] is not messages[1]
    assert p.health.rate_per_s == 2.0
    channel.close()


def test_a_hello_a_state_and_health_update_the_handle() -> None:
    p = handle("p")
    hello = {"endpoint": "tcp://h:1", "endpoints": ["tcp://h:1", 3], "instance": 7, "key": "k2"}
    with capture_logs() as logs:
        assert apply_report(p, MessageType.HELLO, hello, 1.0, key_id="k1")
    assert (p.announced.endpoint, p.announced.endpoints, p.announced.instance) == (
        "tcp://h:1", ("tcp://h:1",), 7)  # fmt: skip
    assert any(e["event"] == "worker_key_differs" for e in logs)
    assert not apply_report(p, MessageType.STATE, {"state": "running"}, 2.0)
    assert apply_report(p, MessageType.STATE, {"state": "failed", "error": "boom"}, 3.0)
    assert p.state is WorkerState.FAILED and p.last_error == "boom"
    assert not apply_report(p, MessageType.STATE, {"state": "no such"}, 3.5)
    apply_report(p, MessageType.HEALTH, HealthReport(iterations=10).encode(), 4.0)
    apply_report(p, MessageType.HEALTH, HealthReport(iterations=30).encode(), 6.0)
    assert p.health.rate_per_s == 10.0 and p.health.total("iterations") == 30
    assert p.process is not None and p.process.heartbeat_s == 6.0


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, object]]] = []

    def __call__(self, name: str, data: bytes) -> None:
        self.messages.append((name, decode(data)[1]))

    def names(self) -> list[str]:
        return [n for n, _ in self.messages]


def test_each_greeted_worker_gets_the_entries_it_uses_once() -> None:
    workers = {"a": handle("a", ("b",)), "b": handle("b"), "c": handle("c")}
    sent = Sent()
    publisher = DirectoryPublisher(sent, workers, key_id="k1")
    publisher.changed(10.0)
    assert sent.messages == []  # nobody said hello: it would be dropped
    for h in workers.values():
        publisher.hello(h)
    publisher.changed(11.0)
    assert sorted(sent.names()) == ["a", "b", "c"]
    by_name = {n: decode_directory(m) for n, m in sent.messages}
    assert sorted(by_name["a"].pipelines) == ["a", "b"] and by_name["a"].names == ("a", "b", "c")
    assert sorted(by_name["b"].pipelines) == ["a", "b"]  # its source
    assert sorted(by_name["c"].pipelines) == ["c"]
    assert by_name["c"].pipelines["c"].key == "k1"
    sent.messages.clear()
    workers["b"].state = WorkerState.RUNNING
    publisher.changed(12.0)
    assert sorted(sent.names()) == ["a", "b"]  # c's part did not change


def test_a_burst_of_changes_is_coalesced_into_one_directory() -> None:
    workers = {"a": handle("a")}
    sent = Sent()
    publisher = DirectoryPublisher(sent, workers, gap_s=0.02)
    publisher.hello(workers["a"])
    publisher.changed(1.0)
    workers["a"].state = WorkerState.RUNNING
    publisher.changed(1.001)
    workers["a"].state = WorkerState.FINISHED
    publisher.changed(1.002)
    assert len(sent.messages) == 1 and publisher.due_s == pytest.approx(1.02)
    publisher.flush(1.01)
    assert len(sent.messages) == 1
    publisher.flush(1.02)
    assert len(sent.messages) == 2 and publisher.due_s is None
    assert decode_directory(sent.messages[-1][1]).pipelines["a"].state is WorkerState.FINISHED


def test_a_new_worker_instance_gets_nothing_before_its_own_hello() -> None:
    workers = {"a": handle("a")}
    sent = Sent()
    publisher = DirectoryPublisher(sent, workers)
    publisher.hello(workers["a"])
    publisher.changed(1.0)
    workers["a"].started(FakePopen(2), 2.0)  # type: ignore[arg-type]
    publisher.changed(2.0)
    assert len(sent.messages) == 1
    publisher.hello(workers["a"])
    publisher.changed(3.0)
    assert len(sent.messages) == 2 and "names" in sent.messages[-1][1]  # everything again


def test_discovery_announces_local_pipelines_with_their_targets() -> None:
    a = handle("a", ("b",))
    apply_report(a, MessageType.HELLO, {"endpoint": "tcp://h:1", "instance": 3}, 1.0)
    [entry] = local_entries([a])
    assert (entry.name, entry.endpoint, entry.instance, entry.targets, entry.final) == (
        "a", "tcp://h:1", 3, ("b",), False)  # fmt: skip


def replicas_of(name: str, count: int, targets: tuple[str, ...] = (), **fields: object
                ) -> list[WorkerHandle]:  # fmt: skip
    config = PipelineConfig(name=name, scripts=(), target_pipeline_names=targets,
                            replicas=count, replicated=True, path=Path(f"/c/{name}.json"),
                            **fields)  # type: ignore[arg-type]  # fmt: skip
    made = []
    for pid, process in enumerate(process_configs(config, "abc123"), start=100):
        h = WorkerHandle(process, RestartBook(RestartTracker(RestartPolicy.NEVER)))
        h.started(FakePopen(pid), 0.0)  # type: ignore[arg-type]
        made.append(h)
    return made


def test_replicas_are_one_entry_per_process_and_each_worker_gets_its_pipelines_replicas() -> None:
    hashers = replicas_of("hash", 2, ("sink",), ordered=True, partition_by="key")
    handles = [handle("src", ("hash",)), *hashers, handle("sink"), handle("other")]
    workers = {h.name: h for h in handles}
    sent = Sent()
    publisher = DirectoryPublisher(sent, workers)
    for h in handles:
        publisher.hello(h)
    publisher.changed(1.0)
    by_name = {n: decode_directory(m).pipelines for n, m in sent.messages}
    assert sorted(by_name) == ["hash#abc123-0", "hash#abc123-1", "other", "sink", "src"]
    # a sender gets every replica of its target, each with the config's ordered/partition_by
    assert sorted(by_name["src"]) == ["hash#abc123-0", "hash#abc123-1", "src"]
    entry = by_name["src"]["hash#abc123-1"]
    assert entry.ordered and entry.partition_by == "key" and entry.targets == ("sink",)
    # a replica gets itself, its targets, and the entries that target its pipeline
    assert sorted(by_name["hash#abc123-0"]) == ["hash#abc123-0", "sink", "src"]
    # a target of a replicated pipeline gets every replica as a source
    assert sorted(by_name["sink"]) == ["hash#abc123-0", "hash#abc123-1", "sink"]
    assert not by_name["src"]["src"].ordered and by_name["src"]["src"].partition_by is None
    # discovery announces each replica process, with the same fields
    announced = {e.name: e for e in local_entries(handles)}
    assert announced["hash#abc123-0"].ordered and announced["hash#abc123-0"].partition_by == "key"
    assert not announced["src"].ordered


def test_a_replica_that_is_forgotten_leaves_the_directory() -> None:
    hashers = replicas_of("hash", 3)
    src = handle("src", ("hash",))
    workers = {h.name: h for h in [src, *hashers]}
    sent = Sent()
    publisher = DirectoryPublisher(sent, workers)
    publisher.hello(src)
    publisher.changed(1.0)
    del workers["hash#abc123-2"]
    publisher.forget("hash#abc123-2")
    publisher.changed(2.0)
    assert sorted(decode_directory(sent.messages[-1][1]).pipelines) == [
        "hash#abc123-0", "hash#abc123-1", "src"]  # fmt: skip


def test_a_run_folder_too_long_for_the_channel_socket_is_a_clear_error() -> None:
    from porch.errors import UsageError

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with pytest.raises(UsageError, match=r"over the 107 .* set TMPDIR to a shorter"):
            WorkerChannel(ctx, "ipc:///tmp/" + "d" * 100 + "/workers")
    finally:
        ctx.term()
