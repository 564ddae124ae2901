"""The data-plane wire format: typed frames, never pickled control objects.

A data-plane message is a ZeroMQ multipart message: one header frame, then for DATA the
payload frames of the serializer (pickle protocol 5 puts large buffers in frames of their own).

Header layout (network byte order), 20 bytes then the sender's name:
    version u8 | kind u8 | serializer u8 | name length u8 | instance u64 | seq u64 | name

Origins. Every value derives from source iterations; an origin id is (pipeline, epoch, seq):
the pipeline that stamped it (a source, or a `fan_in: any` stage), that pipeline's epoch (random
per start; kept across restarts with a durable outbox) and its own count of stamped values.
A value's origin is a set of ids (a join: the union of its inputs'). In memory it is a flat
tuple `(stream, seq, stream, seq, ...)` with `stream = (pipeline, epoch)`; `()` when unknown.
When the kind byte has the ORIGINS bit set (DATA, DATA_BATCH), the header carries, after the
name, the origins of the messages it holds, as runs of consecutive values:
    streams u8 | streams x (epoch u64 | name length u8 | name) | runs u32 | runs x run
    run: count u32 | width u8 | width x (stream index u8 | first seq u64)
The i-th message of a run has `width` ids, each (stream, first seq + i). A source's batch of
256 values is one run; the run counts add up to the frame's message count.

A DATA message (or batch item) with an empty payload is a skip marker: the value of that origin
was filtered out upstream (porch.SKIP, on_error skip); it travels in the value's place so that
a join can drop the partner it will never get. Serializers never produce an empty payload.

A DATA_BATCH frame carries, after its header, `count u32 | count x length u32 | payloads`, in
one of two layouts:
- separate (the PICKLED bit of count clear): the payloads one after another, each a value's
  serialized frame (length 0: a skip marker);
- pickled (PICKLED set; every value a protocol-3 pickle, as porch.serializers' dumps_one makes
  small plain values): the payloads region is itself one pickle of the list of the values,
  `PROTO 3 | MARK | body 1 ... body n | LIST | STOP`, body i being value i's pickle without its
  2-byte PROTO and its STOP (a skip marker's body is NONE, its length 0). Protocol 3 numbers its
  memo explicitly (BINPUT i) and each body writes a slot before it reads it, so bodies written
  apart concatenate: shared references and cycles inside a value survive. The receiver loads
  the region in one call; when that fails (a class missing here, a corrupt value), the lengths
  give each value back alone (`PROTO 3 + body + STOP`, exactly what the sender pickled), so
  that only the bad one is said undecodable;
- whole (WHOLE set, PICKLED clear; pickle serializer only): no lengths, the region is one
  protocol-5 pickle of the list of exactly count small plain values (a source's burst pickled
  in one call: exact builtin atoms, or a dict/list/tuple of them). It does not load, or is not
  such a list: a corrupt frame (it names no class that could be missing).
"""

from __future__ import annotations

import enum
import operator
import pickle
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from porch.errors import WireError

VERSION = 3  # 3: PICKLED and WHOLE batch layouts (count word flags); 2: origin runs
_HEADER = struct.Struct("!BBBBQQ")
HEADER_SIZE = _HEADER.size
MAX_NAME_BYTES = 255


INLINE_MAX = 64 * 1024  # payload frames up to this size travel in the header's frame
HELLO_NO_ACKS = 1  # HELLO's seq field carries flags; this one: the sender wants no acks
HELLO_REPLAY = 2  # ...this one: it replays what an earlier instance of the receiver was sent
HELLO_WINDOW = 8  # ...and from this bit up, the sender's window (its queue_limit; 0: unsaid)


class FrameKind(enum.IntEnum):
    """What a data-plane message is."""

    HELLO = 1  # a source announces itself to a target (DPorch's handshake)
    DATA = 2  # one serialized value
    EOS = 3  # end of stream: the sender will send nothing more
    BYE = 4  # the sender stopped (commanded stop or failure) but may come back: not an EOS
    ACK = 5  # receiver -> sender: everything up to `seq` has been processed (cumulative)
    DATA_BATCH = 6  # several small values: seq is the first one's; see encode_batch


_KINDS = {kind.value: kind for kind in FrameKind}
ORIGINS = 0x80  # kind-byte flag: an origins section follows the sender's name

Stream = tuple[str, int]  # (stamping pipeline, its epoch)
Origin = tuple[Any, ...]  # flat (stream, seq, stream, seq, ...); () when unknown
Run = tuple[int, Origin]  # `count` messages; the i-th has every seq of the origin + i
MAX_STREAMS = 255


class Header(NamedTuple):
    """A decoded header frame (a NamedTuple: it is built for every frame received)."""

    kind: FrameKind
    serializer: int
    instance: int
    seq: int
    sender: str
    origins: tuple[Run, ...] = ()


def encode_header(
    kind: FrameKind,
    serializer: int,
    instance: int,
    seq: int,
    sender: str,
    origins: Sequence[Run] = (),
) -> bytes:
    """Encode one header frame (with the origins of its messages, if given)."""
    name = sender.encode("utf-8")
    if len(name) > MAX_NAME_BYTES:
        raise WireError(f"sender name longer than {MAX_NAME_BYTES} bytes: {sender[:40]!r}...")
    if any(origin for _, origin in origins):
        head = _HEADER.pack(VERSION, kind | ORIGINS, serializer, len(name), instance, seq)
        return head + name + encode_origins(origins)
    return _HEADER.pack(VERSION, kind, serializer, len(name), instance, seq) + name


_U8 = struct.Struct("!B")
_U32 = struct.Struct("!I")
_STREAM = struct.Struct("!QB")  # epoch, name length
_RUN = struct.Struct("!IB")  # count, width
_ID = struct.Struct("!BQ")  # stream index, first seq
_ONE = struct.Struct("!IBBQ")  # a run of one id: count, width 1, stream index, first seq


def encode_origins(runs: Sequence[Run]) -> bytes:
    """The origins section for messages whose origins are `runs` (see the module docstring)."""
    streams: dict[Stream, int] = {}
    body = [_U32.pack(len(runs))]
    for count, origin in runs:
        body.append(_RUN.pack(count, len(origin) // 2))
        for i in range(0, len(origin), 2):
            index = streams.setdefault(origin[i], len(streams))
            body.append(_ID.pack(index, origin[i + 1]))
    if len(streams) > MAX_STREAMS:
        raise WireError(f"more than {MAX_STREAMS} origin streams in one frame")
    table = [_U8.pack(len(streams))]
    for name, epoch in streams:
        raw = name.encode("utf-8")
        table.append(_STREAM.pack(epoch, len(raw)) + raw)
    return b"".join(table + body)


_ONE_RUN = struct.Struct("!IIBBQ")  # one run of one id: runs 1, count, width 1, index 0, seq
_STREAM_TABLES: dict[bytes, Stream] = {}  # a one-stream table's bytes -> its stream (decoded)
_NAMES: dict[bytes, str] = {}  # a sender name's bytes -> the name
_ACK = int(FrameKind.ACK)
_SEQ = struct.Struct("!Q")
_SEQ_AT = 12  # where a header's seq is
MAX_CACHED = 1024  # entries of each cache above (cleared when full)


def decode_origins(frame: bytes, start: int) -> tuple[tuple[Run, ...], int]:
    """The runs of an origins section at `start`, and where it ends; WireError if malformed.

    The common section (one stream, one run of one id: a source's values, or a stage's
    passing them on) is read with one unpack once its stream's bytes were seen before."""
    one = len(frame) > start + _STREAM.size and frame[start] == 1
    if one:
        table_end = start + 1 + _STREAM.size + frame[start + _STREAM.size]
        stream = _STREAM_TABLES.get(bytes(frame[start:table_end]))
        if stream is not None and len(frame) >= table_end + _ONE_RUN.size:
            nruns, count, width, index, first = _ONE_RUN.unpack_from(frame, table_end)
            if nruns == 1 and width == 1 and index == 0:
                return ((count, (stream, first)),), table_end + _ONE_RUN.size
    runs, end = _decode_origins(frame, start)
    if one:  # well-formed: remember its stream
        if len(_STREAM_TABLES) >= MAX_CACHED:
            _STREAM_TABLES.clear()
        epoch, _ = _STREAM.unpack_from(frame, start + 1)
        name = bytes(frame[start + 1 + _STREAM.size : table_end]).decode("utf-8")
        _STREAM_TABLES[bytes(frame[start:table_end])] = (name, epoch)
    return runs, end


def _decode_origins(frame: bytes, start: int) -> tuple[tuple[Run, ...], int]:
    """decode_origins of any section."""
    try:
        (nstreams,) = _U8.unpack_from(frame, start)
        offset = start + 1
        streams: list[Stream] = []
        for _ in range(nstreams):
            epoch, length = _STREAM.unpack_from(frame, offset)
            offset += _STREAM.size
            if offset + length > len(frame):
                raise WireError("origin stream name runs past the frame")
            streams.append((bytes(frame[offset : offset + length]).decode("utf-8"), epoch))
            offset += length
        (nruns,) = _U32.unpack_from(frame, offset)
        offset += 4
        if nruns > MAX_BATCH_COUNT:
            raise WireError(f"{nruns} origin runs")
        runs = []
        for _ in range(nruns):
            count, width = _RUN.unpack_from(frame, offset)
            offset += _RUN.size
            origin: list[Any] = []
            for _ in range(width):
                index, seq = _ID.unpack_from(frame, offset)
                offset += _ID.size
                origin += (streams[index], seq)
            runs.append((count, tuple(origin)))
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed origins section: {exc}") from exc
    return tuple(runs), offset


def runs_of(origins: Sequence[Origin]) -> list[Run]:
    """The runs of consecutive values that messages of these origins form, in order."""
    first = origins[0]
    if len(first) == 2:  # the hot path: a source's consecutive values, or a stage passing them on
        stream, start = first
        if origins == [(stream, seq) for seq in range(start, start + len(origins))]:
            return [(len(origins), first)]
    runs: list[Run] = []
    run_count = 0
    for origin in origins:
        if run_count and origin == shift(first, run_count):
            run_count += 1
            continue
        if run_count:
            runs.append((run_count, first))
        first, run_count = origin, 1
    runs.append((run_count, first))
    return runs


def run_origins(runs: Sequence[Run]) -> list[Origin]:
    """Every message's origin, expanded from runs."""
    return [shift(origin, i) for count, origin in runs for i in range(count)]


def shift(origin: Origin, by: int) -> Origin:
    """`origin` with every seq advanced by `by` (the `by`-th message of a run)."""
    if not by:
        return origin
    return tuple(x + by if i % 2 else x for i, x in enumerate(origin))


def union(a: Origin, b: Origin) -> Origin:
    """The origin of a value computed from inputs of origins `a` and `b` (ids once each)."""
    if a == b or not b:
        return a
    if not a:
        return b
    pairs = set(zip(a[::2], a[1::2], strict=True))
    extra = [x for pair in zip(b[::2], b[1::2], strict=True) if pair not in pairs for x in pair]
    return a + tuple(extra)


def decode_header(frame: bytes) -> Header:
    """Decode a frame that is exactly one header; raise WireError on anything malformed."""
    header, end = decode_prefix(frame)
    if end != len(frame):
        raise WireError(
            f"header length {len(frame)} does not match name length {end - HEADER_SIZE}"
        )
    return header


def decode_prefix(frame: bytes) -> tuple[Header, int]:
    """Decode the header at the start of a frame; return it and where the rest begins.

    A DATA message carries its first payload frame right after the header in the same
    frame when it is small (one frame per message instead of two).
    """
    if len(frame) < HEADER_SIZE:
        raise WireError(f"header too short: {len(frame)} bytes")
    version, kind, serializer, name_len, instance, seq = _HEADER.unpack_from(frame)
    if version != VERSION:
        raise WireError(
            f"unsupported wire version {version} (this Porch speaks {VERSION}): a peer runs"
            " another Porch release; run one release on every host"
        )
    end = HEADER_SIZE + name_len
    if len(frame) < end:
        raise WireError(f"header length {len(frame)} is shorter than its name length {name_len}")
    frame_kind = _KINDS.get(kind & ~ORIGINS)
    if frame_kind is None:
        raise WireError(f"unknown frame kind {kind}")
    raw = bytes(frame[HEADER_SIZE:end])
    sender = _NAMES.get(raw)
    if sender is None:
        try:
            sender = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"malformed header: {exc}") from exc
        if len(_NAMES) >= MAX_CACHED:
            _NAMES.clear()
        _NAMES[raw] = sender
    if not kind & ORIGINS:
        return Header(frame_kind, serializer, instance, seq, sender), end
    if frame_kind is not FrameKind.DATA and frame_kind is not FrameKind.DATA_BATCH:
        raise WireError(f"origins on a {frame_kind.name} frame")
    runs, end = decode_origins(frame, end)
    return Header(frame_kind, serializer, instance, seq, sender, runs), end


_COUNT = struct.Struct("!I")
MAX_BATCH_COUNT = 65536
PICKLED = 0x80000000  # a DATA_BATCH's count flag: its payloads region is one pickle (above)
WHOLE = 0x40000000  # ...this one: its region is one pickle (protocol 5) of the list of exactly
# count small plain values, no lengths (the sender pickled a source's burst in one call)
PROTO_3 = b"\x80\x03"  # how a protocol-3 pickle starts (the PROTO opcode and its argument)
_LIST_START = PROTO_3 + b"("  # PROTO 3, MARK
_LIST_END = b"l."  # LIST, STOP
_SKIP_BODY = b"N"  # NONE: a skip marker's place in a pickled region (its length says 0)
_SECOND = operator.itemgetter(1)
_THREE = {PROTO_3[1]}
_HEAD = operator.itemgetter(slice(0, 2))
_BODY = operator.itemgetter(slice(2, -1))


def _protocol_3(payloads: list[bytes]) -> bool:
    """Whether every payload is a protocol-3 pickle or a skip marker (b"").

    The second byte says it (an int: no object made for each): Porch's payloads are pickles of
    protocol 3 or 5 (pickle, dill, by value), JSON text (a control character is escaped there),
    or skip markers; the first one's first byte is checked too."""
    try:
        return set(map(_SECOND, payloads)) == _THREE and payloads[0][0] == PROTO_3[0]
    except IndexError:  # a skip marker, or a one-byte payload
        return set(map(_HEAD, payloads)) <= {PROTO_3, b""} and any(payloads)


def encode_batch(header: bytes, payloads: list[bytes]) -> bytes:
    """One DATA_BATCH frame: header, count (u32), every length (u32 each), every payload;
    pickled (see the module docstring) when every payload is a protocol-3 pickle or empty."""
    count = len(payloads)
    if _protocol_3(payloads):
        bodies = list(map(_BODY, payloads))
        sizes = list(map(len, bodies))
        if 0 in sizes:  # skip markers (not a pickle of nothing but PROTO and STOP: malformed)
            if any(not size and payload for size, payload in zip(sizes, payloads, strict=True)):
                return _separate(header, payloads)
            bodies = [body or _SKIP_BODY for body in bodies]
        return b"".join((header, _COUNT.pack(count | PICKLED), struct.pack(f"!{count}I", *sizes),
                         _LIST_START, *bodies, _LIST_END))  # fmt: skip
    return _separate(header, payloads)


def encode_whole(header: bytes, blob: bytes, count: int) -> bytes:
    """One WHOLE DATA_BATCH frame: header, count (u32, WHOLE set), `blob` (one pickle of the
    list of the `count` values)."""
    return b"".join((header, _COUNT.pack(count | WHOLE), blob))


def _separate(header: bytes, payloads: list[bytes]) -> bytes:
    count = len(payloads)
    lengths = struct.pack(f"!{count}I", *map(len, payloads))
    return b"".join((header, _COUNT.pack(count), lengths, *payloads))


class BatchPayloads(NamedTuple):
    """The payloads of a DATA_BATCH frame, checked to fit it (see read_batch)."""

    lengths: tuple[int, ...]  # each value's (a pickled region's: each body's); 0: a skip marker
    region: memoryview  # the payloads; pickled: one pickle of the list of the values
    pickled: bool
    whole: bool = False  # the region is one pickle of the list of the values (lengths: 1 each)

    def parts(self) -> list[Any]:
        """Each value's payload alone, as the sender's serializer made it (b"": a marker)."""
        region = self.region
        offset = 0
        parts: list[Any] = []
        if self.whole:  # each value's protocol-3 pickle, as dumps_one makes a plain value's
            return [pickle.dumps(value, 3) for value in load_whole(region, len(self.lengths))]
        if not self.pickled:
            for length in self.lengths:
                parts.append(region[offset : offset + length])
                offset += length
            return parts
        offset = len(_LIST_START)
        for length in self.lengths:
            if length:
                parts.append(b"".join((PROTO_3, region[offset : offset + length], b".")))
            else:
                parts.append(b"")
            offset += length or len(_SKIP_BODY)
        return parts


def load_whole(region: memoryview, count: int) -> list[Any]:
    """The values of a WHOLE batch's region (pickle only: see the module docstring); WireError
    (a corrupt frame) when it is not one pickle of a list of exactly `count` values."""
    try:
        values = pickle.loads(region)
    except Exception as exc:
        raise WireError(f"a whole batch does not load: {type(exc).__name__}: {exc}") from None
    if type(values) is not list or len(values) != count:
        raise WireError(f"a whole batch is not a list of its {count} values")
    return values


def read_batch(frame: bytes, start: int) -> BatchPayloads:
    """The payloads of a DATA_BATCH frame whose header ends at `start`; WireError if malformed
    (a pickled region is checked for its framing only: its bodies are the serializer's)."""
    if len(frame) < start + 4:
        raise WireError("batch without a count")
    (word,) = _COUNT.unpack_from(frame, start)
    if word & WHOLE and not word & PICKLED:
        count = word & ~WHOLE
        if count == 0 or count > MAX_BATCH_COUNT or len(frame) <= start + 4:
            raise WireError(f"whole batch count {count} does not fit a {len(frame)}-byte frame")
        return BatchPayloads((1,) * count, memoryview(frame)[start + 4 :], False, True)
    count = word & ~PICKLED
    pickled = word != count
    offset = start + 4 + 4 * count
    if count == 0 or count > MAX_BATCH_COUNT or len(frame) < offset:
        raise WireError(f"batch count {count} does not fit a {len(frame)}-byte frame")
    lengths = struct.unpack_from(f"!{count}I", frame, start + 4)
    size = sum(lengths)
    view = memoryview(frame)[offset:]
    if pickled:
        skips = lengths.count(0)
        size += len(_LIST_START) + len(_SKIP_BODY) * skips + len(_LIST_END)
        if view[: len(_LIST_START)] != _LIST_START or view[-len(_LIST_END) :] != _LIST_END:
            raise WireError("a pickled batch's region does not start with PROTO 3, MARK and "
                            "end with LIST, STOP")  # fmt: skip
    if size != len(view):
        raise WireError("batch lengths do not add up to the frame's size")
    return BatchPayloads(lengths, view, pickled)


def decode_batch(frame: bytes, start: int) -> list[Any]:
    """Each value's payload of a DATA_BATCH frame whose header ends at `start` (see
    BatchPayloads.parts); WireError if malformed."""
    return read_batch(frame, start).parts()


def decode_ack(frame: bytes) -> int | None:
    """The acknowledged sequence number of an ACK frame, or None for anything else."""
    # an ACK of this version, as long as its name says, from a name decoded before (in
    # _NAMES): what decode_header accepts, read at a glance (a source reads ~400 a 200k run)
    if (
        len(frame) > HEADER_SIZE
        and frame[1] == _ACK
        and frame[0] == VERSION
        and len(frame) == HEADER_SIZE + frame[3]
        and frame[HEADER_SIZE:] in _NAMES
    ):
        return int(_SEQ.unpack_from(frame, _SEQ_AT)[0])
    try:
        header = decode_header(frame)
    except WireError:
        return None
    return header.seq if header.kind is FrameKind.ACK else None


class HeaderEncoder:
    """Encodes the headers of one link fast: everything but the sequence number is fixed."""

    def __init__(self, serializer: int, instance: int, sender: str) -> None:
        self._serializer = serializer
        self._instance = instance
        self._sender = sender
        self._name = sender.encode("utf-8")
        encode_header(FrameKind.HELLO, serializer, instance, 0, sender)  # validates the name
        self._tables: dict[Stream, bytes] = {}  # one stream's origins-section prefix

    def encode(self, kind: FrameKind, seq: int) -> bytes:
        """Header of the `seq`-th message of this link."""
        return (
            _HEADER.pack(VERSION, kind, self._serializer, len(self._name), self._instance, seq)
            + self._name
        )

    def encode_data(self, kind: FrameKind, seq: int, runs: Sequence[Run]) -> bytes:
        """Header of a DATA or DATA_BATCH message whose values have the origins `runs`."""
        head = _HEADER.pack(
            VERSION, kind | ORIGINS, self._serializer, len(self._name), self._instance, seq
        )
        if len(runs) == 1 and len(runs[0][1]) == 2:  # one run of one stream: the common case
            count, (stream, first) = runs[0]
            table = self._tables.get(stream)
            if table is None:
                if len(self._tables) >= MAX_STREAMS:
                    self._tables.clear()
                table = self._tables[stream] = encode_origins([(1, (stream, 0))])[: -_ONE.size]
            return head + self._name + table + _ONE.pack(count, 1, 0, first)
        if not any(origin for _, origin in runs):
            return self.encode(kind, seq)
        return head + self._name + encode_origins(runs)
