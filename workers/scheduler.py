"""Fan-in: per-source FIFO queues behind a wait-for-all gate (DPorch's rule). No sockets here."""

from __future__ import annotations

from collections import deque
from typing import Any


class TooManySources(Exception):
    """More distinct sources connected than the config's source_pipeline_count."""


class FanIn:
    """Collects values per source and releases one complete set (one value from each) at a time."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self._queues: dict[str, deque[Any]] = {}
        self._ended: set[str] = set()

    @property
    def sources(self) -> list[str]:
        """Names of the sources connected so far, in order of arrival."""
        return list(self._queues)

    def connect(self, source: str) -> None:
        """Register a source (idempotent); raise TooManySources past the expected count."""
        if source in self._queues:
            self._ended.discard(source)  # a restarted source starts a new stream
            return
        if len(self._queues) >= self.expected:
            raise TooManySources(source)
        self._queues[source] = deque()

    def __contains__(self, source: object) -> bool:
        return source in self._queues

    def all_connected(self) -> bool:
        """Whether every expected source has said hello."""
        return len(self._queues) >= self.expected

    def push(self, source: str, value: Any) -> None:
        """Queue one value from a connected source."""
        self._queues[source].append(value)

    def end(self, source: str) -> None:
        """Mark a source's stream as ended; what it queued is still delivered."""
        if source in self._queues:
            self._ended.add(source)

    def has_ended(self, source: str) -> bool:
        """Whether `source` sent end of stream."""
        return source in self._ended

    def ready(self) -> bool:
        """Whether a complete set (one value from every expected source) is queued."""
        return len(self._queues) >= self.expected and all(self._queues.values())

    def pop(self) -> dict[str, Any]:
        """Take the oldest value of each source as a dict keyed by source name."""
        return {name: queue.popleft() for name, queue in self._queues.items()}

    def exhausted(self) -> bool:
        """Whether no complete set can ever form again: some source ended and its queue is empty."""
        return any(not self._queues[name] for name in self._ended)

    def depth(self) -> int:
        """How many values are queued across all sources."""
        return sum(len(q) for q in self._queues.values())
