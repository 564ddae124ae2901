"""Data links: one bound input socket per worker, one output link per target.

Every target gets its own DEALER socket, so every target gets every message and a slow or
dead target never makes another one receive duplicates (DPorch's round-robin PUSH did).

An output link is reliable: each message has a per-link sequence number and stays in the link's
outbox until the target acknowledges that it has processed it (cumulative acks). The outbox is
bounded in messages and bytes (backpressure); when the target comes back as a new instance, the
whole outbox is replayed in order. The receiver drops what it has already seen.

Whatever leaves the outbox (acknowledged, handed to ZeroMQ under at-most-once, dropped under
drop_oldest, dead-lettered, or held for a target that finished) leaves it from the head, in
sequence order: `released` is the newest sequence number of all that is gone, which is what a
durable outbox may delete up to.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from porch import logs
from porch.localsock import IPC_PREFIX, is_local
from porch.security import LinkSecurity
from porch.wire import (
    HELLO_NO_ACKS,
    INLINE_MAX,
    FrameKind,
    HeaderEncoder,
    Origin,
    Run,
    Stream,
    decode_ack,
    encode_batch,
    run_origins,
    runs_of,
)

log = logs.get("porch.worker")

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
LINGER_MS = 2000
# Dead connections are found by ZeroMQ heartbeats, not by TCP's retransmit backoff (which grows
# to tens of seconds during a cut): a PING every second, the connection is dropped (and the link
# reopened, replaying what is unacknowledged) when nothing came back for HEARTBEAT_TIMEOUT_MS.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 4000
RECONNECT_IVL_MAX_MS = 1000  # reconnect attempts back off to at most one a second...
CONNECT_TIMEOUT_MS = 1000  # ...and a SYN left unanswered (link down) is retried, not waited on
HANDSHAKE_LOG_INTERVAL_S = 30.0  # a failing handshake is logged at most this often per link
HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
LINK_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
for _event in HANDSHAKE_FAILED:
    LINK_EVENTS |= _event


def set_heartbeats(sock: Socket, pings: bool) -> None:
    """Bounded reconnect backoff on a data socket (before connect/bind), and with `pings` the
    sender's ZeroMQ heartbeats.

    Only an acknowledged sender pings. A receiver that falls behind stops reading its TCP
    connection (ZeroMQ's backpressure), so it reads no PING and answers no PONG for as long as
    it is behind: a ping timeout on a link with no acks flowing back (at-most-once), or a TTL or
    ping timeout on the receiving side, would drop a healthy, merely busy connection and, on an
    at-most-once link, everything queued in it (make bench's at-most-once chain lost 14-33% of
    its values). An at-least-once sender hears the acks as traffic, and a false timeout there
    only reopens the link and replays what was not acknowledged (duplicates die at the
    receiver)."""
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    if pings:
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


def monitor_events(monitor: Socket | None) -> list[dict[str, Any]]:
    """Every socket event waiting on a monitor socket (non-blocking)."""
    found: list[dict[str, Any]] = []
    while monitor is not None:
        try:
            found.append(dict(recv_monitor_message(monitor, zmq.NOBLOCK)))
        except zmq.Again:
            break
    return found


def close_monitor(sock: Socket, monitor: Socket | None) -> None:
    """Stop monitoring `sock` and close the monitor socket."""
    if monitor is None:
        return
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(linger=0)


ACK_LINGER_MS = 500
MAX_DELIVERY_ATTEMPTS = 3
MAX_BATCH = 256  # messages coalesced into one frame while the worker is busy
MAX_BATCH_BYTES = 256 * 1024
BATCH_ITEM_MAX = (
    16 * 1024
)  # larger payloads travel alone  # a message its target crashed on this often is dead-lettered


class InputLink:
    """The worker's one input socket: a ROUTER bound on an ephemeral TCP port, and on a Unix
    socket in its supervisor's run folder for that supervisor's pipelines (porch/localsock.py)."""

    def __init__(
        self,
        ctx: Context,
        host: str,
        hwm: int,
        security: LinkSecurity | None = None,
        local: Path | None = None,
    ) -> None:
        self.socket: Socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        set_heartbeats(self.socket, pings=False)
        # The Unix socket is bound before CURVE is set: a listener keeps the socket's options
        # of its bind, so it takes plain ZMTP (the folder's permissions keep others out) while
        # every TCP listener bound below is a CURVE server behind ZAP.
        self.local_endpoint: str | None = None
        if local is not None:
            try:
                self.socket.bind(f"{IPC_PREFIX}{local}")
                self.local_endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
            except zmq.ZMQError as exc:  # our sources then use TCP, as other supervisors' do
                log.warning("local_link_unavailable", path=str(local), reason=str(exc),
                            detail="local pipelines connect over TCP")  # fmt: skip
        if security is not None:
            security.serve(self.socket)  # CURVE server behind ZAP, set before the bind
        failed = 0
        for event in HANDSHAKE_FAILED:
            failed |= event
        # handshakes that fail before ZAP is asked (a client of another key): counted, logged
        self.monitor: Socket | None = self.socket.get_monitor_socket(failed)
        self.handshakes_failed = 0  # not counting ZAP denials (LinkSecurity.denied has those)
        self._next_log = 0.0
        self._refused = 0  # every refused handshake, ZAP denials included (for the log)
        # one endpoint per data interface ("a,b"): each peer uses the one it can reach
        self.endpoints: list[str] = []
        for each in host.split(","):
            self.socket.bind(f"tcp://{each}:0")
            self.endpoints.append(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self.endpoint: str = self.endpoints[0]

    def check_events(self, pipeline: str) -> None:
        """Count (and log, at most every HANDSHAKE_LOG_INTERVAL_S) failed handshakes."""
        for event in monitor_events(self.monitor):
            reason = HANDSHAKE_FAILED.get(event["event"])
            if reason is None:
                continue
            if reason != "auth":  # ZAP denials are counted by LinkSecurity (`denied`)
                self.handshakes_failed += 1
            self._refused += 1
            now = time.monotonic()
            if now >= self._next_log:
                self._next_log = now + HANDSHAKE_LOG_INTERVAL_S
                hint = (
                    "a client whose key is not in this host's key file was refused"
                    if reason == "auth"
                    else "a source uses another cluster key than this worker serves with "
                    "(key files differ between hosts?)"
                )
                log.warning("handshake_rejected", pipeline=pipeline, reason=reason,
                            endpoint=self.endpoint, total=self._refused,
                            hint=hint)  # fmt: skip

    def receive(self, max_messages: int) -> list[list[Any]]:
        """Up to `max_messages` waiting messages (non-blocking), routing id first.

        Frames after the header frame (large payloads, pickle's out-of-band buffers) are not
        copied: they arrive as memoryviews of ZeroMQ's own message buffers.
        """
        out: list[list[Any]] = []
        sock = self.socket
        for _ in range(max_messages):
            try:
                route = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            message: list[Any] = [route]
            while sock.getsockopt(zmq.RCVMORE):
                message.append(sock.recv() if len(message) < 2 else sock.recv(copy=False).buffer)
            out.append(message)
        return out

    def ack(self, route: bytes, header: bytes) -> None:
        """Send an acknowledgement back to the sender on `route`; never block."""
        # a lost ack is repaired by the next cumulative one
        with contextlib.suppress(zmq.ZMQError):
            self.socket.send_multipart([route, header], zmq.NOBLOCK)

    def close(self) -> None:
        """Close, giving the last acknowledgements a moment to leave (a lost final ack would
        make the sender believe delivered messages were dropped)."""
        close_monitor(self.socket, self.monitor)
        self.monitor = None
        self.socket.close(linger=ACK_LINGER_MS)


@dataclass(frozen=True)
class LinkSettings:
    """How one pipeline's output links behave (from its config)."""

    limit: int = 1000  # messages held per link until acknowledged
    limit_bytes: int = 64 * 1024 * 1024
    drop_oldest: bool = False  # when full: drop the oldest held message instead of blocking
    acked: bool = True  # at-least-once; False: a message is done once ZeroMQ has it


@dataclass
class Outgoing:
    """One message (or one batch of small messages) held until it is acknowledged."""

    seq: int  # the last sequence number it carries
    frames: list[Any]
    size: int
    kind: FrameKind
    first: int = 0  # a batch: the first sequence number it carries
    parts: list[bytes] | None = None  # a batch: its messages' payloads, to split for a replay
    runs: list[Run] | None = None  # its messages' origins (see porch.wire)

    @property
    def count(self) -> int:
        """How many messages it carries."""
        return self.seq - self.first + 1 if self.parts is not None else 1


def _size(frames: list[Any]) -> int:
    return sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)


class OutputLink:
    """The link to one target: a DEALER once the target's endpoint is known, a queue before."""

    def __init__(
        self,
        ctx: Context,
        target: str,
        headers: HeaderEncoder,
        settings: LinkSettings,
        on_dead_letter: Callable[[str, Outgoing, str], None] | None = None,
        *,
        security: LinkSecurity | None = None,
    ) -> None:
        self.ctx = ctx
        self.security = security
        self.target = target
        self.headers = headers
        self.settings = settings
        self._limit, self._limit_bytes = settings.limit, settings.limit_bytes
        self.on_dead_letter = on_dead_letter
        self.endpoint: str | None = None
        self.instance: int | None = None
        self.socket: Socket | None = None
        self.outbox: deque[Outgoing] = deque()
        self.unsent = 0  # how many of the newest outbox entries ZeroMQ has not been given
        self.held = 0  # messages in the outbox (a batch counts as its messages)
        self.bytes_held = 0
        self.batch: list[bytes] = []  # small payloads waiting to go out as one frame
        self.batch_bytes = 0
        self.batch_origins: list[Any] = []  # the origin of each batched payload (see offer)
        self.stream: Stream | None = None  # whose origin seqs come as bare ints (see offer)
        self.seq = 0
        self.acked_seq = 0
        self.gone = False  # the target finished its stream: nothing more will be accepted
        self.down = False  # the directory says the target is not running now
        self.restarting = False  # ...and that its supervisor is starting it again
        self.released = 0  # every seq up to this one has left the outbox for good
        self.dropped = 0
        self.replayed = 0
        self.bye_pending = False  # a BYE waits for the unsent messages it must follow
        self.end_unconfirmed = False  # at-most-once: our EOS or BYE went out, not yet confirmed
        self._end_lost = False  # ...and its connection dropped: send it again on the next one
        self._attempts: dict[int, int] = {}
        self.key_id: str | None = None
        self.monitor: Socket | None = None
        self.handshaken = False  # the current socket completed a handshake
        self.withdrawn_since: float | None = None  # wall clock: discovery lost the target then
        self.reconnects = 0  # reopened after a dead connection or a rediscovery
        self.handshakes_failed = 0
        self._next_handshake_log = 0.0

    # ---- connection ----------------------------------------------------------------------

    def connect(
        self,
        endpoint: str,
        instance: int | None = None,
        key_id: str | None = None,
        *,
        force: bool = False,
    ) -> None:
        """(Re)connect to the target, say hello, and send everything not yet acknowledged.

        `force` reopens even an unchanged endpoint: after a dead connection or a rediscovery,
        a fresh socket connects at once instead of waiting on TCP's or ZeroMQ's backoff; what
        the old connection may have lost is sent again (the target drops what it has seen).
        """
        same = (endpoint, instance, key_id) == (self.endpoint, self.instance, self.key_id)
        # at-most-once has nothing to send again, and a new socket would drop what ZeroMQ
        # still queues: its socket reconnects by itself (heartbeats, bounded backoff)
        if same and self.socket is not None and not (force and self.settings.acked):
            self.withdrawn_since = None
            return
        if self.socket is not None:
            # the old instance's last acks may still wait unread: a graceful restart of the
            # target acknowledged them, and replaying those messages would duplicate them
            self.read_acks(decode_ack)
        restarted = (
            self.instance is not None
            and instance != self.instance
            and len(self.outbox) > self.unsent
        )
        reopened = self.socket is not None
        self._close_socket(linger_ms=0)
        sock: Socket = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, self.settings.limit + 16)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        set_heartbeats(sock, pings=self.settings.acked)
        if self.security is not None and not is_local(endpoint):
            self.security.client(sock, key_id)  # CURVE client of the target's key
        self.monitor = sock.get_monitor_socket(LINK_EVENTS)
        self.handshaken = False
        sock.connect(endpoint)
        # an at-most-once sender must not be acked: unread acks in its TCP receive buffer
        # would make the kernel reset the connection (losing the tail) when it exits
        sock.send(self.headers.encode(FrameKind.HELLO, 0 if self.settings.acked else HELLO_NO_ACKS))
        self.socket, self.endpoint, self.instance, self.key_id = sock, endpoint, instance, key_id
        self.gone = self.down = False
        self.withdrawn_since = None
        if restarted:
            self._split_batches()  # the target acks one by one after a restart: keep it exact
            self.replayed += self.held
            self._count_attempt()
        elif reopened:
            self.reconnects += 1
        self.unsent = len(self.outbox)
        if self.end_unconfirmed and not self.outbox:  # a new connection: our BYE again
            self.bye_pending = True
        self.pump()

    def withdraw(self, since: float) -> None:
        """Discovery lost the target (its host fell silent): hold everything until it is back.

        The socket stays: ZeroMQ keeps trying the old endpoint, and a rediscovery reopens it.
        """
        if self.withdrawn_since is None:
            self.withdrawn_since = since

    def check_events(self, pipeline: str) -> None:
        """React to the socket's events: reopen a connection that died (heartbeats), count and
        log failed handshakes (at most every HANDSHAKE_LOG_INTERVAL_S)."""
        for event in monitor_events(self.monitor):
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshaken = True
                if self._end_lost:
                    self._send_end_again()
            elif kind == zmq.EVENT_DISCONNECTED:
                lost, self.handshaken = self.handshaken, False  # ZeroMQ reconnects by itself
                self._end_lost = self.end_unconfirmed
                if not (lost and self.settings.acked and self.endpoint is not None):
                    continue
                log.info("link_reconnecting", pipeline=pipeline, target=self.target,
                         endpoint=self.endpoint, reason="connection lost")  # fmt: skip
                withdrawn_since = self.withdrawn_since  # still withdrawn until rediscovered
                self.connect(self.endpoint, self.instance, self.key_id, force=True)
                self.withdrawn_since = withdrawn_since
                return  # the old monitor is closed; the new socket reports on its own
            elif kind in HANDSHAKE_FAILED:
                self._handshake_failed(pipeline, HANDSHAKE_FAILED[kind])

    def _send_end_again(self) -> None:
        """At-most-once: the connection that carried our EOS or BYE dropped before the target
        confirmed it; say hello on the new one and send the end again (the target confirms a
        repeated end too), instead of waiting for a confirmation that cannot come."""
        self._end_lost = False
        if self.socket is None or not self.end_unconfirmed:
            return
        with contextlib.suppress(zmq.ZMQError):
            self.socket.send(self.headers.encode(FrameKind.HELLO, HELLO_NO_ACKS), zmq.NOBLOCK)
        if self.outbox:
            self.unsent = len(self.outbox)  # the kept EOS
        else:
            self.bye_pending = True
        self.pump()

    def _handshake_failed(self, pipeline: str, reason: str) -> None:
        self.handshakes_failed += 1
        now = time.monotonic()
        if now < self._next_handshake_log:
            return
        self._next_handshake_log = now + HANDSHAKE_LOG_INTERVAL_S
        known = (
            self.security is not None
            and self.key_id is not None
            and self.security.knows(self.key_id)
        )
        hint = (
            "the target serves with a key this host's key file does not have: copy the newest "
            "key file here"
            if self.security is not None and self.key_id is not None and not known
            else "the target does not accept this host's key (key files differ between hosts?)"
        )
        log.warning("handshake_failed", pipeline=pipeline, target=self.target,
                    endpoint=self.endpoint, key=self.key_id, reason=reason,
                    total=self.handshakes_failed, hint=hint)  # fmt: skip

    def _count_attempt(self) -> None:
        """The target came back while our oldest message was unacknowledged: count it."""
        head = self.outbox[0]
        attempts = self._attempts.get(head.seq, 0) + 1
        self._attempts = {head.seq: attempts}
        if attempts >= MAX_DELIVERY_ATTEMPTS and head.kind is FrameKind.DATA:
            self._drop_head(f"{self.target} crashed {attempts} times while it was delivered")

    def _split_batches(self) -> None:
        split: deque[Outgoing] = deque()
        for message in self.outbox:
            if message.parts is None:
                split.append(message)
                continue
            origins = run_origins(message.runs or [(message.count, ())])
            for seq, part, origin in zip(
                range(message.first, message.seq + 1), message.parts, origins, strict=True
            ):
                runs = [(1, origin)]
                frame = self.headers.encode_data(FrameKind.DATA, seq, runs) + part
                split.append(Outgoing(seq, [frame], len(part), FrameKind.DATA, runs=runs))
        self.outbox = split

    def _pop_head(self) -> Outgoing:
        head = self.outbox.popleft()
        self.released = max(self.released, head.seq)
        self.bytes_held -= head.size
        self.held -= head.count
        self.unsent = min(self.unsent, len(self.outbox))
        return head

    def _drop_head(self, reason: str) -> None:
        head = self._pop_head()
        if self.on_dead_letter is not None:
            self.on_dead_letter(self.target, head, reason)

    def retire(self) -> None:
        """The target finished for good: drop what is held and whatever comes later."""
        self.gone = True
        self.dropped += self.data_held()
        self.released = self.next_seq - 1
        self.outbox.clear()
        self.batch.clear()
        self.batch_origins.clear()
        self.unsent = self.bytes_held = self.held = self.batch_bytes = 0
        self.close(linger_ms=0)
        self.endpoint = self.instance = None

    # ---- sending -------------------------------------------------------------------------

    def full(self) -> bool:
        """Whether the link holds as many messages or bytes as it may."""
        return (
            self.held + len(self.batch) >= self.settings.limit
            or self.bytes_held + self.batch_bytes >= self.settings.limit_bytes
        )

    def data_held(self) -> int:
        """How many data messages the link still holds."""
        batched = len(self.batch)
        return batched + sum(m.count for m in self.outbox if m.kind is FrameKind.DATA)

    @property
    def next_seq(self) -> int:
        """The sequence number the next offered message will get."""
        return self.seq + len(self.batch) + 1

    def offer(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> bool:
        """Take one message if there is room (or make room under drop_oldest); else False.

        Small single-frame data joins the batch; the batch goes out when it is full or when the
        worker calls flush() (after a slow iteration, before it idles, at the end). `origin`:
        the source iterations the value derives from (porch.wire); `[b""]` is a skip marker. A
        pipeline that stamps its own origins passes only the seq (an int: cheaper, and its
        batches are one run at a glance); `stream` must then be its origin stream.
        """
        if self.gone:
            self.dropped += kind is FrameKind.DATA
            return True
        if self.full() and not self.settings.acked:
            # at-most-once holds only what ZeroMQ has not taken yet: once the batch reaches the
            # limit, hand it over and go on (else the producer waits for acks that never come)
            self.flush()
        if self.full():
            if not self.settings.drop_oldest or not (self.outbox or self.batch):
                self.flush()
                return False
            self._drop_oldest()
        if kind is FrameKind.DATA and len(payload) == 1 and type(payload[0]) is bytes:
            item = payload[0]
            if len(item) <= BATCH_ITEM_MAX:
                self.batch.append(item)
                self.batch_bytes += len(item)
                self.batch_origins.append(origin)
                if len(self.batch) >= MAX_BATCH or self.batch_bytes >= MAX_BATCH_BYTES:
                    self.flush()
                return True
        self._close_batch()
        self.seq += 1
        alone: list[Run] | None = [(1, self._origin(origin))] if kind is FrameKind.DATA else None
        frames = self._frames(kind, payload, alone)
        self._append(Outgoing(self.seq, frames, _size(payload), kind, runs=alone))
        self.pump()
        return True

    def add(self, item: bytes, origin: Origin | int) -> bool:
        """offer()'s hot path: one small serialized value into the batch. False when offer()
        must decide instead: the link is full or finished, or the value travels alone."""
        batch = self.batch
        size = len(item)
        if (
            self.held + len(batch) >= self._limit
            or self.bytes_held + self.batch_bytes >= self._limit_bytes
            or size > BATCH_ITEM_MAX
            or self.gone
        ):
            return False
        batch.append(item)
        self.batch_origins.append(origin)
        self.batch_bytes += size
        if len(batch) >= MAX_BATCH or self.batch_bytes >= MAX_BATCH_BYTES:
            self.flush()
        return True

    def room(self) -> int:
        """How many more small values the link takes now without blocking or dropping (a
        finished target takes, and drops, everything)."""
        if self.gone:
            return MAX_BATCH
        if self.bytes_held + self.batch_bytes >= self._limit_bytes:
            return 0
        return max(0, self._limit - self.held - len(self.batch))

    def extend(self, items: list[bytes], origins: Sequence[Any]) -> None:
        """Several small serialized values (each at most BATCH_ITEM_MAX bytes) into the batch,
        `origins` as for offer(); the caller checked room()."""
        if self.gone:
            self.dropped += len(items)
            return
        start = 0
        while start < len(items):
            take = MAX_BATCH - len(self.batch)
            chunk = items[start : start + take]
            self.batch += chunk
            self.batch_origins += origins[start : start + take]
            self.batch_bytes += sum(map(len, chunk))
            start += take
            if len(self.batch) >= MAX_BATCH or self.batch_bytes >= MAX_BATCH_BYTES:
                self.flush()

    def _append(self, message: Outgoing) -> None:
        self.outbox.append(message)
        self.bytes_held += message.size
        self.held += message.count
        self.unsent += 1

    def flush(self) -> None:
        """Send the batch now, and whatever else ZeroMQ will take."""
        self._close_batch()
        self.pump()

    def _close_batch(self) -> None:
        """Turn the batch into one outbox entry: one frame carrying every payload."""
        batch = self.batch
        count = len(batch)
        if not count:
            return
        origins = self.batch_origins
        first = origins[0]
        if type(first) is not int:  # a stage passing its inputs' origins on
            runs: list[Run] = runs_of(origins)
        elif origins[-1] - first == count - 1:  # our own seqs: they only increase
            runs = [(count, (self.stream, first))]
        else:
            runs = runs_of([self._origin(origin) for origin in origins])
        if count == 1:
            self.seq += 1
            frames = self._frames(FrameKind.DATA, batch, runs)
            self._append(Outgoing(self.seq, frames, self.batch_bytes, FrameKind.DATA, runs=runs))
        else:
            first = self.seq + 1
            self.seq += count
            header = self.headers.encode_data(FrameKind.DATA_BATCH, first, runs)
            frame = encode_batch(header, batch)
            self._append(
                Outgoing(self.seq, [frame], self.batch_bytes, FrameKind.DATA, first, batch, runs)
            )
        self.batch = []
        self.batch_origins = []
        self.batch_bytes = 0

    def _origin(self, origin: Origin | int) -> Origin:
        return (self.stream, origin) if type(origin) is int else origin  # type: ignore[return-value]

    def outbox_restore(self, kind: FrameKind, payload: list[Any], origin: Origin = ()) -> None:
        """Queue a message recovered from the durable outbox, past the usual limits."""
        self.seq += 1
        runs = [(1, origin)]
        frames = self._frames(kind, payload, runs)
        self._append(Outgoing(self.seq, frames, _size(payload), kind, runs=runs))

    def _frames(self, kind: FrameKind, payload: list[Any], runs: list[Run] | None) -> list[Any]:
        """The wire frames: a small first payload frame rides in the header's frame."""
        if runs:
            header = self.headers.encode_data(kind, self.seq, runs)
        else:
            header = self.headers.encode(kind, self.seq)
        if payload and isinstance(payload[0], bytes) and len(payload[0]) <= INLINE_MAX:
            return [header + payload[0], *payload[1:]]
        return [header, *payload]

    def _drop_oldest(self) -> None:
        if self.outbox:
            self.dropped += self._pop_head().count
        else:
            # the dropped value keeps its seq (a gap the receiver ignores), so the seqs of the
            # others stay those a durable outbox stored them under
            self.batch_bytes -= len(self.batch.pop(0))
            self.seq += 1
            self.released = self.seq
            self.dropped += 1
            self.batch_origins.pop(0)

    def force(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> None:
        """Take one message past the limits: the end of stream, or a stopping worker's output
        (`origin` as for offer)."""
        if self.gone:
            self.dropped += kind is FrameKind.DATA
            return
        self._close_batch()
        self.seq += 1
        alone: list[Run] | None = [(1, self._origin(origin))] if kind is FrameKind.DATA else None
        frames = self._frames(kind, payload, alone)
        self._append(Outgoing(self.seq, frames, _size(payload), kind, runs=alone))
        self.pump()

    def say_bye(self) -> None:
        """Tell the target we are stopping, after every message already given to the link."""
        self._close_batch()
        self.bye_pending = True
        self.pump()

    def pump(self) -> None:
        """Give ZeroMQ the messages it has not had yet, for as long as it takes them."""
        sock = self.socket
        if sock is None:
            return
        outbox = self.outbox
        while self.unsent:
            message = outbox[len(outbox) - self.unsent]
            try:
                sock.send_multipart(message.frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.unsent -= 1
        if self.bye_pending:
            with contextlib.suppress(zmq.ZMQError):
                sock.send(self.headers.encode(FrameKind.BYE, 0), zmq.NOBLOCK)
                self.bye_pending = False
                self.end_unconfirmed = not self.settings.acked
        if not self.settings.acked:
            self._forget_sent()

    def _forget_sent(self) -> None:
        """At-most-once: once ZeroMQ has a message, it is no longer ours to replay. Our EOS
        stays until the target confirms it read it (Inbox._confirm_end), and so does the
        connection: over ipc://, closing it loses what a target that is behind has not read
        (ZeroMQ ends a connection whose peer hung up at once, unread bytes and all)."""
        outbox = self.outbox
        while len(outbox) > self.unsent:
            if outbox[0].kind is FrameKind.EOS:
                self.end_unconfirmed = True
                return
            self._pop_head()

    # ---- acknowledgements ----------------------------------------------------------------

    def read_acks(self, decode: Callable[[bytes], int | None]) -> None:
        """Apply every acknowledgement waiting on the socket (`decode` gives the acked seq)."""
        sock = self.socket
        if sock is None:
            return
        newest = self.acked_seq
        heard = False
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            seq = decode(frame)
            if seq is None:
                continue
            heard = True
            newest = max(newest, seq)
        if newest > self.acked_seq:
            self.ack(newest)
        if heard and not self.settings.acked:
            self.end_unconfirmed = False  # an at-most-once target acks only our EOS or BYE

    def ack(self, seq: int) -> None:
        """The target has processed everything up to `seq`: forget it."""
        self.acked_seq = max(self.acked_seq, seq)
        outbox = self.outbox
        sent = len(outbox) - self.unsent
        while sent and outbox[0].seq <= seq:
            self._pop_head()
            sent -= 1
        self.pump()

    @property
    def delivered(self) -> bool:
        """Whether nothing is left that the target still has to acknowledge (at-most-once:
        whether it confirmed our end of stream or BYE)."""
        return self.gone or not (self.outbox or self.batch or self.end_unconfirmed)

    def close(self, linger_ms: int = LINGER_MS) -> None:
        """Close the socket; ZeroMQ keeps delivering what it holds for up to `linger_ms`."""
        self._close_socket(linger_ms)

    def _close_socket(self, linger_ms: int) -> None:
        if self.socket is not None:
            close_monitor(self.socket, self.monitor)
            self.socket.close(linger=linger_ms)
        self.socket = self.monitor = None
