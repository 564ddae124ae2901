"""Data links: one bound input socket per worker, one output link per target.

Every target gets its own DEALER socket, so every target gets every message and a slow or
dead target never makes another one receive duplicates (DPorch's round-robin PUSH did).

An output link is reliable: each message has a per-link sequence number and stays in the link's
outbox until the target acknowledges that it has processed it (cumulative acks). The outbox is
bounded in messages and bytes (backpressure); when the target comes back as a new instance, the
whole outbox is replayed in order. The receiver drops what it has already seen.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from porch.security import LinkSecurity
from porch.wire import HELLO_NO_ACKS, INLINE_MAX, FrameKind, HeaderEncoder, encode_batch

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
LINGER_MS = 2000
ACK_LINGER_MS = 500
MAX_DELIVERY_ATTEMPTS = 3
MAX_BATCH = 256  # messages coalesced into one frame while the worker is busy
MAX_BATCH_BYTES = 256 * 1024
BATCH_ITEM_MAX = (
    16 * 1024
)  # larger payloads travel alone  # a message its target crashed on this often is dead-lettered


class InputLink:
    """The worker's one input socket: a ROUTER bound on an ephemeral TCP port."""

    def __init__(
        self, ctx: Context, host: str, hwm: int, security: LinkSecurity | None = None
    ) -> None:
        self.socket: Socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        if security is not None:
            security.serve(self.socket)  # CURVE server behind ZAP, set before the bind
        self.socket.bind(f"tcp://{host}:0")
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

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
        self.seq = 0
        self.acked_seq = 0
        self.gone = False  # the target finished its stream: nothing more will be accepted
        self.down = False  # the directory says the target is not running now
        self.restarting = False  # ...and that its supervisor is starting it again
        self.dropped = 0
        self.replayed = 0
        self._attempts: dict[int, int] = {}

    # ---- connection ----------------------------------------------------------------------

    def connect(
        self, endpoint: str, instance: int | None = None, key_id: str | None = None
    ) -> None:
        """(Re)connect to the target, say hello, and replay everything not yet acknowledged."""
        if endpoint == self.endpoint and instance == self.instance and self.socket is not None:
            return
        if self.socket is not None:
            self.socket.close(linger=0)
        sock: Socket = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, self.settings.limit + 16)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        if self.security is not None:
            self.security.client(sock, key_id)  # CURVE client of the target's key
        sock.connect(endpoint)
        # an at-most-once sender must not be acked: unread acks in its TCP receive buffer
        # would make the kernel reset the connection (losing the tail) when it exits
        sock.send(self.headers.encode(FrameKind.HELLO, 0 if self.settings.acked else HELLO_NO_ACKS))
        replaying = self.instance is not None and len(self.outbox) > self.unsent
        self.socket, self.endpoint, self.instance = sock, endpoint, instance
        self.gone = self.down = False
        if replaying:
            self._split_batches()  # the target acks one by one after a restart: keep it exact
            self.replayed += self.held
            self._count_attempt()
        self.unsent = len(self.outbox)
        self.pump()

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
            for seq, part in enumerate(message.parts, start=message.first):
                frame = self.headers.encode(FrameKind.DATA, seq) + part
                split.append(Outgoing(seq, [frame], len(part), FrameKind.DATA))
        self.outbox = split

    def _pop_head(self) -> Outgoing:
        head = self.outbox.popleft()
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
        self.outbox.clear()
        self.batch.clear()
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

    def offer(self, kind: FrameKind, payload: list[Any]) -> bool:
        """Take one message if there is room (or make room under drop_oldest); else False.

        Small single-frame data joins the batch; the batch goes out when it is full or when the
        worker calls flush() (after a slow iteration, before it idles, at the end).
        """
        if self.gone:
            self.dropped += kind is FrameKind.DATA
            return True
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
                if len(self.batch) >= MAX_BATCH or self.batch_bytes >= MAX_BATCH_BYTES:
                    self.flush()
                return True
        self._close_batch()
        self.seq += 1
        self._append(Outgoing(self.seq, self._frames(kind, payload), _size(payload), kind))
        self.pump()
        return True

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
        if count == 1:
            self.seq += 1
            frames = self._frames(FrameKind.DATA, batch)
            self._append(Outgoing(self.seq, frames, self.batch_bytes, FrameKind.DATA))
        else:
            first = self.seq + 1
            self.seq += count
            frame = encode_batch(self.headers.encode(FrameKind.DATA_BATCH, first), batch)
            self._append(
                Outgoing(self.seq, [frame], self.batch_bytes, FrameKind.DATA, first, batch)
            )
        self.batch = []
        self.batch_bytes = 0

    def outbox_restore(self, kind: FrameKind, payload: list[Any]) -> None:
        """Queue a message recovered from the durable outbox, past the usual limits."""
        self.seq += 1
        self._append(Outgoing(self.seq, self._frames(kind, payload), _size(payload), kind))

    def _frames(self, kind: FrameKind, payload: list[Any]) -> list[Any]:
        """The wire frames: a small first payload frame rides in the header's frame."""
        header = self.headers.encode(kind, self.seq)
        if payload and isinstance(payload[0], bytes) and len(payload[0]) <= INLINE_MAX:
            return [header + payload[0], *payload[1:]]
        return [header, *payload]

    def _drop_oldest(self) -> None:
        if self.outbox:
            self.dropped += self._pop_head().count
        else:
            self.batch_bytes -= len(self.batch.pop(0))
            self.dropped += 1

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
        if not self.settings.acked:
            self._forget_sent()

    def _forget_sent(self) -> None:
        """At-most-once: once ZeroMQ has a message, it is no longer ours to replay."""
        while len(self.outbox) > self.unsent:
            self._pop_head()

    # ---- acknowledgements ----------------------------------------------------------------

    def read_acks(self, decode: Callable[[bytes], int | None]) -> None:
        """Apply every acknowledgement waiting on the socket (`decode` gives the acked seq)."""
        sock = self.socket
        if sock is None:
            return
        newest = self.acked_seq
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            seq = decode(frame)
            if seq is not None and seq > newest:
                newest = seq
        if newest > self.acked_seq:
            self.ack(newest)

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
    def settled(self) -> bool:
        """Whether nothing is left that the target still has to acknowledge (or can't)."""
        return self.gone or self.down or not (self.outbox or self.batch)

    @property
    def coming_back(self) -> bool:
        """Whether the target is down but being restarted (worth waiting for at the end)."""
        return self.restarting and not self.gone

    def close(self, linger_ms: int = LINGER_MS) -> None:
        """Close the socket; ZeroMQ keeps delivering what it holds for up to `linger_ms`."""
        if self.socket is not None:
            self.socket.close(linger=linger_ms)
            self.socket = None
