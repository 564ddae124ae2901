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


class FrameKind(enum.IntEnum):
    """What a data-plane message is."""

    HELLO = 1  # a source announces itself to a target (DPorch's handshake)
    DATA = 2  # one serialized value
    EOS = 3  # end of stream: the sender will send nothing more
    BYE = 4  # the sender stopped (commanded stop or failure) but may come back: not an EOS


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
    """Decode one header frame; raise WireError on anything malformed."""
    if len(frame) < HEADER_SIZE:
        raise WireError(f"header too short: {len(frame)} bytes")
    version, kind, serializer, name_len, instance, seq = _HEADER.unpack_from(frame)
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}")
    if len(frame) != HEADER_SIZE + name_len:
        raise WireError(f"header length {len(frame)} does not match name length {name_len}")
    try:
        sender = frame[HEADER_SIZE:].decode("utf-8")
        return Header(FrameKind(kind), serializer, instance, seq, sender)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"malformed header: {exc}") from exc


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
