"""Data links: one bound input socket per worker, one output link per target.

Every target gets its own DEALER socket, so every target gets every message and a slow or
dead target never makes another one receive duplicates (DPorch's round-robin PUSH did).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import zmq

from porch.wire import FrameKind, HeaderEncoder

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
LINGER_MS = 2000


class InputLink:
    """The worker's one input socket: a ROUTER bound on an ephemeral TCP port."""

    def __init__(self, ctx: Context, host: str, hwm: int) -> None:
        self.socket: Socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, hwm)
        self.socket.bind(f"tcp://{host}:0")
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def receive(self, max_messages: int) -> list[list[bytes]]:
        """Up to `max_messages` waiting messages (non-blocking), routing id first."""
        out = []
        recv = self.socket.recv_multipart
        for _ in range(max_messages):
            try:
                out.append(recv(zmq.NOBLOCK))
            except zmq.Again:
                break
        return out

    def close(self) -> None:
        """Close without waiting."""
        self.socket.close(linger=0)


class OutputLink:
    """The link to one target: a DEALER once the target's endpoint is known, a queue before."""

    def __init__(self, ctx: Context, target: str, headers: HeaderEncoder, limit: int) -> None:
        self.ctx = ctx
        self.target = target
        self.headers = headers
        self.limit = limit
        self.endpoint: str | None = None
        self.socket: Socket | None = None
        self.pending: deque[list[Any]] = deque()
        self.seq = 0
        self.gone = False
        self.dropped = 0

    def connect(self, endpoint: str) -> None:
        """(Re)connect to the target's endpoint, say hello, and hand over what was queued."""
        if endpoint == self.endpoint:
            return
        if self.socket is not None:
            self.socket.close(linger=0)
        sock: Socket = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, self.limit)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.connect(endpoint)
        sock.send(self.headers.encode(FrameKind.HELLO, 0))
        self.socket, self.endpoint, self.gone = sock, endpoint, False
        self.flush()

    def frame(self, kind: FrameKind, payload: list[Any]) -> list[Any]:
        """The next message of this link: a header with the next sequence number, then payload."""
        self.seq += 1
        return [self.headers.encode(kind, self.seq), *payload]

    def offer(self, message: list[Any]) -> bool:
        """Hand over one message without blocking; False when the caller must wait and retry."""
        if self.gone:
            self.dropped += 1
            return True
        if self.socket is None or self.pending:
            if len(self.pending) < self.limit:
                self.pending.append(message)
                return True
            self.flush()
            return False
        try:
            self.socket.send_multipart(message, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def flush(self) -> None:
        """Move queued messages into the socket for as long as it takes them."""
        while self.pending and self.socket is not None:
            try:
                self.socket.send_multipart(self.pending[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.pending.popleft()

    def retire(self) -> None:
        """The target is gone for good: drop what is queued and whatever comes later."""
        self.gone = True
        self.dropped += len(self.pending)
        self.pending.clear()
        self.close(linger_ms=0)  # what ZeroMQ still holds for it can never be delivered
        self.endpoint = None

    @property
    def settled(self) -> bool:
        """Whether nothing is left queued outside ZeroMQ."""
        return self.gone or not self.pending

    def close(self, linger_ms: int = LINGER_MS) -> None:
        """Close the socket; ZeroMQ keeps delivering what it holds for up to `linger_ms`."""
        if self.socket is not None:
            self.socket.close(linger=linger_ms)
            self.socket = None
