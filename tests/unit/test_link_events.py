"""Output and input links react to their sockets' events (issue 20), in-process over loopback:
failed CURVE handshakes are counted and logged on both ends; a dead connection is reopened."""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from structlog.testing import capture_logs

from porch.control import WorkerState
from porch.directory import DirectoryEntry
from porch.security import KeyRing, LinkSecurity, new_key
from porch.serializers import get
from porch.wire import FrameKind, HeaderEncoder, decode_ack, decode_prefix
from workers import linkpeer
from workers.inbox import Inbox
from workers.links import InputLink, LinkSettings, OutputLink
from workers.replicas import follow

pytestmark = pytest.mark.timeout(30)

Context = zmq.Context[zmq.Socket[bytes]]
DEADLINE_S = 10.0


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


def serving(ctx: Context) -> tuple[LinkSecurity, InputLink]:
    security = LinkSecurity(KeyRing((new_key(),)))
    security.start_authenticator(ctx)
    return security, InputLink(ctx, "127.0.0.1", 16, security)


def until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_client_without_an_accepted_key_is_denied_counted_and_logged(ctx: Context) -> None:
    security, link = serving(ctx)
    client = ctx.socket(zmq.DEALER)
    public, secret = zmq.curve_keypair()
    client.setsockopt(zmq.CURVE_SERVERKEY, security.server_keys.public)
    client.setsockopt(zmq.CURVE_PUBLICKEY, public)
    client.setsockopt(zmq.CURVE_SECRETKEY, secret)
    client.setsockopt(zmq.LINGER, 0)
    try:
        with capture_logs() as logged:
            client.connect(link.endpoint)
            # Not blocking: once the denial has closed the connection (before this line, on a
            # loaded machine) a DEALER has no pipe and a blocking send waits forever.
            with contextlib.suppress(zmq.Again):
                client.send(b"hello", zmq.NOBLOCK)

            def refused() -> bool:
                link.check_events("vault")
                return security.denied > 0 and link._refused > 0

            until(refused, "the ZAP denial")
        assert link.handshakes_failed == 0  # counted once, as `denied`
        events = [e for e in logged if e["event"] == "handshake_rejected"]
        assert events and events[0]["reason"] == "auth", logged
    finally:
        client.close()
        link.close()
        security.stop()


def test_a_target_serving_a_key_we_lack_fails_on_both_ends(ctx: Context) -> None:
    security, link = serving(ctx)
    ours = LinkSecurity(KeyRing((new_key(),)))  # a client only: no authenticator needed
    output = OutputLink(ctx, "vault", HeaderEncoder(1, 5, "thief"), LinkSettings(), security=ours)
    try:
        with capture_logs() as logged:
            output.connect(link.endpoint, 9, security.key_id)  # a key id our ring lacks

            def failed() -> bool:
                output.check_events("thief")
                link.check_events("vault")
                return output.handshakes_failed > 0 and link.handshakes_failed > 0

            until(failed, "a failed handshake on both ends")
        assert not output.handshaken
        sent = [e for e in logged if e["event"] == "handshake_failed"]
        assert sent and sent[0]["target"] == "vault" and sent[0]["key"] == security.key_id
        assert "copy the newest key file" in sent[0]["hint"]
        got = [e for e in logged if e["event"] == "handshake_rejected"]
        assert got and got[0]["reason"] != "auth", logged
    finally:
        output.close(linger_ms=0)
        link.close()
        security.stop()


def test_a_dead_connection_is_reopened_and_what_it_held_is_sent_again(ctx: Context) -> None:
    """The target's side of the connection dies (a cut the heartbeats noticed, here a closed
    socket): the link reopens at once and sends everything unacknowledged again."""
    link = InputLink(ctx, "127.0.0.1", 16)
    endpoint = link.endpoint
    headers = HeaderEncoder(1, 5, "source")
    output = OutputLink(ctx, "sink", headers, LinkSettings())
    output.connect(endpoint, 9)
    for n in range(3):
        assert output.offer(FrameKind.DATA, [f"v{n}".encode()])
    output.flush()
    got: list[list[Any]] = []

    def received(wanted: int, into: InputLink) -> Callable[[], bool]:
        def check() -> bool:
            output.check_events("source")
            got.extend(into.receive(16))
            return len(got) >= wanted

        return check

    until(received(2, link), "hello and the data (one batch)")  # nothing acknowledged
    until(lambda: output.check_events("source") or output.handshaken, "the handshake")
    first = [[bytes(f) for f in m[1:]] for m in got]
    link.socket.close(linger=0)  # the connection dies; the target comes back where it was
    link.close()
    again = InputLink.__new__(InputLink)  # the same endpoint, bound again
    again.socket = ctx.socket(zmq.ROUTER)
    again.socket.setsockopt(zmq.LINGER, 0)
    again.monitor = None

    def bound() -> bool:  # ZeroMQ closes the old listener in its I/O thread, a moment later
        try:
            again.socket.bind(endpoint)
        except zmq.ZMQError:
            return False
        return True

    until(bound, "the endpoint free again")
    got.clear()
    try:
        until(received(len(first), again), "hello and the data again")
        assert output.reconnects == 1
        assert [[bytes(f) for f in m[1:]] for m in got] == first  # HELLO, then the replay
        assert decode_prefix(first[0][0])[0].kind is FrameKind.HELLO
    finally:
        output.close(linger_ms=0)
        again.socket.close(linger=0)


def test_a_target_the_directory_says_is_down_stays_down_when_its_connection_dies(
    ctx: Context,
) -> None:
    """The directory says the target failed for good (its process exits), then the closed
    connection is noticed: the link reopens (in case it comes back where it was) but stays
    down, so a stopping sender does not wait its whole stop deadline for a target that is
    gone (seen with a replicated target: `porch run` took 10 s to end after a replica failed)."""
    link = InputLink(ctx, "127.0.0.1", 16)
    output = OutputLink(ctx, "sink", HeaderEncoder(1, 5, "source"), LinkSettings())
    output.connect(link.endpoint, 9)
    assert output.offer(FrameKind.DATA, [b"v"])
    output.flush()
    until(lambda: output.check_events("source") or output.handshaken, "the handshake")
    follow(output, DirectoryEntry(WorkerState.FAILED, None, final=True))  # the directory
    assert output.down
    link.socket.close(linger=0)  # its process exits: the connection dies
    link.close()
    try:
        until(lambda: output.check_events("source") or output.reconnects, "the reopen")
        assert output.down
    finally:
        output.close(linger_ms=0)


def test_a_link_waiting_for_acks_on_a_live_connection_says_hello_again(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target reads our messages but sends its acks to another connection of ours (an
    older one whose HELLO it read last, after a reconnect while it was not reading): a full
    link waits for acks forever on a healthy connection. A link that holds sent messages and
    heard no ack for HELLO_AGAIN_S says HELLO again, which brings the acks back here; not
    after its BYE (the target lets a stopping source go)."""
    monkeypatch.setattr(linkpeer, "HELLO_AGAIN_S", 0.1)
    inbox = Inbox(ctx, "127.0.0.1", name="sink", instance=99, expected=1, any_input=False,
                  serializer=get("pickle"), limit=8)  # fmt: skip
    headers = HeaderEncoder(1, 5, "source")
    output = OutputLink(ctx, "sink", headers, LinkSettings(limit=3))
    output.connect(inbox.endpoint, 99)
    stale = ctx.socket(zmq.DEALER)
    stale.linger = 0
    try:
        for n in range(3):
            assert output.offer(FrameKind.DATA, [pickle.dumps(n)])
        output.flush()

        def queued() -> bool:
            inbox.receive()
            return inbox.fanin.depth() == 3

        until(queued, "the values")
        route = inbox.sources["source"].route
        stale.connect(inbox.endpoint)
        stale.send(headers.encode(FrameKind.HELLO, 0))  # read late: the acks go there
        until(lambda: inbox.receive() or inbox.sources["source"].route != route, "stale hello")
        for _ in range(3):
            inbox.commit(inbox.take()[1])
        inbox.flush_acks()

        def acked() -> bool:
            output.check_events("source")
            output.read_acks(decode_ack)
            inbox.receive()  # reads the HELLO again, acknowledges what it processed
            return output.acked_seq == 3

        until(acked, "the acks on the link's connection")
        sent = output.conn.socket
        assert output.offer(FrameKind.DATA, [pickle.dumps(3)])  # held: never processed
        output.say_bye()
        until(lambda: inbox.receive() or "source" in inbox.departed, "the bye")
        hellos = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            output.check_events("source")
            for message in inbox.link.receive(16):
                hellos.append(decode_prefix(message[1])[0].kind is FrameKind.HELLO)
        assert output.conn.socket is sent and not any(hellos)
    finally:
        stale.close()
        output.close(linger_ms=0)
        inbox.close()


def test_hello_again_only_after_a_quiet_period_from_the_first_look(ctx: Context) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    output = OutputLink(ctx, "sink", HeaderEncoder(1, 5, "source"), LinkSettings())
    output.connect(f"tcp://127.0.0.1:{port}", 9)
    kinds: list[FrameKind] = []

    def read(timeout_ms: int) -> None:
        while router.poll(timeout_ms):
            kinds.append(decode_prefix(router.recv_multipart()[1])[0].kind)

    try:
        assert output.offer(FrameKind.DATA, [b"v"])
        output.flush()
        until(lambda: output.check_events("source") or output.handshaken, "the handshake")
        output.check_events("source")
        read(200)
        assert kinds == [FrameKind.HELLO, FrameKind.DATA]  # not at once: nothing is late yet
        linkpeer.hello_again(output, time.monotonic() + linkpeer.HELLO_AGAIN_S)
        read(200)
        assert kinds[2:] == [FrameKind.HELLO]
    finally:
        output.close(linger_ms=0)
        router.close()
