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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from porch import logs
from porch.control import readable
from porch.localsock import IPC_PREFIX, is_local
from porch.security import LinkSecurity
from porch.wire import (
    FrameKind,
    HeaderEncoder,
    Origin,
    Run,
    Stream,
)
from workers import linkpeer
from workers.sendqueue import (
    BATCH_ITEM_MAX,
    COPY_MAX,
    MAX_BATCH,
    Batch,
    Framer,
    Outgoing,
    SendQueue,
    data_of,
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
# as plain ints (InputLink.receive, every frame): `int & zmq.POLLIN` makes a Flag, and
# getsockopt() with an enum looks the option up (porch/control.py's readable() does the same)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


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


def monitor_events(monitor: Socket | None) -> list[zmq.Event]:
    """The kind of every socket event waiting on a monitor socket (non-blocking)."""
    found: list[zmq.Event] = []
    while monitor is not None and readable(monitor):
        try:
            found.append(zmq.Event(recv_monitor_message(monitor, zmq.NOBLOCK)["event"]))
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
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


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
        for kind in monitor_events(self.monitor):
            reason = HANDSHAKE_FAILED.get(kind)
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
        copied: they arrive as memoryviews of ZeroMQ's own message buffers. Whether another
        message waits is read from the socket's events, not from a receive that fails (pyzmq's
        zmq.Again costs several times a message's receive: on an idle link, one per wake-up).
        """
        out: list[list[Any]] = []
        sock = self.socket
        recv, get = sock.recv, sock.get
        for _ in range(max_messages):
            try:
                route = recv(_NOBLOCK)
            except zmq.Again:
                break
            message: list[Any] = [route, recv()]  # (a ROUTER's: the route, then a frame)
            while get(_RCVMORE):
                message.append(recv(copy=False).buffer)
            out.append(message)
            if not cast(int, get(_EVENTS)) & _POLLIN:
                break
        return out

    def ack(self, route: bytes, header: bytes) -> None:
        """Send an acknowledgement back to the sender on `route`; never block."""
        # a lost ack is repaired by the next cumulative one (a ROUTER drops a message to a
        # route it no longer has, or whose queue is full, without an error); two sends with
        # int flags: send_multipart's Flag arithmetic and checks cost ~1.5 of ~6 us
        sock = self.socket
        try:
            sock.send(route, _MORE_NOBLOCK)
            sock.send(header, _NOBLOCK)
        except zmq.ZMQError:
            pass

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


def _size(frames: list[Any]) -> int:
    return sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)


class LinkSocket:
    """An output link's DEALER: its connection to one endpoint of the target, what the
    connection's events say (handshakes, disconnects), and whether discovery lost the target."""

    def __init__(self, ctx: Context, target: str, security: LinkSecurity | None) -> None:
        self.ctx = ctx
        self.target = target
        self.security = security
        self.socket: Socket | None = None
        self.monitor: Socket | None = None
        self.endpoint: str | None = None
        self.instance: int | None = None
        self.key_id: str | None = None
        self.handshaken = False  # the current socket completed a handshake
        self.withdrawn_since: float | None = None  # wall clock: discovery lost the target then
        self.reconnects = 0  # reopened after a dead connection or a rediscovery
        self.quiet_since: float | None = None  # monotonic: no ack came since (linkpeer)
        self.quiet_ack = 0  # ...the acked seq then
        self.handshakes_failed = 0
        self._next_handshake_log = 0.0

    def open(self, endpoint: str, instance: int | None, key_id: str | None,
             settings: LinkSettings) -> Socket:  # fmt: skip
        """A new socket connected to `endpoint` (the old one is closed at once)."""
        self.close(linger_ms=0)
        sock: Socket = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, settings.limit + 16)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        set_heartbeats(sock, pings=settings.acked)
        if self.security is not None and not is_local(endpoint):
            self.security.client(sock, key_id)  # CURVE client of the target's key
        self.monitor = sock.get_monitor_socket(LINK_EVENTS)
        self.handshaken = False
        self.quiet_since = None  # a new connection: its HELLO is new
        sock.connect(endpoint)
        self.socket, self.endpoint, self.instance, self.key_id = sock, endpoint, instance, key_id
        self.withdrawn_since = None
        return sock

    def events(self, pipeline: str) -> list[tuple[zmq.Event, bool]]:
        """The socket's handshakes and disconnects, in order, each with whether the connection
        had completed its handshake (failed handshakes are counted and logged here)."""
        found: list[tuple[zmq.Event, bool]] = []
        for kind in monitor_events(self.monitor):
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshaken = True
                found.append((kind, True))
            elif kind == zmq.EVENT_DISCONNECTED:
                lost, self.handshaken = self.handshaken, False  # ZeroMQ reconnects by itself
                found.append((kind, lost))
            elif kind in HANDSHAKE_FAILED:
                self._handshake_failed(pipeline, HANDSHAKE_FAILED[kind])
        return found

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

    def newest_ack(self, decode: Callable[[bytes], int | None], newest: int) -> tuple[int, bool]:
        """The highest seq of the acknowledgements waiting on the socket (or `newest`), and
        whether there was any."""
        heard = False
        while self.socket is not None and readable(self.socket):
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            seq = decode(frame)
            if seq is not None:
                heard = True
                newest = max(newest, seq)
        return newest, heard

    def close(self, linger_ms: int) -> None:
        """Close the socket (ZeroMQ keeps delivering what it holds for up to `linger_ms`)."""
        if self.socket is not None:
            close_monitor(self.socket, self.monitor)
            self.socket.close(linger=linger_ms)
        self.socket = self.monitor = None


@dataclass
class StreamEnd:
    """How far an output link's end of stream (EOS) or BYE has got."""

    bye_pending: bool = False  # a BYE waits for the unsent messages it must follow
    unconfirmed: bool = False  # at-most-once: our EOS or BYE went out, not yet confirmed
    lost: bool = False  # ...and its connection dropped: send it again on the next one
    said_bye: bool = False  # our BYE went out: the target may let us go


class OutputLink:
    """The link to one target: a DEALER once the target's endpoint is known, a queue before.

    Every message has a per-link sequence number and stays in the link's SendQueue until the
    target acknowledges that it has processed it (cumulative acks); small values first gather
    in a Batch that leaves as one frame.
    """

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
        self.target = target
        self.framer = Framer(headers)
        self.settings = settings
        self.on_dead_letter = on_dead_letter
        self.conn = LinkSocket(ctx, target, security)
        self.outbox = SendQueue()
        self.batch = Batch()
        self.seq = 0
        self.acked_seq = 0
        self.gone = False  # the target finished its stream: nothing more will be accepted
        self.down = False  # the directory says the target is not running now
        self.restarting = False  # ...and that its supervisor is starting it again
        self.dropped = 0
        self.replayed = 0
        self.handed_on = 0  # times its values were taken out to go elsewhere (take_data)
        self.end = StreamEnd()

    # what status and the worker read of the connection
    # (attrgetters: no Python frame per read; an idle worker's heartbeat reads several)
    socket = property(attrgetter("conn.socket"))
    endpoint = property(attrgetter("conn.endpoint"))
    handshaken = property(attrgetter("conn.handshaken"))
    handshakes_failed = property(attrgetter("conn.handshakes_failed"))
    reconnects = property(attrgetter("conn.reconnects"))
    withdrawn_since = property(attrgetter("conn.withdrawn_since"))
    unsent = property(attrgetter("outbox.unsent"))
    held = property(attrgetter("outbox.held"))
    released = property(attrgetter("outbox.released"))

    @property
    def stream(self) -> Stream | None:
        """Whose origin seqs come as bare ints (see offer)."""
        return self.framer.stream

    @stream.setter
    def stream(self, stream: Stream | None) -> None:
        self.framer.stream = stream

    # ---- connection (workers/linkpeer.py) -------------------------------------------------

    def connect(self, endpoint: str, instance: int | None = None, key_id: str | None = None,
                *, force: bool = False) -> None:  # fmt: skip
        """(Re)connect to the target, say hello, and send everything not yet acknowledged
        (`force`: even to an unchanged endpoint; see linkpeer.connect)."""
        linkpeer.connect(self, endpoint, instance, key_id, force=force)

    def withdraw(self, since: float) -> None:
        """Discovery lost the target: hold everything until it is back."""
        linkpeer.withdraw(self, since)

    def check_events(self, pipeline: str) -> None:
        """React to the socket's events (dead connections, lost ends, failed handshakes)."""
        linkpeer.check_events(self, pipeline)

    def retire(self) -> None:
        """The target finished for good: drop what is held and whatever comes later."""
        self.gone = True
        self.dropped += self.data_held()
        self.outbox.clear(released=self.next_seq - 1)
        self.batch.take()
        self.close(linger_ms=0)
        self.conn.endpoint = self.conn.instance = None

    def take_data(self) -> list[tuple[list[Any], Origin]]:
        """Take out every value the target has not acknowledged, in order, as (payload,
        origin), and forget everything held: a replica gone for good hands its values to the
        others (workers/replicas.py)."""
        self._close_batch()
        self.handed_on += 1
        taken = [item for m in self.outbox if m.kind is FrameKind.DATA for item in data_of(m)]
        self.outbox.clear(released=self.next_seq - 1)
        return taken

    # ---- sending -------------------------------------------------------------------------

    def full(self) -> bool:
        """Whether the link holds as many messages or bytes as it may."""
        return (
            self.outbox.held + len(self.batch) >= self.settings.limit
            or self.outbox.nbytes + self.batch.nbytes >= self.settings.limit_bytes
        )

    def room(self) -> int:
        """How many more small values the link takes now without blocking or dropping (a
        finished target takes, and drops, everything)."""
        if self.gone:
            return MAX_BATCH
        if self.outbox.nbytes + self.batch.nbytes >= self.settings.limit_bytes:
            return 0
        return max(0, self.settings.limit - self.outbox.held - len(self.batch))

    def data_held(self) -> int:
        """How many data messages the link still holds."""
        held = len(self.batch.items)
        return held + self.outbox.data_held() if self.outbox.entries else held

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
        item = payload[0] if kind is FrameKind.DATA and len(payload) == 1 else None
        if type(item) is bytes and len(item) <= BATCH_ITEM_MAX:
            if self.batch.add(item, origin):
                self.flush()
            return True
        self.force(kind, payload, origin)
        return True

    def add(self, item: bytes, origin: Origin | int) -> bool:
        """offer()'s hot path, for one small serialized value; False when offer() must decide
        (the link is full or finished, or the value travels alone)."""
        if self.gone or len(item) > BATCH_ITEM_MAX or self.full():
            return False
        if self.batch.add(item, origin):
            self.flush()
        return True

    def extend(self, items: Sequence[bytes], origins: Sequence[Any]) -> None:
        """Several small serialized values (each at most BATCH_ITEM_MAX bytes) into the batch,
        `origins` as for offer(); the caller checked room()."""
        if self.gone:
            self.dropped += len(items)
            return
        while items:
            taken = self.batch.fill(items, origins)
            items, origins = items[taken:], origins[taken:]
            if self.batch.full():
                self.flush()

    def extend_whole(self, blob: bytes, values: list[Any], origins: Sequence[Any],
                     runs: list[Run] | None = None) -> None:  # fmt: skip
        """Small plain values pickled in one call (`blob`: a source's burst, or a stage's),
        out as one WHOLE batch (porch.wire) after what the link gathered; `origins` as for
        extend(), or their `runs` (a stage passing its inputs' on); the caller checked
        room()."""
        if self.gone:
            self.dropped += len(values)
            return
        self._close_batch()
        self.outbox.append(self.framer.whole(self.seq + 1, blob, values, origins, len(blob),
                                             runs))  # fmt: skip
        self.seq += len(values)
        self.pump()

    def send_one(self, item: bytes, origin: Origin | int) -> None:
        """One small serialized value (at most BATCH_ITEM_MAX bytes) out at once, the message
        a batch of one would be, without gathering it (a slow loop's value: the idle path);
        `origin` as for offer(); the caller checked room()."""
        outbox = self.outbox
        sock = self.conn.socket
        if self.gone or self.batch or outbox.unsent or sock is None or type(origin) is not int:
            self.extend([item], [origin])
            self.flush()
            return
        seq = self.seq = self.seq + 1
        frame = self.framer.lone(seq, origin, item)
        try:  # sent first, the bookkeeping after (latency)
            sock.send(frame, zmq.NOBLOCK, copy=len(frame) < COPY_MAX)
            sent = True
        except zmq.Again:
            sent = False
        runs: list[Run] = [(1, (self.framer.stream, origin))]
        outbox.append(Outgoing(seq, [frame], len(item), FrameKind.DATA, runs=runs))
        if sent:
            outbox.unsent = 0
            if self.settings.acked and not self.end.bye_pending:
                return  # (the rest of pump(): nothing to do; the source's work after its
                # send delays the send's way to the target about 1:1 on a loaded machine)
        self.pump()

    def flush(self) -> None:
        """Send the batch now, and whatever else ZeroMQ will take."""
        self._close_batch()
        self.pump()

    def _close_batch(self) -> None:
        """Turn the batch into one outbox entry: one frame carrying every payload."""
        if self.batch:
            items, origins, nbytes = self.batch.take()
            self.outbox.append(self.framer.batch(self.seq + 1, items, origins, nbytes))
            self.seq += len(items)

    def outbox_restore(self, kind: FrameKind, payload: list[Any], origin: Origin = ()) -> None:
        """Queue a message recovered from the durable outbox, past the usual limits."""
        self.seq += 1
        self.outbox.append(self.framer.single(kind, self.seq, payload, origin, _size(payload)))

    def _drop_oldest(self) -> None:
        if self.outbox:
            self.dropped += self.outbox.pop_head().count
        else:
            # the dropped value keeps its seq (a gap the receiver ignores), so the seqs of the
            # others stay those a durable outbox stored them under
            self.batch.drop_first()
            self.seq += 1
            self.outbox.released = self.seq
            self.dropped += 1

    def force(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> None:
        """Take one message past the limits: the end of stream, or a stopping worker's output
        (`origin` as for offer)."""
        if self.gone:
            self.dropped += kind is FrameKind.DATA
            return
        self._close_batch()
        self.seq += 1
        self.outbox.append(self.framer.single(kind, self.seq, payload, origin, _size(payload)))
        self.pump()

    def say_bye(self) -> None:
        """Tell the target we are stopping, after every message already given to the link."""
        self._close_batch()
        self.end.bye_pending = True
        self.pump()

    def pump(self) -> None:
        """Give ZeroMQ the messages it has not had yet, for as long as it takes them."""
        sock = self.conn.socket
        if sock is None or not self.outbox.send(sock):
            return
        if self.end.bye_pending:
            with contextlib.suppress(zmq.ZMQError):
                sock.send(self.framer.headers.encode(FrameKind.BYE, 0), zmq.NOBLOCK)
                self.end.bye_pending = False
                self.end.said_bye = True
                self.end.unconfirmed = not self.settings.acked
        # At-most-once forgets what ZeroMQ has, but for our EOS: it stays until the target
        # confirms it read it (Inbox._confirm_end), and so does the connection: over ipc://,
        # closing it loses what a target that is behind has not read (ZeroMQ ends a
        # connection whose peer hung up at once, unread bytes and all).
        if not self.settings.acked and self.outbox.forget_sent():
            self.end.unconfirmed = True

    # ---- acknowledgements ----------------------------------------------------------------

    def read_acks(self, decode: Callable[[bytes], int | None]) -> None:
        """Apply every acknowledgement waiting on the socket (`decode` gives the acked seq)."""
        newest, heard = self.conn.newest_ack(decode, self.acked_seq)
        if newest > self.acked_seq:
            self.ack(newest)
        if heard and not self.settings.acked:
            self.end.unconfirmed = False  # an at-most-once target acks only our EOS or BYE

    def ack(self, seq: int) -> None:
        """The target has processed everything up to `seq`: forget it."""
        self.acked_seq = max(self.acked_seq, seq)
        self.outbox.acknowledged(seq)
        self.pump()

    @property
    def delivered(self) -> bool:
        """Whether nothing is left that the target still has to acknowledge (at-most-once:
        whether it confirmed our end of stream or BYE)."""
        return self.gone or not (self.outbox or self.batch or self.end.unconfirmed)

    def close(self, linger_ms: int = LINGER_MS) -> None:
        """Close the socket; ZeroMQ keeps delivering what it holds for up to `linger_ms`."""
        self.conn.close(linger_ms)
