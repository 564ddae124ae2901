"""Which replica of a replicated target a value goes to, and the order id it carries: the
parts of a TargetGroup (workers/replicas.py) that decide per value.

- Router: credit (the live replica holding the fewest messages, ties in turn), or with
  `partition_by` the replica of the value's key: int(blake2b(pickle(key))[:8]) % N over the
  replicas' names sorted (the same at every sender and in every run, unlike Python's salted
  hash), key = value[FIELD] of a Mapping, else value.FIELD.
- OrderIds: `ordered`: one more origin id per value, (("#" + target, epoch), n), n counting
  from 0 without gaps; the epoch is random per sender process, so a restarted sender's numbers
  never mix with its earlier ones.
"""

from __future__ import annotations

import hashlib
import pickle
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from porch.wire import Origin, Stream
from workers.links import OutputLink

ORDER_MARK = "#"  # an order stream's name: "#" + the target pipeline (no pipeline starts so)


class PartitionError(ValueError):
    """A value a partitioned target cannot be routed by (no such field, or an unpicklable key)."""


def partition_index(key: object, count: int) -> int:
    """Which of `count` replicas (their names sorted) takes the values of `key`."""
    digest = hashlib.blake2b(pickle.dumps(key, 4)).digest()
    return int.from_bytes(digest[:8], "big") % count


def partition_key(value: object, field: str) -> object:
    """value[field] of a Mapping, else value.field; PartitionError naming both when absent."""
    try:
        return value[field] if isinstance(value, Mapping) else getattr(value, field)
    except (KeyError, AttributeError):
        kind = "key" if isinstance(value, Mapping) else "attribute"
        raise PartitionError(
            f"a {type(value).__name__} without the {kind} {field!r} that partition_by routes "
            f"by; return a dict with {field!r} or an object with that attribute (or porch.SKIP)"
        ) from None


def load(link: OutputLink) -> int:
    """What a replica's link holds (credit): unacknowledged, or at-most-once queued."""
    return link.outbox.held + len(link.batch)


def lightest(links: Iterable[OutputLink]) -> OutputLink | None:
    """Of links that are not finished, the one holding the fewest messages."""
    return min((link for link in links if not link.gone), key=load, default=None)


class Router:
    """Picks the replica for each value (module doc)."""

    def __init__(self, loads: Callable[[Sequence[Any]], Any] | None) -> None:
        self.live: list[OutputLink] = []  # where new values may go now
        self.members: list[OutputLink] = []  # not gone for good, by name (partition_by's N)
        self.partition_by: str | None = None
        self.aimed: OutputLink | None = None  # where aim() sent the next value
        self._loads = loads  # to find the key of a value that comes as bytes
        self._turn = 0
        # values emitted before the directory showed the replicas, without the key: by credit
        self.keyless = 0
        self.keyless_error = ""  # why the first of them had no key (said once: see the group)

    def update(self, members: Iterable[OutputLink], live: list[OutputLink],
               partition_by: str | None) -> None:  # fmt: skip
        """What the directory says now."""
        self.members = sorted(members, key=lambda link: link.target)
        self.live = live
        self.partition_by = partition_by

    def choose(self) -> OutputLink | None:
        """The live replica holding the fewest messages (ties in turn); None when none is live."""
        live = self.live
        count = len(live)
        if not count:
            return None
        self._turn = start = (self._turn + 1) % count
        best = live[start]
        least = load(best)
        for i in range(1, count):
            link = live[(start + i) % count]
            if load(link) < least:
                best, least = link, load(link)
        return best

    def aim(self, value: object) -> None:
        """partition_by: the next value goes to its key's replica (PartitionError: it has no
        key, or a key that cannot be pickled)."""
        field, members = self.partition_by, self.members
        if field is None or not members:
            self.aimed = None
            return
        key = partition_key(value, field)
        try:
            index = partition_index(key, len(members))
        except Exception as exc:
            raise PartitionError(
                f"a partition_by {field!r} key that cannot be pickled ({type(key).__name__}: {exc})"
            ) from None
        self.aimed = members[index]

    def by_payload(self, payload: list[Any]) -> OutputLink | None:
        """partition_by: the replica for a value that comes as bytes (None: by credit)."""
        members = self.members
        if self.partition_by is None or self._loads is None or payload == [b""] or not members:
            return None
        try:
            key = partition_key(self._loads(payload), self.partition_by)
            return members[partition_index(key, len(members))]
        except Exception as exc:  # its step() is long over: credit decides, counted, said once
            self.keyless += 1
            if self.keyless == 1:
                self.keyless_error = (
                    str(exc)
                    if isinstance(exc, PartitionError)
                    else f"a value held before the replicas were known cannot be decoded or "
                    f"keyed again ({type(exc).__name__}: {exc})"
                )
            return None

    def target(self, payload: list[Any]) -> OutputLink | None:
        """Where the next value goes: where aim() said, else by its key (a value emitted before
        the directory showed the replicas: decoded), else by credit."""
        aimed = self.aimed
        if aimed is not None:
            return aimed
        if self.partition_by is not None:
            return self.by_payload(payload) or self.choose()
        return self.choose()


class OrderIds:
    """`ordered`: the order id of each value handed to a group (module doc)."""

    def __init__(self, target: str, stream: Stream | None) -> None:
        self.on = False  # the target's entries say ordered
        self.stream = stream  # our origin stream: whose seqs come as bare ints
        self.order: Stream = (ORDER_MARK + target, random.getrandbits(63))
        self.next = 0  # the next order number

    def peek(self, origin: Origin | int) -> Origin | int:
        """`origin` with the next order id after it (unchanged when not ordered); taken()
        once the value was accepted."""
        if not self.on:
            return origin
        base: Origin = (self.stream, origin) if isinstance(origin, int) else origin
        return (*base, self.order, self.next)

    def taken(self) -> None:
        """The value peek() numbered was accepted."""
        self.next += self.on

    def burst(self, origins: Sequence[Any]) -> Sequence[Any]:
        """The origins of a burst, numbered (taken at once)."""
        if not self.on:
            return origins
        first = self.next
        self.next = first + len(origins)
        stream, order = self.stream, self.order
        return [
            ((stream, o) if type(o) is int else o) + (order, first + i)
            for i, o in enumerate(origins)
        ]

    def renumbered(self, origin: Origin) -> Origin:
        """A value that never had our number, or had one from an earlier start (restored from
        a durable outbox): numbered now (taken)."""
        if not self.on:
            return origin
        numbered = self.peek(self.without(origin))
        self.taken()
        return numbered  # type: ignore[return-value]

    def without(self, origin: Origin) -> Origin:
        """`origin` without our order ids for this target."""
        name = self.order[0]
        pairs = zip(origin[::2], origin[1::2], strict=True)
        return tuple(x for stream, seq in pairs if stream[0] != name for x in (stream, seq))
