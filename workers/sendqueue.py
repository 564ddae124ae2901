"""What an output link holds: the batch of small values being gathered, and the queue of
messages not yet released (unsent, or sent and not yet acknowledged). No sockets here.

Whatever leaves the queue (acknowledged, handed to ZeroMQ under at-most-once, dropped under
drop_oldest, dead-lettered, or held for a target that finished) leaves it from the head, in
sequence order: `released` is the newest sequence number of all that is gone, which is what a
durable outbox may delete up to.
"""

from __future__ import annotations

import pickle
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from porch.wire import (
    INLINE_MAX,
    FrameKind,
    HeaderEncoder,
    Origin,
    Run,
    Stream,
    decode_prefix,
    encode_batch,
    encode_whole,
    run_origins,
    runs_of,
)

MAX_BATCH = 256  # messages coalesced into one frame while the worker is busy
MAX_BATCH_BYTES = 256 * 1024
BATCH_ITEM_MAX = 16 * 1024  # larger payloads travel alone
COPY_MAX = zmq.COPY_THRESHOLD  # pyzmq copies smaller frames even when asked not to
_SEQ_AT, _SEQ_END = 12, 20  # where a header's seq is (porch/wire.py)


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
    whole: int = 0  # a WHOLE batch: where the one pickle of its values starts in frames[0]

    @property
    def count(self) -> int:
        """How many messages it carries."""
        if self.parts is None and not self.whole:
            return 1
        return self.seq - self.first + 1

    def payloads(self) -> list[bytes] | None:
        """A batch's payloads one by one (a WHOLE batch's made now from its pickle, as
        dumps_one makes a small plain value's), None for a single message."""
        if self.whole:
            values = pickle.loads(memoryview(self.frames[0])[self.whole :])
            return [pickle.dumps(value, 3) for value in values]
        return self.parts


def data_of(message: Outgoing) -> list[tuple[list[Any], Origin]]:
    """The values a data message carries, each as (payload frames, origin), in order: to send
    them again on another link (a replica that is gone hands its values to the others)."""
    origins = run_origins(message.runs or [(message.count, ())])
    parts = message.payloads()
    if parts is not None:
        return [([part], origin) for part, origin in zip(parts, origins, strict=True)]
    head = bytes(message.frames[0])
    _, end = decode_prefix(head)
    rest = list(message.frames[1:])
    payload = [head[end:], *rest] if len(head) > end or not rest else rest  # b"": a marker
    return [(payload, origins[0])]


class Batch:
    """Small serialized values waiting to leave as one frame, with their origins (an origin
    is a tuple, or a stamping pipeline's own seq as an int)."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.origins: list[Origin | int] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: bytes, origin: Origin | int) -> bool:
        """Take one value; True when the batch should go out now (it is full)."""
        self.items.append(item)
        self.origins.append(origin)
        self.nbytes += len(item)
        return len(self.items) >= MAX_BATCH or self.nbytes >= MAX_BATCH_BYTES

    def fill(self, items: Sequence[bytes], origins: Sequence[Any]) -> int:
        """Take as many of `items` as fit in one frame; how many it took."""
        take = MAX_BATCH - len(self.items)
        chunk = items[:take]
        self.items += chunk
        self.origins += origins[:take]
        self.nbytes += sum(map(len, chunk))
        return len(chunk)

    def full(self) -> bool:
        """Whether the batch should go out now."""
        return len(self.items) >= MAX_BATCH or self.nbytes >= MAX_BATCH_BYTES

    def take(self) -> tuple[list[bytes], list[Origin | int], int]:
        """Everything gathered (items, origins, bytes); the batch is empty again."""
        taken = self.items, self.origins, self.nbytes
        self.items, self.origins, self.nbytes = [], [], 0
        return taken

    def drop_first(self) -> None:
        """Drop the oldest value (overflow: drop_oldest)."""
        self.nbytes -= len(self.items.pop(0))
        self.origins.pop(0)


class Framer:
    """Encodes one link's messages: the header with its origins, the payload frames."""

    def __init__(self, headers: HeaderEncoder) -> None:
        self.headers = headers
        self.stream: Stream | None = None  # whose origin seqs come as bare ints (see Batch)
        self._lone: tuple[struct.Struct, bytes, bytes, Stream | None] | None = None

    def lone(self, seq: int, origin: int, item: bytes) -> bytes:
        """The one frame of a value of our own stream (`origin`: its seq) that travels
        alone, its payload inline: what single() frames, packed at once (the idle path)."""
        layout = self._lone
        if layout is None or layout[3] is not self.stream:
            # the header encode_data writes, its two seqs cut out (porch/wire.py's layout)
            template = self.headers.encode_data(FrameKind.DATA, 0, [(1, (self.stream, 0))])
            middle = template[_SEQ_END:-8]
            packer = struct.Struct(f"!{_SEQ_AT}sQ{len(middle)}sQ")
            layout = self._lone = (packer, template[:_SEQ_AT], middle, self.stream)
        return layout[0].pack(layout[1], seq, layout[2], origin) + item

    def origin(self, origin: Origin | int) -> Origin:
        """The origin of a value: a bare int is a seq of our own stream."""
        return (self.stream, origin) if type(origin) is int else origin  # type: ignore[return-value]

    def batch(self, first: int, items: list[bytes], origins: list[Origin | int],
              nbytes: int) -> Outgoing:  # fmt: skip
        """One entry carrying a batch whose first value gets seq `first`."""
        count = len(items)
        head = origins[0]
        if type(head) is not int:  # a stage passing its inputs' origins on
            runs: list[Run] = runs_of(origins)  # type: ignore[arg-type]
        elif origins[-1] - head == count - 1:  # type: ignore[operator]  # our own seqs
            runs = [(count, (self.stream, head))]
        else:
            runs = runs_of([self.origin(origin) for origin in origins])
        if count == 1:
            frames = self.frames(FrameKind.DATA, first, items, runs)
            return Outgoing(first, frames, nbytes, FrameKind.DATA, runs=runs)
        frame = encode_batch(self.headers.encode_data(FrameKind.DATA_BATCH, first, runs), items)
        return Outgoing(first + count - 1, [frame], nbytes, FrameKind.DATA, first, items, runs)

    def whole(self, first: int, blob: bytes, values: list[Any], origins: Sequence[Origin | int],
              nbytes: int, runs: list[Run] | None = None) -> Outgoing:  # fmt: skip
        """One entry carrying a WHOLE batch (porch.wire): `blob` is one pickle of `values`,
        small plain values whose first gets seq `first`; their origins as `runs` (a stage's,
        passed on), or one each in `origins`. The entry keeps the frame, not the values (they
        are freed as they leave, while still in the cache, not when the ack comes: a replay
        that splits the entry loads them from it, Outgoing.payloads)."""
        count = len(values)
        if runs is None:
            head = origins[0]
            if type(head) is int and origins[-1] - head == count - 1:  # type: ignore[operator]
                runs = [(count, (self.stream, head))]
            elif type(head) is int:
                runs = runs_of([self.origin(origin) for origin in origins])
            else:
                runs = runs_of(origins)  # type: ignore[arg-type]
        header = self.headers.encode_data(FrameKind.DATA_BATCH, first, runs)
        frame = encode_whole(header, blob, count)
        return Outgoing(first + count - 1, [frame], nbytes, FrameKind.DATA, first, None, runs,
                        len(frame) - len(blob))  # fmt: skip

    def single(self, kind: FrameKind, seq: int, payload: list[Any], origin: Origin | int,
               size: int) -> Outgoing:  # fmt: skip
        """One entry carrying one message (data with its origin, or a control frame)."""
        runs: list[Run] | None = [(1, self.origin(origin))] if kind is FrameKind.DATA else None
        return Outgoing(seq, self.frames(kind, seq, payload, runs), size, kind, runs=runs)

    def frames(self, kind: FrameKind, seq: int, payload: list[Any],
               runs: list[Run] | None) -> list[Any]:  # fmt: skip
        """The wire frames: a small first payload frame rides in the header's frame."""
        if runs:
            header = self.headers.encode_data(kind, seq, runs)
        else:
            header = self.headers.encode(kind, seq)
        if payload and isinstance(payload[0], bytes) and len(payload[0]) <= INLINE_MAX:
            return [header + payload[0], *payload[1:]]
        return [header, *payload]


class SendQueue:
    """A link's messages from the oldest not released to the newest; the newest `unsent` of
    them ZeroMQ has not been given yet."""

    def __init__(self) -> None:
        self.entries: deque[Outgoing] = deque()
        self.unsent = 0
        self.held = 0  # messages (a batch counts as its messages)
        self.nbytes = 0
        self.released = 0  # every seq up to this one has left for good
        self._attempts: dict[int, int] = {}  # the head's seq -> deliveries it was part of

    def __iter__(self) -> Iterator[Outgoing]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Outgoing:
        return self.entries[index]

    def append(self, message: Outgoing) -> None:
        """Queue a message, unsent."""
        self.entries.append(message)
        self.nbytes += message.size
        self.held += message.count
        self.unsent += 1

    def pop_head(self) -> Outgoing:
        """Release the oldest message."""
        head = self.entries.popleft()
        self.released = max(self.released, head.seq)
        self.nbytes -= head.size
        self.held -= head.count
        self.unsent = min(self.unsent, len(self.entries))
        return head

    def data_held(self) -> int:
        """How many data messages it holds."""
        return sum(m.count for m in self.entries if m.kind is FrameKind.DATA)

    def clear(self, released: int) -> None:
        """Forget everything (the target finished); every seq up to `released` is gone."""
        self.entries.clear()
        self.unsent = self.held = self.nbytes = 0
        self.released = released

    def send(self, sock: zmq.Socket[bytes]) -> bool:
        """Give ZeroMQ what it has not had yet, for as long as it takes it; whether all went."""
        entries = self.entries
        while self.unsent:
            frames = entries[len(entries) - self.unsent].frames
            try:
                if len(frames) == 1 and type(frames[0]) is bytes and len(frames[0]) < COPY_MAX:
                    sock.send(frames[0], zmq.NOBLOCK)  # a third of send_multipart's cost
                else:  # large frames (and pickle's buffers) without a copy
                    sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            self.unsent -= 1
        return True

    def forget_sent(self) -> bool:
        """At-most-once: once ZeroMQ has a message, it is no longer ours to replay, but for
        our end of stream; whether that is what stays at the head (sent)."""
        while len(self.entries) > self.unsent:
            if self.entries[0].kind is FrameKind.EOS:
                return True
            self.pop_head()
        return False

    def acknowledged(self, seq: int) -> None:
        """The target has processed everything up to `seq`: release what was sent of it."""
        entries = self.entries
        sent = len(entries) - self.unsent
        while sent and entries[0].seq <= seq:
            self.pop_head()
            sent -= 1

    def attempt(self) -> int:
        """The target came back while the oldest message was unacknowledged: how often now."""
        head = self.entries[0].seq
        attempts = self._attempts.get(head, 0) + 1
        self._attempts = {head: attempts}
        return attempts

    def replay(self, headers: HeaderEncoder, max_attempts: int) -> Outgoing | None:
        """The target restarted before acknowledging what it was sent: every batch becomes
        single messages (it acks one by one now), and the oldest one, if the target crashed
        on it `max_attempts` times, is released and returned (to be dead-lettered)."""
        self.split_batches(headers)
        if self.attempt() >= max_attempts and self.entries[0].kind is FrameKind.DATA:
            return self.pop_head()
        return None

    def resend_all(self) -> None:
        """A new connection: every held message goes out again."""
        self.unsent = len(self.entries)

    def split_batches(self, headers: HeaderEncoder) -> None:
        """Turn every batch into its single messages (a restarted target acks one by one)."""
        split: deque[Outgoing] = deque()
        for message in self.entries:
            parts = message.payloads()
            if parts is None:
                split.append(message)
                continue
            origins = run_origins(message.runs or [(message.count, ())])
            for seq, part, origin in zip(
                range(message.first, message.seq + 1), parts, origins, strict=True
            ):
                runs = [(1, origin)]
                frame = headers.encode_data(FrameKind.DATA, seq, runs) + part
                split.append(Outgoing(seq, [frame], len(part), FrameKind.DATA, runs=runs))
        self.entries = split
