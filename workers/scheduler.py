"""Fan-in: per-source FIFO queues behind a wait-for-all gate (DPorch's rule). No sockets here."""

from __future__ import annotations

from collections import deque
from typing import Any


class TooManySources(Exception):
    """More distinct sources connected than the config's source_pipeline_count."""


class FanIn:
    """Collects values per source and releases them as one input set per iteration.

    Wait-for-all (DPorch's default): a set is one value from every source. `any_input`: a set
    is ready as soon as one source has a value; the missing ones are None (for feedback loops).
    """

    def __init__(self, expected: int, any_input: bool = False) -> None:
        self.expected = expected
        self.any_input = any_input
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
        """Whether an input set can be taken now."""
        if self.any_input:
            return any(self._queues.values())
        return len(self._queues) >= self.expected and all(self._queues.values())

    def pop(self, missing: Any = None) -> dict[str, Any]:
        """Take the oldest value of each source (`missing` for an empty queue in any-input mode)."""
        return {name: (q.popleft() if q else missing) for name, q in self._queues.items()}

    def exhausted(self) -> bool:
        """Whether no input set can ever form again."""
        if self.any_input:
            return len(self._ended) >= self.expected and not any(self._queues.values())
        return any(not self._queues[name] for name in self._ended)

    def queued(self, source: str) -> int:
        """How many values of `source` wait."""
        queue = self._queues.get(source)
        return len(queue) if queue is not None else 0

    def depth(self) -> int:
        """How many values are queued across all sources."""
        return sum(len(q) for q in self._queues.values())
