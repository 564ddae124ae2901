"""Sending to a replicated pipeline (issue 13): a target whose directory entries are replicas
(process names NAME#TAG-K, porch/names.py) is a TargetGroup of output links, one per replica
process. A plain target stays one OutputLink on the usual path; a target becomes a group the
first time the directory lists replicas of it (what its link held until then goes to the
group, in order).

- Credit: a value, or a burst of them, goes to the live replica holding the fewest messages
  (unacknowledged; at-most-once: queued), ties in turn. Never to one that is down, waiting to
  restart (backoff) or withdrawn: a restarting replica keeps what it holds (replayed to its new
  instance, as for a plain target); once its new process said hello (starting, with an
  endpoint) it is live again.
- Gone for good (its entry left the directory: scaled away; finished; failed or stopped for
  good; withdrawn by discovery): what it had not acknowledged goes, in order, to the others
  (logged with counts). With no other replica to take it, it stays (a finished one's is
  dropped and said, as for a plain target). A link is kept after it left: if its replica comes
  back, its sequence numbers go on where they were (the replica drops seqs it has seen).
- The end of stream goes to every replica once no replica holds a value any more (at-most-once:
  no live one), so a replica that dies at the end still has others to hand its values to; a
  BYE goes to every replica at once. The close protocol waits for every replica's acks.
- `partition_by`: a value goes to replica int(blake2b(pickle(key))[:8]) % N of the replica
  names sorted (the same at every sender), key = value[FIELD] (a Mapping) or value.FIELD;
  held for that replica while it is down. A value without the field is a step() error
  (on_error decides), naming the field and the value's type.
- `ordered`: each value handed to the group gets one more origin id, (("#" + target, epoch),
  n), n counting from 0 without gaps (the epoch is random per sender process); the receiver
  re-sequences the target's output by it and strips it.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from porch import logs
from porch.control import WorkerState
from porch.directory import DirectoryEntry, Withdrawn
from porch.wire import FrameKind, Origin, Stream, decode_ack
from workers.links import LinkSettings, OutputLink
from workers.sendqueue import MAX_BATCH

log = logs.get("porch.worker")

ACK_GRACE_MS = 200  # how long a finished target's final ack may still be on its way
DOWN_STATES = frozenset(
    {WorkerState.STOPPING, WorkerState.STOPPED, WorkerState.FAILED, WorkerState.BACKOFF}
)
# a target in these states is coming back
RESTARTING_STATES = frozenset({WorkerState.BACKOFF, WorkerState.STARTING})
FINAL_STATES = frozenset({WorkerState.FAILED, WorkerState.STOPPED})  # ...with `final`: for good
ORDER_MARK = "#"  # an order stream's name: "#" + the target pipeline (no pipeline starts so)

Value = tuple[list[Any], Origin]  # one value taken out of a link: payload frames, origin
Keep = Callable[[OutputLink, list[Any], Origin], None]  # a durable outbox's row for a value


class PartitionError(ValueError):
    """A value a partitioned target cannot be routed by (no such field, or an unpicklable key)."""


def follow(link: OutputLink, entry: DirectoryEntry) -> None:
    """Point a link where a directory entry (not a finished one) says its target is: connect
    to its endpoint, hold the output while discovery lost it, mark it down or restarting."""
    if entry.state is Withdrawn.WITHDRAWN:  # its host fell silent: hold the output till back
        link.withdraw(entry.since if entry.since is not None else time.time())
        return
    if entry.endpoint is not None:
        link.connect(
            entry.endpoint,
            entry.instance,
            entry.key,
            force=link.withdrawn_since is not None,  # rediscovered: don't wait on TCP
        )
    link.down = entry.state in DOWN_STATES and entry.state not in RESTARTING_STATES
    link.restarting = entry.state in RESTARTING_STATES


def last_acks(link: OutputLink) -> None:
    """Take a target's last acks: its final one (TCP) can arrive after the directory's
    "finished" (IPC), so wait a moment for it when something is still held."""
    link.read_acks(decode_ack)
    if link.socket is not None and link.data_held() and link.socket.poll(ACK_GRACE_MS):
        link.read_acks(decode_ack)


def finish(link: OutputLink, pipeline: str) -> None:
    """The target finished: take its last acks, then drop (and say) what it never took."""
    if link.gone:
        return
    last_acks(link)
    held = link.data_held()
    if held:
        log.warning("target_finished", pipeline=pipeline, target=link.target,
                    dropped=held)  # fmt: skip
    link.retire()


def gone_for_good(entry: DirectoryEntry | None) -> bool:
    """Whether a replica's entry (None: not listed) means it will take nothing more from us."""
    if entry is None or entry.state is WorkerState.FINISHED or entry.state is Withdrawn.WITHDRAWN:
        return True
    return entry.final and entry.state in FINAL_STATES


def partition_index(key: object, count: int) -> int:
    """Which of `count` replicas (their names sorted) takes the values of `key`: the same at
    every sender and in every run (a hash of the key's pickle, not Python's salted hash)."""
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


class TargetGroup:
    """The output links to the replicas of one target pipeline (module doc). It takes what an
    OutputLink takes from the message loop (add, extend, offer, force, say_bye, flush, ...)."""

    def __init__(
        self,
        target: str,
        pipeline: str,
        make_link: Callable[[str], OutputLink],
        settings: LinkSettings,
        stream: Stream | None,
        *,
        loads: Callable[[Sequence[Any]], Any] | None = None,
        keep: Keep | None = None,
    ) -> None:
        self.target = target  # the pipeline its replicas are
        self.pipeline = pipeline  # ours (for the logs)
        self._make_link = make_link  # a link to one replica, by its process name
        self._loads = loads  # to find the partition key of a value taken out of a link
        self._keep = keep  # a durable outbox: a value handed on gets a row under its new link
        self.settings = settings
        self.stream = stream  # our origin stream: whose seqs come as bare ints
        self.links: dict[str, OutputLink] = {}  # by replica process name, kept after they left
        self.away: set[str] = set()  # replicas gone for good (their links stay: see above)
        self.live: list[OutputLink] = []  # where new values may go now
        self.ordered = False
        self.partition_by: str | None = None
        self.order_stream: Stream = (ORDER_MARK + target, random.getrandbits(63))
        self.order_seq = 0  # the next order number
        self.dropped = 0  # values offered once every replica had finished
        self.ending = False  # our stream is over: the EOS goes out once nothing is held
        self.ended = False  # ...and it went to every replica
        self.said_bye = False
        self._aimed: OutputLink | None = None  # partition_by: where the next value goes
        self._turn = 0

    # ---- the directory -------------------------------------------------------------------

    def apply(self, entries: Mapping[str, DirectoryEntry]) -> None:
        """Follow the directory's entries of this pipeline's replicas (by process name)."""
        if entries:
            self.ordered = any(e.ordered for e in entries.values())
            self.partition_by = next((e.partition_by for e in entries.values() if e.partition_by),
                                     None)  # fmt: skip
        for name, entry in entries.items():
            link = self.links.get(name)
            new = link is None
            if link is None:
                link = self.links[name] = self._make_link(name)
                link.framer.stream = self.stream
            if entry.state is not WorkerState.FINISHED:
                follow(link, entry)
            if gone_for_good(entry):
                self.away.add(name)
            elif new or name in self.away:
                self.away.discard(name)
                self._joined(link)
        self.away.update(name for name in self.links if name not in entries)
        members = self.members()
        backoff = {name for name, entry in entries.items() if entry.state is WorkerState.BACKOFF}
        self.live = [link for link in members if _takes(link, link.target in backoff)]
        for name in sorted(self.away):
            self._leave(self.links[name], entries.get(name), members)
        self._end_when_delivered()

    def members(self) -> list[OutputLink]:
        """The replicas that are not gone for good (live, down or restarting)."""
        return [link for name, link in self.links.items() if name not in self.away]

    def _joined(self, link: OutputLink) -> None:
        """A replica started (scaled up) or came back: it missed our end or BYE if those went
        out already."""
        if self.ended:
            link.force(FrameKind.EOS, [])
        elif self.said_bye:
            link.say_bye()

    def _leave(self, link: OutputLink, entry: DirectoryEntry | None,
               members: list[OutputLink]) -> None:  # fmt: skip
        """A replica gone for good: what it holds goes to the others (if any)."""
        finished = entry is not None and entry.state is WorkerState.FINISHED
        if link.data_held() and members:
            if finished:
                last_acks(link)
            else:
                link.read_acks(decode_ack)
            values = link.take_data()
            if values:
                log.warning("replica_gone", pipeline=self.pipeline, target=self.target,
                            replica=link.target, state=entry.state.value if entry else "removed",
                            messages=len(values), replicas=len(members))  # fmt: skip
                self.hand_on(values, renumber=False)
        if finished:
            finish(link, self.pipeline)
        elif entry is None and link.socket is not None and not link.data_held():
            link.close(linger_ms=0)  # scaled away: nothing to say to it any more

    def hand_on(self, values: Iterable[Value], *, renumber: bool) -> None:
        """Give values taken out of a link to the replicas, in order, past the limits (they
        were accepted once already). `renumber`: they never had an order number (they were
        held before the directory showed the replicas)."""
        members = self.members()
        for payload, origin in values:
            link = self._by_payload(payload, members) or self._choose() or _lightest(members)
            if link is None:
                self.dropped += 1
                continue
            if renumber and self.ordered:  # (one restored from disk: its old number goes)
                origin = self._numbered(_unordered(origin, self.order_stream[0]))
                self.order_seq += 1
            if self._keep is not None:
                self._keep(link, payload, origin)
            link.force(FrameKind.DATA, payload, origin)

    def _by_payload(self, payload: list[Any], members: list[OutputLink]) -> OutputLink | None:
        """partition_by: the replica for a value taken out of a link (None: by credit)."""
        if self.partition_by is None or self._loads is None or payload == [b""] or not members:
            return None
        try:
            key = partition_key(self._loads(payload), self.partition_by)
            names = sorted(link.target for link in members)
            return self.links[names[partition_index(key, len(names))]]
        except Exception:  # it was routed once; if it cannot be now, credit decides
            return None

    def dissolve(self) -> OutputLink:
        """The target runs as one process again (a reload without `replicas`): one link to it,
        given what every replica's link held, in order (without our order ids)."""
        link = self._make_link(self.target)
        link.framer.stream = self.stream
        order = self.order_stream[0]
        for member in self.links.values():
            member.read_acks(decode_ack)
            for payload, origin in member.take_data():
                origin = _unordered(origin, order)
                if self._keep is not None:
                    self._keep(link, payload, origin)
                link.force(FrameKind.DATA, payload, origin)
            member.retire()
        if self.ending:
            link.force(FrameKind.EOS, [])
        elif self.said_bye:
            link.say_bye()
        return link

    # ---- routing -------------------------------------------------------------------------

    def aim(self, value: object) -> None:
        """partition_by: send the next value to its key's replica (PartitionError: it has no
        key, or a key that cannot be pickled)."""
        field = self.partition_by
        names = sorted(name for name in self.links if name not in self.away)
        if field is None or not names:
            self._aimed = None
            return
        key = partition_key(value, field)
        try:
            index = partition_index(key, len(names))
        except Exception as exc:
            raise PartitionError(
                f"a partition_by {field!r} key that cannot be pickled ({type(key).__name__}: {exc})"
            ) from None
        self._aimed = self.links[names[index]]

    def pick(self, payload: list[Any]) -> OutputLink | None:
        """A durable outbox stores a value under its replica before it is handed over: choose
        that replica now (it takes the value then); None when no replica would."""
        link = self._target(payload) or _lightest(self.members())
        self._aimed = link
        return link

    def _choose(self) -> OutputLink | None:
        """The live replica holding the fewest messages (ties in turn); None when none is live."""
        live = self.live
        count = len(live)
        if not count:
            return None
        self._turn = start = (self._turn + 1) % count
        best = live[start]
        least = best.outbox.held + len(best.batch)
        for i in range(1, count):
            link = live[(start + i) % count]
            load = link.outbox.held + len(link.batch)
            if load < least:
                best, least = link, load
        return best

    def _target(self, payload: list[Any]) -> OutputLink | None:
        """Where the next value goes: where aim() said, else by its key (a value emitted before
        the directory showed the replicas: decoded), else by credit."""
        aimed = self._aimed
        if aimed is not None:
            return aimed
        if self.partition_by is not None:
            return self._by_payload(payload, self.members()) or self._choose()
        return self._choose()

    def _numbered(self, origin: Origin | int) -> Origin:
        """`origin` with this value's order id (the next order number) after it."""
        base: Origin = (self.stream, origin) if isinstance(origin, int) else origin
        return (*base, self.order_stream, self.order_seq)

    # ---- sending (what OutputLink takes) -------------------------------------------------

    @property
    def gone(self) -> bool:
        """Whether every replica finished its stream (values offered now are dropped)."""
        return bool(self.links) and all(link.gone for link in self.links.values())

    def add(self, item: bytes, origin: Origin | int) -> bool:
        """One small serialized value to one replica; False when offer() must decide."""
        link = self._target([item])
        if link is None:
            return False
        if self.ordered:
            if not link.add(item, self._numbered(origin)):
                return False
            self.order_seq += 1
        elif not link.add(item, origin):
            return False
        self._aimed = None
        return True

    def extend(self, items: Sequence[bytes], origins: Sequence[Any]) -> None:
        """A burst of small values to one replica (by credit; the caller checked room())."""
        if self.partition_by is not None:  # a burst begun before the replicas were known
            for item, origin in zip(items, origins, strict=True):
                self.force(FrameKind.DATA, [item], origin)
            return
        link = self._choose() or _lightest(self.members())
        if link is None:
            self.dropped += len(items)
            return
        if self.ordered:
            first = self.order_seq
            self.order_seq = first + len(items)
            stream, order = self.stream, self.order_stream
            origins = [
                ((stream, o) if type(o) is int else o) + (order, first + i)
                for i, o in enumerate(origins)
            ]
        link.extend(items, origins)

    def room(self) -> int:
        """How many small values a burst may bring now: the room of the replica with the most
        (0 when none is live, and with partition_by: each value is routed by itself)."""
        if self.gone:
            return MAX_BATCH
        if self.partition_by is not None or not self.live:
            return 0
        return max(link.room() for link in self.live)

    def offer(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> bool:
        """Take one value if its replica has room (see OutputLink.offer); else False."""
        if self.gone:
            self.dropped += kind is FrameKind.DATA
            return True
        link = self._target(payload)
        if link is None:
            return False  # no replica is up: wait (the directory wakes the wait)
        numbered = self._numbered(origin) if self.ordered else origin
        if not link.offer(kind, payload, numbered):
            return False
        self.order_seq += self.ordered
        self._aimed = None
        return True

    def force(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> None:
        """Take one message past the limits: a value (a stopping worker's) to one replica, or
        the end of stream, which goes to every replica once they hold nothing (module doc)."""
        if kind is FrameKind.EOS:
            self.ending = True
            self._end_when_delivered()
            return
        link = self._target(payload) or _lightest(self.members())
        if link is None:
            self.dropped += kind is FrameKind.DATA
            return
        numbered = self._numbered(origin) if self.ordered else origin
        self.order_seq += self.ordered
        self._aimed = None
        link.force(kind, payload, numbered)

    def say_bye(self) -> None:
        """Tell every replica we are stopping."""
        self.said_bye = True
        for link in self.links.values():
            if not link.gone:
                link.say_bye()

    def flush(self) -> None:
        """Send every replica's batch now."""
        for link in self.links.values():
            link.flush()

    def _end_when_delivered(self) -> None:
        """The end of stream goes out once no replica holds a value (module doc)."""
        if not self.ending or self.ended:
            return
        holders = self.links.values() if self.settings.acked else self.live
        if any(link.data_held() for link in holders if not link.gone):
            return
        self.ended = True
        for link in self.members():
            link.force(FrameKind.EOS, [])

    # ---- acknowledgements, events, state -------------------------------------------------

    def read_acks(self, decode: Callable[[bytes], int | None]) -> None:
        """Apply every replica's acknowledgements (then maybe end the stream)."""
        for link in self.links.values():
            link.read_acks(decode)
        self._end_when_delivered()

    def check_events(self, pipeline: str) -> None:
        """React to each replica link's socket events."""
        for link in self.links.values():
            link.check_events(pipeline)

    def full(self) -> bool:
        """Whether no live replica has room for another value."""
        return all(link.full() for link in self.live)

    def data_held(self) -> int:
        """How many values the replicas' links hold."""
        return sum(link.data_held() for link in self.links.values())

    @property
    def socket(self) -> Any:
        """A connected replica's socket, or None while no replica has an endpoint."""
        return next((link.socket for link in self.live if link.socket is not None), None) or next(
            (link.socket for link in self.links.values() if link.socket is not None), None
        )

    @property
    def delivered(self) -> bool:
        """Whether our end went out and every replica acknowledged everything."""
        return (self.ended or not self.ending) and all(
            link.delivered for link in self.links.values()
        )

    def close(self, linger_ms: int) -> None:
        """Close every replica's link."""
        for link in self.links.values():
            link.close(linger_ms=linger_ms)


Output: TypeAlias = OutputLink | TargetGroup  # what a worker sends a target's values through


def links_of(output: Output) -> Sequence[OutputLink]:
    """The output links of one target: its own, or one per replica."""
    return list(output.links.values()) if isinstance(output, TargetGroup) else (output,)


def all_links(outputs: Iterable[Output]) -> list[OutputLink]:
    """Every output link of a worker's targets, replicas' each on its own (status, counters)."""
    return [link for output in outputs for link in links_of(output)]


def _unordered(origin: Origin, order: str) -> Origin:
    """`origin` without the ids of the order stream named `order`."""
    pairs = zip(origin[::2], origin[1::2], strict=True)
    return tuple(x for stream, seq in pairs if stream[0] != order for x in (stream, seq))


def _takes(link: OutputLink, backoff: bool) -> bool:
    """Whether a replica's link may get new values: connected, up, not withdrawn. A starting
    one with an endpoint is up (its process said hello: what it is sent waits in its socket;
    the supervisor announces its next states only when they end it)."""
    return (
        link.socket is not None
        and not (link.down or link.gone or backoff)
        and link.withdrawn_since is None
    )


def _lightest(links: Iterable[OutputLink]) -> OutputLink | None:
    """Of links that are not finished, the one holding the fewest messages."""
    found = [link for link in links if not link.gone]
    return min(found, key=lambda link: link.outbox.held + len(link.batch), default=None)
