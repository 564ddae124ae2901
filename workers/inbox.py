"""The input side of a worker: the bound socket, per-source dedup, fan-in and acknowledgements.

A source's messages are acknowledged once an iteration has consumed them (a replica's that
sends on: once their outputs are acknowledged, workers/deferred.py), cumulative and batched:
every `ack_every` messages, and whenever the worker goes idle; fed back to back, once its input
pauses for 1 ms: workers/waiting.py. While a source replays what an earlier instance of this
worker was sent (its HELLO says HELLO_REPLAY: we restarted, maybe after crashing on one of them),
the first `limit` messages are acknowledged each on its own, so that if it crashes on one again,
the sender's oldest unacknowledged message is exactly that one (and is dead-lettered after a few
crashes). A fresh start has nothing to be careful of: it acknowledges in batches from the first
message (one by one, the first `limit` inputs were 999 of 1,460 acks in a 200k-value A -> B).
An acknowledgement covers every seq below the oldest one still queued or being processed.

Duplicates die here twice over: by link sequence (a replay of this link) and by origin (a
restarted upstream stage re-emitting values derived from source iterations we already have).
Per source, a window keeps the highest origin seq seen of each origin stream (pipeline, epoch);
each link delivers a stream's origins in increasing order, so a value whose every origin id is
at or below its window is one we already have. The windows outlive the source's restarts (that
is their point) and keep the newest MAX_STREAMS streams per source.

Replicas (NAME#TAG-K) of a replicated source are one source NAME of the fan-in
(workers/scheduler.py) while link seqs, acks and instances stay per process (a SourceState
each). Where values of one origin stream may come out of order, from a replica (it may be
handed the unacknowledged values of a replica that went away) and in a replica (the same, from
its senders), origin windows would drop them: there a source pipeline's newest REPLAY_ORIGINS
origins are remembered with the instance that sent each (Replays), and a value of an origin
another instance sent is a replay (a restarted replica re-processing, a hand-over of values
already processed): dropped. The values of an ordered replicated source are re-sequenced
(workers/reorder.py) before they are queued, and their order id is stripped from their origin.
"""

from __future__ import annotations

import functools
import itertools
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

from porch import logs
from porch.control import readable
from porch.errors import WireError
from porch.names import is_replica, pipeline_of
from porch.security import LinkSecurity
from porch.serializers import BY_ID, Serializer, decode_failure
from porch.stream import SKIP
from porch.wire import (
    HEADER_SIZE,
    HELLO_NO_ACKS,
    HELLO_REPLAY,
    HELLO_WINDOW,
    MAX_BATCH_COUNT,
    ORIGINS,
    WHOLE,
    FrameKind,
    Header,
    HeaderEncoder,
    Origin,
    Stream,
    decode_prefix,
    load_whole,
    read_batch,
    shift,
    union,
)
from workers.links import Context, InputLink
from workers.reorder import Reorder, order_stream, split_order
from workers.scheduler import FanIn, Inputs, Item, Span, Taken, TooManySources

log = logs.get("porch.worker")

RECV_BATCH = 256
MAX_STREAMS = 64  # origin streams remembered per source (a stream: one start of an origin)
REPLAY_ORIGINS = 4096  # origins remembered per source pipeline where windows cannot be kept


def _load_whole(serializer: Serializer, region: memoryview, count: int) -> list[Any]:
    """The values of a WHOLE batch (porch.wire); WireError (a corrupt frame, dropped and
    counted) when it is not one pickle of a list of exactly `count` values."""
    if serializer.name != "pickle":
        raise WireError(f"a whole batch of {serializer.name} data (only pickle makes them)")
    return load_whole(region, count)


class Deferral(Protocol):
    """Where a replica's commits wait for their outputs' acks (workers/deferred.py)."""

    def defer(self, seq: int, generation: int | None) -> None: ...

    def holds(self, generation: int | None) -> set[int]: ...


class Replays:
    """The newest origins of one source pipeline's values and which source instance (an
    inbox-wide generation) sent each (module doc)."""

    def __init__(self) -> None:
        self.sent: dict[Origin, int] = {}

    def replayed(self, origin: Origin, generation: int) -> bool:
        """Whether another instance sent a value of `origin` (else: remember it)."""
        sent = self.sent
        first = sent.get(origin)
        if first is None:
            sent[origin] = generation
            if len(sent) > REPLAY_ORIGINS:
                del sent[next(iter(sent))]
            return False
        return first != generation


class OpenSeqs:
    """A source's seqs queued or being processed, oldest first, as runs of consecutive ones
    ([first, last] each): a batch's values are one run, and their commit one step."""

    __slots__ = ("runs",)

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self.runs: deque[list[int]] = deque()
        for seq in seqs:
            self.add(seq, seq)

    def __bool__(self) -> bool:
        return bool(self.runs)

    def __iter__(self) -> Iterator[int]:
        for first, last in self.runs:
            yield from range(first, last + 1)

    @property
    def oldest(self) -> int:
        return self.runs[0][0]

    def append(self, seq: int) -> None:
        self.add(seq, seq)

    def add(self, first: int, last: int) -> None:
        """Seqs first..last (newer than every one here) are queued."""
        runs = self.runs
        if runs and runs[-1][1] == first - 1:
            runs[-1][1] = last
        else:
            runs.append([first, last])

    def done(self, first: int, last: int) -> None:
        """Seqs first..last are done (those of them that are here)."""
        runs = self.runs
        if runs:
            head = runs[0]
            if head[0] == first and last <= head[1]:  # the oldest ones: the usual case
                if last == head[1]:
                    runs.popleft()
                else:
                    head[0] = last + 1
                return
        for seq in range(first, last + 1):
            self._remove(seq)

    def _remove(self, seq: int) -> None:
        runs = self.runs
        for i, run in enumerate(runs):
            first, last = run
            if seq > last:
                continue
            if seq < first:
                return
            if first == last:
                del runs[i]
            elif seq == first:
                run[0] = seq + 1
            elif seq == last:
                run[1] = seq - 1
            else:
                run[1] = seq - 1
                runs.insert(i + 1, [seq + 1, last])
            return

    def clear(self) -> None:
        self.runs.clear()


@dataclass
class SourceState:
    """What the inbox knows of one source's stream."""

    careful: int  # messages still to acknowledge one by one (it replays to us: we restarted)
    instance: int = -1
    generation: int = 0  # which instance of the source queued items came from (inbox-wide)
    received: int = 0  # highest seq taken off the wire (duplicates are at or below it)
    acked: int = 0
    eos_seq: int = 0
    route: bytes = b""
    wants_acks: bool = True
    ack_every: int = 1  # its messages are acknowledged every this many (Inbox._on_presence)
    # seqs queued or being processed, oldest first: everything below the first one is done
    open: OpenSeqs = field(default_factory=OpenSeqs)
    window: dict[Stream, int] = field(default_factory=dict)  # origin stream -> highest seq
    pipeline: str = ""  # its fan-in source: the pipeline (NAME of a replica NAME#TAG-K)
    replays: Replays | None = None  # its pipeline's, where windows cannot be kept (module doc)
    order: str | None = None  # a replica's: the order stream its values carry ("#" + NAME)
    reorder: Reorder | None = None  # NAME's re-sequencer (None: the ids are only stripped)
    resumed: bool = False  # its first message here followed some acknowledged before we started
    replaying: bool = False  # it said it replays what an earlier instance of ours was sent

    @property
    def processed(self) -> int:
        """The highest seq up to which every message is done (processed or dropped)."""
        return self.open.oldest - 1 if self.open else self.received

    def seen(self, origin: Origin) -> bool:
        """Whether a value of `origin` came before (else: remember it, it is new)."""
        window = self.window
        new = False
        for i in range(0, len(origin), 2):
            stream, seq = origin[i], origin[i + 1]
            if seq > window.get(stream, 0):
                if stream not in window and len(window) >= MAX_STREAMS:
                    del window[next(iter(window))]  # the oldest stream
                window[stream] = seq
                new = True
        return not new


SEQ_AT = 12  # where a header's seq is (porch/wire.py's layout)
_DATA_KIND = bytes([FrameKind.DATA | ORIGINS])  # a DATA header's kind byte, with origins
COPY_BELOW = 4096  # a lone frame's payload is copied out (not viewed) below this size
_ONE_TAIL = struct.Struct("!IIBBQ")  # an origins section's one run of one id (porch/wire.py)
_COUNT = struct.Struct("!I")  # a batch's count word (porch/wire.py)
_RCVMORE = int(zmq.RCVMORE)  # (a plain int: getsockopt() with the enum looks it up)


@dataclass
class LoneForm:
    """What a plain source's lone DATA frames look like (Inbox.receive_lone): the bytes
    before the seq (version, kind, serializer, name length, instance), those between it and
    the origin seq (the name, the one-stream origins table, the run's count and width),
    where the payload starts; what they mean."""

    prefix: bytes
    middle: bytes
    layout: struct.Struct  # prefix, seq, middle, origin seq
    payload_at: int
    source: SourceState
    instance: int
    stream: Stream
    loads: Callable[[Any], Any]
    queue: deque[Item]  # the fan-in's queue of the one source


@dataclass
class BatchForm:
    """What a plain source's WHOLE batches of one origin run look like (Inbox._take_batch):
    the bytes before the seq (version, kind, serializer, name length, instance), those
    between it and the run (the name, the one-stream origins table), where the values start;
    what they mean."""

    middle: bytes
    layout: struct.Struct  # prefix, seq, middle, runs, count, width, index, origin seq, word
    payload_at: int
    source: SourceState
    sender: str
    instance: int
    stream: Stream


MAX_FORMS = 64  # batch forms remembered (by prefix: a source instance's)


def _one_frame(loads: Callable[[Sequence[Any]], Any]) -> Callable[[Any], Any]:
    """A serializer's loads() of one frame."""
    return lambda frame: loads([frame])


@dataclass
class Undecodable:
    """A well-formed data message whose payload did not decode. It takes the value's place
    in the input, so that the pipeline's on_error decides: it is never dropped quietly."""

    source: str
    error: str  # what failed, the type where known, and the fix
    payload: list[bytes]

    def __repr__(self) -> str:
        size = sum(len(frame) for frame in self.payload)
        return f"<undecodable value from {self.source!r}, {size} bytes>"


@dataclass
class InboxCounters:
    """What the inbox counts for health reports."""

    msgs_in: int = 0
    duplicates: int = 0  # by link seq or by origin
    bad_frames: int = 0
    unpaired: int = 0  # join values dropped: their partner was filtered out or never comes
    reorder_window_overflow: int = 0  # gaps of ordered sources given up (workers/reorder.py)

    def overflowed(self) -> None:
        """An ordered source's gap was given up."""
        self.reorder_window_overflow += 1


class Intake:
    """Decodes data messages into queued values: each value once (by link seq and by origin),
    in the fan-in's queue of its source; a payload that does not decode queues an
    Undecodable in its place."""

    def __init__(self, fanin: FanIn, counters: InboxCounters, serializer: Serializer) -> None:
        self.fanin = fanin
        self.counters = counters
        self.serializer = serializer  # the pipeline's own (json refuses the others)
        self.undecodable = 0  # Undecodable values queued (the worker looks for them if any)

    def accept_one(
        self, header: Header, source: SourceState, message: list[bytes], end: int
    ) -> None:
        runs = header.origins
        if runs and (len(runs) != 1 or runs[0][0] != 1):
            raise WireError("a DATA message's origins must be one run of one")
        origin = runs[0][1] if runs else ()
        first = message[1]
        payload = [memoryview(first)[end:], *message[2:]] if len(first) > end else message[2:]
        source.received = header.seq
        if origin and self._duplicate(source, origin):
            self.counters.duplicates += 1
            return
        value = self._decode(header.serializer, payload, header.sender) if payload else SKIP
        source.open.append(header.seq)
        self._queue(source, (header.seq, value, origin, source.generation))
        self.counters.msgs_in += 1

    @staticmethod
    def _duplicate(source: SourceState, origin: Origin) -> bool:
        """Whether a value of `origin` came before (by window, or from another instance)."""
        replays = source.replays
        if replays is None:
            return source.seen(origin)
        return replays.replayed(origin, source.generation)

    def _queue(self, source: SourceState, item: Item) -> None:
        """Queue one value in the fan-in: at once, or (an ordered source's) in its order."""
        if source.order is None:
            self.fanin.push(source.pipeline, item)
            return
        origin, stream, seq = split_order(item[2], source.order)
        if stream is None:  # sent without an order id (its sender numbers nothing)
            self.fanin.push(source.pipeline, item)
            return
        item = (item[0], item[1], origin, item[3])
        if source.reorder is None:
            self.fanin.push(source.pipeline, item)
        else:
            source.reorder.add(stream, seq, item, source.resumed)

    def accept_batch(self, header: Header, source: SourceState, frame: bytes, end: int) -> None:
        batch = read_batch(frame, end)
        serializer = BY_ID.get(header.serializer)
        if serializer is None:
            raise WireError(f"unknown serializer id {header.serializer}")
        refused = self._refusal(serializer, header.sender)
        total = len(batch.lengths)
        runs = header.origins or ((total, ()),)
        if (runs[0][0] if len(runs) == 1 else sum(count for count, _ in runs)) != total:
            raise WireError("a batch's origin runs do not cover its values")
        # the values in one call (a pickled batch), else each payload to decode alone
        parts: list[Any] | None = None
        if batch.whole:  # one pickle of the list of the values (a source's burst)
            if refused:  # each value said refused, as it would be alone (the frame for each)
                parts = [batch.region] * len(batch.lengths)
            else:
                parts = _load_whole(serializer, batch.region, len(batch.lengths))
        elif batch.pickled and not refused and serializer.loads_batch is not None:
            parts = serializer.loads_batch(batch.region, len(batch.lengths))
            if parts is not None and 0 in batch.lengths:
                parts = [v if n else SKIP for v, n in zip(parts, batch.lengths, strict=True)]
        decoded = parts is not None and not (batch.whole and refused)
        if parts is None:
            parts = batch.parts()
        seq = header.seq
        index = 0
        windows = source.replays is None  # (a replica's values go one by one)
        # every value decoded, or None: each goes on its own (one that does not decode is
        # queued as an Undecodable, for on_error: never the whole batch; a replica's: Replays)
        values = self._all_values(serializer, parts, decoded, refused) if windows else None
        for count, first in runs:
            if values is not None and (
                not first or (len(first) == 2 and first[1] > source.window.get(first[0], 0))
            ):  # the hot path: every value new (seqs are past what was received)
                self._accept_span(source, seq, values if count == len(values)
                                  else values[index : index + count], first,
                                  batch.whole)  # fmt: skip
            elif len(first) == 2 and windows:  # some seen before (a replay): one by one
                self._accept_run(header.sender, source, serializer, parts[index : index + count],
                                 seq, first, refused, decoded)  # fmt: skip
            else:
                for i, part in enumerate(parts[index : index + count]):
                    self._accept_item(header.sender, source, serializer, part, seq + i,
                                      shift(first, i), refused, decoded)  # fmt: skip
            seq += count
            index += count

    def _all_values(
        self, serializer: Serializer, parts: list[Any], decoded: bool, refused: str
    ) -> list[Any] | None:
        """A batch's values (`decoded`: `parts` are), or None when one of them goes alone."""
        if decoded:
            return parts
        return None if refused else self._decode_all(serializer, parts)

    @staticmethod
    def _decode_all(serializer: Serializer, parts: list[memoryview]) -> list[Any] | None:
        """Every value of a batch (a skip marker: SKIP), or None if one does not decode."""
        loads = serializer.loads_one or _one_frame(serializer.loads)
        try:
            return [loads(part) if part else SKIP for part in parts]
        except Exception:
            return None

    def _accept_span(
        self, source: SourceState, seq: int, values: list[Any], first: Origin, whole: bool = False
    ) -> None:
        """New values of consecutive seqs (and origin seqs of `first`'s one stream, if any):
        queued as one Span for one source, else one item each (`whole`: a WHOLE batch's,
        small plain values: none is a skip marker, porch/wire.py)."""
        count = len(values)
        last = seq + count - 1
        source.received = last
        source.open.add(seq, last)
        if first:
            stream, origin_seq = first
            window = source.window
            if stream in window:  # (accept_batch found the first one past it: all are new)
                window[stream] = origin_seq + count - 1
            else:
                source.seen((stream, origin_seq + count - 1))
        else:
            stream, origin_seq = None, 0
        self.counters.msgs_in += count
        fanin = self.fanin
        generation = source.generation
        if fanin.expected == 1:
            fanin.single()[1].append(Span(seq, values, stream, origin_seq, generation))
            return
        if fanin.takes_spans():  # a two-source join: it pairs Spans
            span = Span(seq, values, stream, origin_seq, generation)
            if whole:  # (not looked for: Span.marked)
                span.skips = False
            fanin.push_span(source.pipeline, span)
            return
        push = fanin.appender(source.pipeline)
        if stream is None:
            for i, value in enumerate(values):
                push((seq + i, value, (), generation))
        else:
            for i, value in enumerate(values):
                push((seq + i, value, (stream, origin_seq + i), generation))

    def _accept_run(
        self,
        name: str,
        source: SourceState,
        serializer: Serializer,
        parts: list[Any],
        seq: int,
        first: Origin,
        refused: str,
        decoded: bool,
    ) -> None:
        """Consecutive values of one origin stream (the hot path: a source's batch); `parts`
        are the values if `decoded`, else their payloads."""
        loads = serializer.loads_one or _one_frame(serializer.loads)
        push = self.fanin.appender(source.pipeline)
        opened = source.open.append
        generation = source.generation
        received = source.received
        stream, origin_seq = first
        window = source.window
        highest = window.get(stream, 0)
        accepted = 0
        for part in parts:
            if seq > received:
                received = seq
                if origin_seq > highest:
                    value: Any
                    if decoded:
                        value = part
                    elif not part:
                        value = SKIP  # a skip marker
                    else:
                        try:
                            if refused:
                                raise WireError(refused)
                            value = loads(part)
                        except Exception as exc:
                            value = self._undecodable(serializer, [part], exc, name)
                    opened(seq)
                    push((seq, value, (stream, origin_seq), generation))
                    highest = origin_seq
                    accepted += 1
            seq += 1
            origin_seq += 1
        self.counters.duplicates += len(parts) - accepted
        self.counters.msgs_in += accepted
        source.received = received
        if accepted:
            source.seen((stream, highest))

    def _accept_item(
        self,
        name: str,
        source: SourceState,
        serializer: Serializer,
        part: Any,
        seq: int,
        origin: Origin,
        refused: str,
        decoded: bool,
    ) -> None:
        if seq <= source.received:
            self.counters.duplicates += 1
            return
        source.received = seq
        replays = source.replays
        if origin and (
            source.seen(origin) if replays is None else replays.replayed(origin, source.generation)
        ):
            self.counters.duplicates += 1
            return
        value: Any
        if decoded:
            value = part
        elif not part:
            value = SKIP  # a skip marker
        else:
            try:
                if refused:
                    raise WireError(refused)
                value = serializer.loads([part])
            except Exception as exc:
                value = self._undecodable(serializer, [part], exc, name)
        source.open.append(seq)
        self._queue(source, (seq, value, origin, source.generation))
        self.counters.msgs_in += 1

    def _refusal(self, serializer: Serializer, sender: str) -> str:
        """Why this pipeline will not decode `serializer` payloads at all ("" if it will)."""
        if self.serializer.name == "json" and serializer.name != "json":
            return (f"refusing {serializer.name} data from '{sender}': this pipeline accepts "
                    f"json only; fix: set \"serializer\": \"json\" on '{sender}'")  # fmt: skip
        return ""

    def _undecodable(
        self, serializer: Serializer, frames: Sequence[Any], exc: Exception, sender: str
    ) -> Undecodable:
        payload = [bytes(frame) for frame in frames]
        if isinstance(exc, WireError):  # refused unread
            error = str(exc)
        else:
            error = decode_failure(serializer.name, payload[0] if payload else b"", exc, sender)
        self.undecodable += 1
        return Undecodable(sender, error, payload)

    def _decode(self, serializer_id: int, frames: Sequence[Any], sender: str) -> Any:
        """The value, or an Undecodable in its place (the payload is well-framed: a member
        sent it, so the pipeline's on_error decides, not the wire layer)."""
        serializer = BY_ID.get(serializer_id)
        if serializer is None:
            raise WireError(f"unknown serializer id {serializer_id}")
        if not frames:
            raise WireError("data message without payload")
        try:
            if refused := self._refusal(serializer, sender):
                raise WireError(refused)
            return serializer.loads(frames)
        except Exception as exc:
            return self._undecodable(serializer, frames, exc, sender)


class Inbox:
    """Receives, deduplicates, queues and acknowledges a pipeline's input."""

    def __init__(
        self,
        ctx: Context,
        host: str,
        *,
        name: str,
        instance: int,
        expected: int,
        any_input: bool,
        serializer: Serializer,
        limit: int,
        security: LinkSecurity | None = None,
        local: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = InputLink(ctx, host, limit, security, local)
        self.fanin = FanIn(expected, any_input)
        self.fanin.before_end = self._flush_order
        self.name = name
        self.replica = is_replica(name)  # one replica of a replicated pipeline
        self.sources: dict[str, SourceState] = {}  # by process name (a replica's: NAME#TAG-K)
        self._owners: dict[int | None, SourceState] = {}  # current generation -> its source
        self._generations = itertools.count(1)
        self._reorders: dict[str, Reorder] = {}  # ordered sources' re-sequencers by pipeline
        self._replays: dict[str, Replays] = {}  # by source pipeline (module doc)
        self._holding = True  # False once a stop released what the re-sequencers hold
        self._clock = clock
        self.departed: set[str] = set()
        self._rejected: set[tuple[str, int]] = set()
        self.counters = InboxCounters()
        self.intake = Intake(self.fanin, self.counters, serializer)
        self._careful = limit
        # A sender's window (its queue_limit, by default ours) leaves in frames of up to
        # MAX_BATCH (256) values: 1,000 as 256 + 256 + 256 + 232. Acked every limit // 2
        # (500), inputs taken frame by frame were acked at 512, and then not before 1,256
        # (the 488 after it fell short): the sender, one frame ahead, had its window full
        # and waited for that ack. Two fifths (400) acks after every two frames either way.
        self._ack_every = max(1, limit * 2 // 5)
        self._acks = HeaderEncoder(0, instance, name)
        self._fill = any_input and expected > 1  # sets name every source (None: no value)
        self.deferral: Deferral | None = None  # a replica's end-to-end acks (deferred.py)
        self._lone: LoneForm | None = None  # the last lone DATA frame's form (receive_lone)
        self._forms: dict[bytes, BatchForm] = {}  # plain sources' WHOLE batches, by prefix

    @property
    def undecodable(self) -> int:
        """Undecodable values queued (the worker looks for them if any)."""
        return self.intake.undecodable

    @undecodable.setter
    def undecodable(self, count: int) -> None:
        self.intake.undecodable = count

    @property
    def endpoint(self) -> str:
        """Where sources connect."""
        return self.link.endpoint

    # ---- receiving -----------------------------------------------------------------------

    def receive(self) -> None:
        """Take every waiting message off the socket; bad ones are dropped and counted."""
        for message in self.link.receive(RECV_BATCH):
            try:
                self._accept(message)
            except WireError as exc:
                self.counters.bad_frames += 1
                log.warning("bad_frame_dropped", pipeline=self.name, reason=str(exc),
                            total=self.counters.bad_frames)  # fmt: skip

    def receive_lone(self) -> Item | None:
        """Receive what woke an idle stage (the idle path: one value, nothing queued).

        The first message waiting, if it is a DATA message of one frame next in the stream
        of the source whose frames it looks like (LoneForm: the same sender, instance,
        serializer and origin stream as that source's last one), on its connection, of a new
        origin, that decodes, is taken as accept_one() would take it, but returned instead
        of queued: the caller runs it at once and commits it (what waits behind it is read
        after). Anything else is received and queued as receive() does, with what waits
        behind it (then None)."""
        sock = self.link.socket
        try:  # (a ROUTER's message: the sender's route, then at least one frame)
            route = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        frame = sock.recv()
        if sock.get(_RCVMORE):  # payload frames of their own: the regular path
            message: list[Any] = [route, frame]
            while sock.get(_RCVMORE):
                message.append(sock.recv(copy=False).buffer)
            self._accept_logged(message)
            self._receive_rest()
            return None
        form = self._lone
        known = False
        if form is not None and len(frame) > form.payload_at:  # (not a skip marker)
            head, seq, middle, origin_seq = form.layout.unpack_from(frame)
            if head == form.prefix and middle == form.middle:
                item = self._take_lone(form, route, seq, origin_seq, frame)
                if item is not None:
                    return item
                known = True  # something else sends it the regular way
        self._accept_logged([route, frame])
        if not known and frame[1:2] == _DATA_KIND:
            self._learn(frame)
        self._receive_rest()
        return None

    def _receive_rest(self) -> None:
        """receive() what else waits (receive_lone took a message the regular way)."""
        if readable(self.link.socket):
            self.receive()

    def _take_lone(
        self, form: LoneForm, route: bytes, seq: int, origin_seq: int, frame: bytes
    ) -> Item | None:
        """The value of a frame of `form`, taken as accept_one() would (receive_lone), or
        None (nothing changed) when the regular path must take it."""
        source = form.source
        stream = form.stream
        window = source.window
        if (
            seq != source.received + 1  # past a gap, or a duplicate
            or origin_seq <= window.get(stream, 0)  # a value we have
            or route != source.route
            or source.instance != form.instance
            or self.departed
            or form.queue  # (the only source's queue: empty)
        ):
            return None
        at = form.payload_at
        try:  # (a copy of a small payload loads faster than a memoryview of it)
            value = form.loads(frame[at:] if len(frame) < COPY_BELOW else memoryview(frame)[at:])
        except Exception:  # the regular path makes it an Undecodable
            return None
        source.received = seq
        if stream in window:
            window[stream] = origin_seq
        else:
            source.seen((stream, origin_seq))
        source.open.append(seq)
        self.counters.msgs_in += 1
        return seq, value, (stream, origin_seq), source.generation

    def _learn(self, frame: bytes) -> None:
        """Remember the form of a plain source's lone DATA frame (receive_lone), if it is
        one: one value of one origin id, its payload in the header's frame."""
        try:
            header, end = decode_prefix(frame)
        except WireError:
            return
        source = self.sources.get(header.sender)
        runs = header.origins
        if (
            header.kind is not FrameKind.DATA
            or source is None
            or source.replays is not None
            or source.order is not None
            or len(runs) != 1
            or runs[0][0] != 1
            or len(runs[0][1]) != 2
            or len(frame) <= end
            or source.instance != header.instance
        ):
            return
        stream, origin_seq = runs[0][1]
        if _ONE_TAIL.unpack_from(frame, end - _ONE_TAIL.size) != (1, 1, 1, 0, origin_seq):
            return
        serializer = BY_ID.get(header.serializer)
        if serializer is None or self.intake._refusal(serializer, header.sender):
            return
        loads = serializer.loads_one or _one_frame(serializer.loads)
        prefix, middle = frame[:SEQ_AT], frame[HEADER_SIZE : end - 8]
        layout = struct.Struct(f"!{SEQ_AT}sQ{len(middle)}sQ")
        queue = self.fanin.single()[1]
        self._lone = LoneForm(prefix, middle, layout, end, source, header.instance, stream,
                              loads, queue)  # fmt: skip

    def _accept_logged(self, message: list[bytes]) -> None:
        """_accept(), a bad message dropped and counted."""
        try:
            self._accept(message)
        except WireError as exc:
            self.counters.bad_frames += 1
            log.warning("bad_frame_dropped", pipeline=self.name, reason=str(exc),
                        total=self.counters.bad_frames)  # fmt: skip

    def _accept(self, message: list[bytes]) -> None:
        if len(message) == 2:  # (a batch of a known form: _take_batch)
            form = self._forms.get(message[1][:SEQ_AT])
            if form is not None and self._take_batch(form, message[0], message[1]):
                return
        self._accept_header(message)

    def _accept_header(self, message: list[bytes]) -> None:
        """_accept() of a message whose header is decoded first (the regular path)."""
        if len(message) < 2:
            raise WireError("message without a header frame")
        header, end = decode_prefix(message[1])
        source = self.sources.get(header.sender) or self._new_source(header.sender)
        kind = header.kind
        if kind is FrameKind.HELLO or kind is FrameKind.BYE:
            self._on_presence(header, source, message[0])
            return
        if kind is FrameKind.ACK:
            raise WireError("an ACK on an input socket")
        if header.instance != source.instance:
            if source.instance != -1:
                self._reject_instance(header)
            self._on_new_instance(header, source)
        if self._passed_over(header, source, message[0]):
            return
        self.departed.discard(header.sender)
        if not source.received and not source.open:  # the first message of this link:
            source.received = header.seq - 1  # everything before it was acknowledged
            source.resumed = header.seq > 1  # (by an earlier instance of ours)
        if kind is FrameKind.DATA_BATCH:
            self.intake.accept_batch(header, source, message[1], end)
            self._learn_batch(header, source, message, end)
        elif kind is FrameKind.DATA:
            self.intake.accept_one(header, source, message, end)
        else:  # EOS
            source.received = source.eos_seq = header.seq
            log.info("source_ended", pipeline=self.name, source=header.sender)
            self.fanin.end(header.sender)
            self._confirm_end(source, header.seq)
            if source.reorder is not None:
                self._settle_order(source)

    def _take_batch(self, form: BatchForm, route: bytes, frame: bytes) -> bool:
        """Take a WHOLE batch of `form` as _accept() would, without decoding its header:
        one unpack; True when taken (a batch that does not load is a WireError, as there).
        False (nothing changed) when the regular path must take it: another layout or run, a
        gap, a duplicate, another connection or instance, a departed source, a seen origin."""
        if len(frame) <= form.payload_at:
            return False
        _, seq, middle, runs, count, width, index, origin_seq, word = form.layout.unpack_from(frame)
        source = form.source
        stream = form.stream
        if (
            middle != form.middle
            or word != count | WHOLE
            or runs != 1
            or width != 1
            or index != 0
            or not 0 < count <= MAX_BATCH_COUNT
            or seq != source.received + 1  # past a gap, or a duplicate
            or route != source.route
            or source.instance != form.instance
            or origin_seq <= source.window.get(stream, 0)  # values we have
            or form.sender in self.departed
        ):
            return False
        values = load_whole(memoryview(frame)[form.payload_at :], count)
        self.intake._accept_span(source, seq, values, (stream, origin_seq), True)
        return True

    def _learn_batch(
        self, header: Header, source: SourceState, message: list[bytes], end: int
    ) -> None:
        """Remember the form of a plain source's WHOLE batch of one origin run of one stream
        (pickle), if it is one and its form is new (_take_batch)."""
        runs = header.origins
        frame = message[1]
        if (
            len(message) != 2
            or len(runs) != 1
            or len(runs[0][1]) != 2
            or source.replays is not None
            or source.order is not None
            or source.instance != header.instance
            or len(frame) < end + 4
            or not _COUNT.unpack_from(frame, end)[0] & WHOLE
            or frame[HEADER_SIZE + len(header.sender.encode("utf-8"))] != 1  # one stream
        ):
            return
        count, (stream, origin_seq) = runs[0]
        if _ONE_TAIL.unpack_from(frame, end - _ONE_TAIL.size) != (1, count, 1, 0, origin_seq):
            return
        serializer = BY_ID.get(header.serializer)
        if (
            serializer is None
            or serializer.name != "pickle"
            or self.intake._refusal(serializer, header.sender)
        ):
            return
        prefix, middle = frame[:SEQ_AT], frame[HEADER_SIZE : end - _ONE_TAIL.size]
        form = self._forms.get(prefix)
        if form is not None and (form.middle == middle or form.source is not source):
            return  # (known; or another source's of the same prefix: it keeps it)
        if len(self._forms) >= MAX_FORMS:
            self._forms.clear()
        layout = struct.Struct(f"!{SEQ_AT}sQ{len(middle)}sIIBBQI")
        self._forms[prefix] = BatchForm(middle, layout, end + 4, source, header.sender,
                                        header.instance, stream)  # fmt: skip

    def _passed_over(self, header: Header, source: SourceState, route: bytes) -> bool:
        """Whether a data message or end is not taken: a duplicate, or one that came past a
        gap on a connection the source gave up (_on_route)."""
        if header.seq <= source.received:
            self.counters.duplicates += 1
            if header.kind is FrameKind.EOS and header.seq == source.eos_seq:
                self._confirm_end(source, header.seq)  # our confirmation was lost: again
            return True
        return not self._on_route(header, source, route)

    @staticmethod
    def _on_route(header: Header, source: SourceState, route: bytes) -> bool:
        """Whether to take a new message of an acknowledged source from connection `route`.

        Its HELLO says which connection it reads our acks on. A sender whose connection died
        (heartbeats: we were not reading) opens a new one, says HELLO there and sends every
        unacknowledged message again; the dead connection's last messages, and those ZeroMQ's
        own reconnect of its old socket carried before that, are read in between. They are
        taken when they are next in sequence, but never take the acks back to a connection
        the sender no longer reads (it would wait for them forever); one past a gap is not
        taken: what is missing went down with the dead connection, and its replay would be
        dropped as a duplicate once a later seq was taken (and acknowledged)."""
        if route == source.route or not source.route or not source.wants_acks:
            source.route = route
            return True
        return header.seq == source.received + 1

    def _new_source(self, name: str) -> SourceState:
        try:
            self.fanin.connect(name)
        except TooManySources:
            raise WireError(
                f"unexpected source {name!r}: source_pipeline_count is "
                f"{self.fanin.expected} and {self.fanin.sources} already connected"
            ) from None
        log.info("source_connected", pipeline=self.name, source=name)
        source = self.sources[name] = SourceState(careful=0, pipeline=name)
        source.ack_every = self._ack_every
        if is_replica(name):
            source.pipeline = pipeline_of(name)
            source.order = order_stream(source.pipeline)
            if not self.replica:  # a replica sees some of the order ids: it only strips them
                source.reorder = self._reorder(source.pipeline)
        if self.replica or is_replica(name):  # values may come out of order: a hand-over
            source.replays = self._replays.setdefault(source.pipeline, Replays())
        return source

    def _reorder(self, pipeline: str) -> Reorder:
        """The re-sequencer of an ordered source pipeline (made when its first replica came)."""
        reorder = self._reorders.get(pipeline)
        if reorder is None:
            push = self.fanin.push
            reorder = Reorder(pipeline, self.name, lambda item: push(pipeline, item),
                              self._clock, self.counters.overflowed, self._replayed,
                              functools.partial(self._all_past, pipeline))  # fmt: skip
            reorder.holding = self._holding
            self._reorders[pipeline] = reorder
        return reorder

    def _all_past(self, pipeline: str, senders: Iterable[int | None]) -> bool:
        """Whether these sender instances (generations) are every replica of `pipeline` that
        may still send (connected, live, not stopped): each is past a gap they all hold."""
        holding = set(senders)
        live = self.fanin.live_replicas(pipeline)
        for name in live:
            if name in self.departed:
                continue
            source = self.sources.get(name)
            if source is None or source.generation not in holding:
                return False
        return bool(live)

    def _replayed(self, item: Item) -> None:
        """An ordered source's replica sent a value another instance of one sent already:
        drop it as a duplicate (it is done: acknowledged with the rest)."""
        self.counters.duplicates += 1
        self.counters.msgs_in -= 1
        self.commit_one(item[0], item[3])

    def _flush_order(self, pipeline: str) -> None:
        """A replicated source's stream ends: deliver what its re-sequencer holds, in order."""
        reorder = self._reorders.get(pipeline)
        if reorder is not None:
            reorder.flush()

    def _settle_order(self, source: SourceState) -> None:
        """No replica of an ordered source sends any more (each ended or stopped): deliver what
        is held, in order (the gaps will not be filled soon, and stopped replicas wait for our
        acknowledgements until their stop deadline)."""
        fanin, departed = self.fanin, self.departed
        members = fanin.members(source.pipeline)
        if source.reorder is not None and all(m in departed or fanin.has_ended(m) for m in members):
            source.reorder.flush()

    def release_held(self) -> None:
        """We are stopping: what ordered sources' values wait for may not come before we stop
        (their senders wait for our acknowledgements), so deliver it all now, in order."""
        if self._holding:
            self._holding = False
            for reorder in self._reorders.values():
                reorder.release()

    def expire_order(self, now: float) -> None:
        """Give up the gaps in ordered sources' values that are too old (`now`: the clock's)."""
        for reorder in self._reorders.values():
            reorder.expire(now)

    def _reject_instance(self, header: Header) -> None:
        """Every connection starts with HELLO, which switches to a restarted source's new
        instance; data from another instance means two live pipelines share the name."""
        key = (header.sender, header.instance)
        if key not in self._rejected:
            self._rejected.add(key)
            log.error("duplicate_source", pipeline=self.name, source=header.sender,
                      instance=header.instance,
                      hint="two live pipelines with this name? their data is dropped")  # fmt: skip
        raise WireError(f"data from a second instance of source {header.sender!r}")

    def _on_presence(self, header: Header, source: SourceState, route: bytes) -> None:
        if header.instance != source.instance and header.kind is FrameKind.HELLO:
            self._on_new_instance(header, source)
        elif header.instance != source.instance:
            return  # a BYE from an instance that is no longer the current one
        if header.kind is FrameKind.BYE:
            log.info("source_departed", pipeline=self.name, source=header.sender)
            self.departed.add(header.sender)
            if not source.wants_acks:
                source.route = route
                self._confirm_end(source, source.received)
            if source.reorder is not None:
                self._settle_order(source)
        else:
            self.departed.discard(header.sender)
            source.wants_acks = not header.seq & HELLO_NO_ACKS
            # a sender whose window (its queue_limit) is smaller than our limit is acknowledged
            # every two fifths of its window (see _ack_every), not of ours: it would be full
            # before an ack is due, and wait for our idle ack
            window = header.seq >> HELLO_WINDOW
            every = self._ack_every
            source.ack_every = min(every, max(1, window * 2 // 5)) if window else every
            if header.seq & HELLO_REPLAY:  # (a HELLO again on a stuck link says nothing of it)
                source.replaying = True
                source.careful = self._careful  # (we restarted: maybe we crashed on one)
            # the same source on a new connection (it reopened its link after a cut): acks go
            # there now, and what was acknowledged on the dead one may never have arrived
            source.route = route
            if source.processed:
                self._ack(source)

    def _on_new_instance(self, header: Header, source: SourceState) -> None:
        """The source restarted: its sequence numbers start again."""
        if source.instance != -1:
            log.info("source_restarted", pipeline=self.name, source=header.sender)
        source.instance = header.instance
        source.received = source.acked = source.eos_seq = 0
        source.replaying = False
        # what the old instance left queued is still processed, but its sequence numbers
        # mean nothing to the new instance: they must never be acknowledged to it
        self._owners.pop(source.generation, None)
        source.generation = next(self._generations)
        self._owners[source.generation] = source
        source.open = OpenSeqs()
        self.fanin.connect(header.sender)  # a new stream: forget an earlier end

    # ---- taking input --------------------------------------------------------------------

    def take(self) -> tuple[Inputs, Taken, Origin, bool]:
        """One input set: the values by source name, the items taken (for commit()), their
        origin (the union), and whether it holds a skip marker (then there is nothing to do
        but pass the marker on)."""
        taken = self.fanin.pop()
        if len(taken) == 1 and not self._fill:
            for name, item in taken.items():
                value = item[1]
                return {name: value}, taken, item[2], value is SKIP
        values: Inputs = {}
        origin: Origin = ()
        marked = False
        for name, item in taken.items():
            value = values[name] = item[1]
            if value is SKIP:
                marked = True
            origin = union(origin, item[2]) if origin else item[2]
        if self._fill and len(values) < len(self.fanin.sources):
            values = {name: values.get(name) for name in self.fanin.sources}
        if marked:
            self.counters.unpaired = self.fanin.unpaired
        return values, taken, origin, marked

    def commit(self, taken: Taken) -> None:
        """An iteration consumed these: acknowledge them (at once, or batched)."""
        for item in taken.values():
            self.commit_one(item[0], item[3])

    def commit_one(self, seq: int, generation: int | None) -> None:
        """An iteration consumed message `seq` of the source instance `generation`: acknowledge
        it (at once, or batched; a replica's once its outputs are: workers/deferred.py)."""
        if self.deferral is not None:
            self.deferral.defer(seq, generation)
        else:
            self.apply_commit(seq, generation)

    def commit_span(self, first: int, last: int, generation: int | None) -> None:
        """An iteration each consumed messages first..last (consecutive, in order) of the source
        instance `generation`: commit_one of each, at once (acked as one, if due)."""
        if self.deferral is not None:
            defer = self.deferral.defer
            for seq in range(first, last + 1):
                defer(seq, generation)
            return
        source = self._owners.get(generation)
        if source is None:
            return
        source.open.done(first, last)
        if source.careful:  # (the burst takes a careful source's inputs one by one)
            source.careful = max(0, source.careful - (last - first + 1))
            self._ack(source)
        elif last - source.acked >= source.ack_every:
            self._ack(source)

    def careful(self, generation: int | None) -> bool:
        """Whether the inputs of source instance `generation` are still acknowledged one by
        one, each at once (right after our start): commit each before the next step()."""
        source = self._owners.get(generation)
        return source is not None and source.careful > 0

    def apply_commit(self, seq: int, generation: int | None) -> None:
        """Message `seq` of the source instance `generation` is done: acknowledge it (at once,
        or batched); nothing for a placeholder or an item of an earlier instance."""
        source = self._owners.get(generation)
        if source is None:
            return
        source.open.done(seq, seq)
        if source.careful:
            source.careful -= 1
            self._ack(source)
        elif seq - source.acked >= source.ack_every:
            self._ack(source)

    @property
    def resuming(self) -> bool:
        """Whether a source that replays what an earlier instance of ours was sent (we
        restarted: maybe we crashed on it) is still acknowledged one by one."""
        return any(source.careful and source.replaying for source in self.sources.values())

    def flush_acks(self) -> None:
        """Acknowledge everything consumed (and ends whose data is all consumed)."""
        for source in self.sources.values():
            if source.processed > source.acked:
                self._ack(source)

    def discard_rest(self) -> int:
        """The stream is over: acknowledge what will never be processed; return how much."""
        left = self.fanin.depth()
        for reorder in self._reorders.values():
            left += reorder.held
            reorder.streams.clear()
        for source in self.sources.values():
            if self.deferral is None:
                source.open.clear()
            else:  # what was processed is acknowledged once its outputs are
                held = self.deferral.holds(source.generation)
                source.open = OpenSeqs(seq for seq in source.open if seq in held)
        self.flush_acks()
        return left

    def _confirm_end(self, source: SourceState, seq: int) -> None:
        """An unacknowledged (at-most-once) source's EOS or BYE was read: everything it sent
        before is off the socket. Say so (its one ack), so that it keeps its connection open
        until then: over ipc://, ZeroMQ drops what a receiver that is behind has not read yet
        when the sender's socket closes (the hang-up ends the connection at once)."""
        if source.route and not source.wants_acks:
            self.link.ack(source.route, self._acks.encode(FrameKind.ACK, seq))

    def _ack(self, source: SourceState) -> None:
        if source.route and source.wants_acks:
            processed = source.processed
            self.link.ack(source.route, self._acks.encode(FrameKind.ACK, processed))
            source.acked = processed

    # ---- state ---------------------------------------------------------------------------

    def quiet(self) -> bool:
        """Whether every source (each replica of one) has ended its stream or said it stopped."""
        fanin, departed = self.fanin, self.departed
        return all(
            fanin.has_ended(source)
            or all(name in departed or fanin.has_ended(name) for name in fanin.members(source))
            for source in fanin.sources
        )

    def held(self) -> int:
        """Values queued, and held back by ordered sources' re-sequencers."""
        return self.fanin.depth() + sum(r.held for r in self._reorders.values())

    def close(self) -> None:
        """Close the socket."""
        self.link.close()
