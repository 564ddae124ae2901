"""The data-plane wire format: typed frames, never pickled control objects.

A data-plane message is a ZeroMQ multipart message: one header frame, then for DATA the
payload frames of the serializer (pickle protocol 5 puts large buffers in frames of their own).

Header layout (network byte order), 20 bytes then the sender's name:
    version u8 | kind u8 | serializer u8 | name length u8 | instance u64 | seq u64 | name
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from porch.errors import WireError

VERSION = 1
_HEADER = struct.Struct("!BBBBQQ")
HEADER_SIZE = _HEADER.size
MAX_NAME_BYTES = 255


INLINE_MAX = 64 * 1024  # payload frames up to this size travel in the header's frame
HELLO_NO_ACKS = 1  # HELLO's seq field carries flags; this one: the sender wants no acks


class FrameKind(enum.IntEnum):
    """What a data-plane message is."""

    HELLO = 1  # a source announces itself to a target (DPorch's handshake)
    DATA = 2  # one serialized value
    EOS = 3  # end of stream: the sender will send nothing more
    BYE = 4  # the sender stopped (commanded stop or failure) but may come back: not an EOS
    ACK = 5  # receiver -> sender: everything up to `seq` has been processed (cumulative)
    DATA_BATCH = 6  # several small values: seq is the first one's; see encode_batch


_KINDS = {kind.value: kind for kind in FrameKind}


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded header frame."""

    kind: FrameKind
    serializer: int
    instance: int
    seq: int
    sender: str


def encode_header(kind: FrameKind, serializer: int, instance: int, seq: int, sender: str) -> bytes:
    """Encode one header frame."""
    name = sender.encode("utf-8")
    if len(name) > MAX_NAME_BYTES:
        raise WireError(f"sender name longer than {MAX_NAME_BYTES} bytes: {sender[:40]!r}...")
    return _HEADER.pack(VERSION, kind, serializer, len(name), instance, seq) + name


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
        raise WireError(f"unsupported wire version {version}")
    end = HEADER_SIZE + name_len
    if len(frame) < end:
        raise WireError(f"header length {len(frame)} is shorter than its name length {name_len}")
    frame_kind = _KINDS.get(kind)
    if frame_kind is None:
        raise WireError(f"unknown frame kind {kind}")
    try:
        sender = bytes(frame[HEADER_SIZE:end]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"malformed header: {exc}") from exc
    return Header(frame_kind, serializer, instance, seq, sender), end


_COUNT = struct.Struct("!I")
MAX_BATCH_COUNT = 65536


def encode_batch(header: bytes, payloads: list[bytes]) -> bytes:
    """One DATA_BATCH frame: header, count (u32), every length (u32 each), every payload."""
    count = len(payloads)
    lengths = struct.pack(f"!{count}I", *map(len, payloads))
    return b"".join((header, _COUNT.pack(count), lengths, *payloads))


def decode_batch(frame: bytes, start: int) -> list[memoryview]:
    """The payloads of a DATA_BATCH frame whose header ends at `start`; WireError if malformed."""
    if len(frame) < start + 4:
        raise WireError("batch without a count")
    (count,) = _COUNT.unpack_from(frame, start)
    offset = start + 4 + 4 * count
    if count == 0 or count > MAX_BATCH_COUNT or len(frame) < offset:
        raise WireError(f"batch count {count} does not fit a {len(frame)}-byte frame")
    lengths = struct.unpack_from(f"!{count}I", frame, start + 4)
    if offset + sum(lengths) != len(frame):
        raise WireError("batch lengths do not add up to the frame's size")
    view = memoryview(frame)
    parts = []
    for length in lengths:
        parts.append(view[offset : offset + length])
        offset += length
    return parts


def decode_ack(frame: bytes) -> int | None:
    """The acknowledged sequence number of an ACK frame, or None for anything else."""
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

    def encode(self, kind: FrameKind, seq: int) -> bytes:
        """Header of the `seq`-th message of this link."""
        return (
            _HEADER.pack(VERSION, kind, self._serializer, len(self._name), self._instance, seq)
            + self._name
        )
