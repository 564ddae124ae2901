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
- `partition_by`: a value goes to its key's replica (workers/routing.py), held for it while
  it is down. A value without the field is a step() error (on_error decides), naming the
  field and the value's type; one emitted before the directory showed the replicas (too late
  for on_error) goes by credit, said once (`partition_key_missing`, with how many).
- `ordered`: each value handed to the group gets one more origin id, its order number
  (workers/routing.py); the receiver re-sequences the target's output by it and strips it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from porch import logs
from porch.control import WorkerState
from porch.directory import DirectoryEntry, Withdrawn
from porch.wire import FrameKind, Origin, Stream, decode_ack
from workers.links import LinkSettings, OutputLink, Socket
from workers.routing import OrderIds, PartitionError, Router, lightest
from workers.sendqueue import MAX_BATCH

__all__ = ["PartitionError", "TargetGroup"]

log = logs.get("porch.worker")

ACK_GRACE_MS = 200  # how long a finished target's final ack may still be on its way
DOWN_STATES = frozenset(
    {WorkerState.STOPPING, WorkerState.STOPPED, WorkerState.FAILED, WorkerState.BACKOFF}
)
# a target in these states is coming back
RESTARTING_STATES = frozenset({WorkerState.BACKOFF, WorkerState.STARTING})
FINAL_STATES = frozenset({WorkerState.FAILED, WorkerState.STOPPED})  # ...with `final`: for good

Value = tuple[list[Any], Origin]  # one value taken out of a link: payload frames, origin
Keep = Callable[[OutputLink, list[Any], Origin], None]  # a durable outbox's row for a value


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


@dataclass
class GroupEnd:
    """How far a group's end of stream or BYE has got."""

    ending: bool = False  # our stream is over: the EOS goes out once nothing is held
    ended: bool = False  # ...and it went to every replica
    said_bye: bool = False

    def tell(self, link: OutputLink, ending: bool = False) -> None:
        """A replica that joined after our end (or BYE) went out gets it too (`ending`: a
        link that takes over from the group gets the end it was waiting to send)."""
        if self.ended or (ending and self.ending):
            link.force(FrameKind.EOS, [])
        elif self.said_bye:
            link.say_bye()


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
        self.make_link = make_link  # a link to one replica, by its process name
        self.keep = keep  # a durable outbox: a value handed on gets a row under its new link
        self.settings = settings
        self.stream = stream  # our origin stream: whose seqs come as bare ints
        self.links: dict[str, OutputLink] = {}  # by replica process name, kept after they left
        self.away: set[str] = set()  # replicas gone for good (their links stay: see above)
        self.router = Router(loads)
        self.numbers = OrderIds(target, stream)
        self.end = GroupEnd()
        self.dropped = 0  # values offered once every replica had finished

    # ---- the directory -------------------------------------------------------------------

    def apply(self, entries: Mapping[str, DirectoryEntry]) -> None:
        """Follow the directory's entries of this pipeline's replicas (by process name)."""
        partition_by = self.router.partition_by
        if entries:
            self.numbers.on = any(e.ordered for e in entries.values())
            partition_by = next((e.partition_by for e in entries.values() if e.partition_by), None)
        for name, entry in entries.items():
            link = self.links.get(name)
            new = link is None
            if link is None:
                link = self.links[name] = self.make_link(name)
                link.framer.stream = self.stream
            if entry.state is not WorkerState.FINISHED:
                follow(link, entry)
            if gone_for_good(entry):
                self.away.add(name)
            elif new or name in self.away:  # started (scaled up), or back
                self.away.discard(name)
                self.end.tell(link)
        self.away.update(name for name in self.links if name not in entries)
        members = self.members()
        backoff = {name for name, entry in entries.items() if entry.state is WorkerState.BACKOFF}
        live = [link for link in members if _takes(link, link.target in backoff)]
        self.router.update(members, live, partition_by)
        for name in sorted(self.away):
            self._leave(self.links[name], entries.get(name), members)
        self._end_when_delivered()

    def members(self) -> list[OutputLink]:
        """The replicas that are not gone for good (live, down or restarting)."""
        return [link for name, link in self.links.items() if name not in self.away]

    def _leave(self, link: OutputLink, entry: DirectoryEntry | None,
               members: list[OutputLink]) -> None:  # fmt: skip
        """A replica gone for good: what it holds goes to the others (if any)."""
        finished = entry is not None and entry.state is WorkerState.FINISHED
        if link.data_held() and members:
            (last_acks if finished else _read_acks)(link)
            self._move(link, "replica_gone", entry.state.value if entry else "removed")
        if finished:
            finish(link, self.pipeline)
        elif entry is None and link.socket is not None and not link.data_held():
            link.close(linger_ms=0)  # scaled away: nothing to say to it any more

    def _move(self, link: OutputLink, event: str, state: str, *, live: bool = False) -> None:
        """Hand what `link` holds to the others (`live`: to live replicas only), and say so."""
        values = link.take_data()
        if values:
            log.warning(event, pipeline=self.pipeline, target=self.target, replica=link.target,
                        state=state, messages=len(values),
                        replicas=len(self.router.members))  # fmt: skip
            self.hand_on(values, renumber=False, live=live)

    def hand_on(self, values: Iterable[Value], *, renumber: bool, live: bool = False) -> None:
        """Give values taken out of a link to the replicas, in order, past the limits (they
        were accepted once already). `renumber`: they never had our order number (held
        before the directory showed the replicas), or one from an earlier start. `live`: by
        credit among the live replicas only (not to a down key's replica)."""
        router = self.router
        for payload, origin in values:
            by_key = None if live else router.by_payload(payload)
            link = by_key or router.choose() or lightest(router.members)
            if link is None:
                self.dropped += 1
                continue
            if renumber:
                origin = self.numbers.renumbered(origin)
            if self.keep is not None:
                self.keep(link, payload, origin)
            link.force(FrameKind.DATA, payload, origin)
        self.say_keyless()

    def say_keyless(self) -> None:
        """Say (once) that values emitted before the directory showed the replicas had no
        partition_by key: too late for on_error, they went by credit."""
        router = self.router
        if router.keyless and router.keyless_error:
            log.warning("partition_key_missing", pipeline=self.pipeline, target=self.target,
                        field=router.partition_by, values=router.keyless,
                        error=router.keyless_error, routed="by credit")  # fmt: skip
            router.keyless_error = ""  # said: later ones are only counted

    # ---- routing (workers/routing.py) ----------------------------------------------------

    def aim(self, value: object) -> None:
        """partition_by: the next value goes to its key's replica (PartitionError)."""
        self.router.aim(value)

    def pick(self, payload: list[Any]) -> OutputLink | None:
        """A durable outbox stores a value under its replica before it is handed over: choose
        that replica now (it takes the value then); None when no replica would."""
        router = self.router
        router.aimed = router.target(payload) or lightest(router.members)
        return router.aimed

    # ---- sending (what OutputLink takes) -------------------------------------------------

    @property
    def gone(self) -> bool:
        """Whether every replica finished its stream (values offered now are dropped)."""
        return bool(self.links) and all(link.gone for link in self.links.values())

    def add(self, item: bytes, origin: Origin | int) -> bool:
        """One small serialized value to one replica; False when offer() must decide."""
        link = self.router.target([item])
        if link is None or not link.add(item, self.numbers.peek(origin)):
            return False
        self.numbers.taken()
        self.router.aimed = None
        return True

    def extend(self, items: Sequence[bytes], origins: Sequence[Any]) -> None:
        """A burst of small values to one replica (by credit; the caller checked room())."""
        if self.router.partition_by is not None:  # a burst begun before the replicas were known
            for item, origin in zip(items, origins, strict=True):
                self.force(FrameKind.DATA, [item], origin)
            return
        link = self.router.choose() or lightest(self.router.members)
        if link is None:
            self.dropped += len(items)
            return
        link.extend(items, self.numbers.burst(origins))

    def room(self) -> int:
        """How many small values a burst may bring now: the room of the replica with the most
        (0 when none is live, and with partition_by: each value is routed by itself)."""
        if self.gone:
            return MAX_BATCH
        live = self.router.live
        if self.router.partition_by is not None or not live:
            return 0
        return max(link.room() for link in live)

    def offer(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> bool:
        """Take one value if its replica has room (see OutputLink.offer); else False."""
        if self.gone:
            self.dropped += kind is FrameKind.DATA
            return True
        link = self.router.target(payload)
        if link is None:
            return False  # no replica is up: wait (the directory wakes the wait)
        if not link.offer(kind, payload, self.numbers.peek(origin)):
            return False
        self.numbers.taken()
        self.router.aimed = None
        return True

    def force(self, kind: FrameKind, payload: list[Any], origin: Origin | int = ()) -> None:
        """Take one message past the limits: a value (a stopping worker's) to one replica, or
        the end of stream, which goes to every replica once they hold nothing (module doc)."""
        if kind is FrameKind.EOS:
            self.end.ending = True
            self._end_when_delivered()
            return
        link = self.router.target(payload) or lightest(self.router.members)
        if link is None:
            self.dropped += kind is FrameKind.DATA
            return
        numbered = self.numbers.peek(origin)
        self.numbers.taken()
        self.router.aimed = None
        link.force(kind, payload, numbered)

    def say_bye(self) -> None:
        """Tell every replica we are stopping; what those that are down hold goes to the live
        ones first (a stopping worker does not wait for a target that is down)."""
        live = self.router.live
        for link in self.members() if live else ():
            if link not in live and link.data_held():
                self._move(link, "replica_down_handed_on", "down", live=True)
        self.end.said_bye = True
        for link in self.links.values():
            if not link.gone:
                link.say_bye()

    def flush(self) -> None:
        """Send every replica's batch now."""
        for link in self.links.values():
            link.flush()

    def _end_when_delivered(self) -> None:
        """The end of stream goes out once no replica holds a value (module doc)."""
        end = self.end
        if not end.ending or end.ended:
            return
        holders = self.links.values() if self.settings.acked else self.router.live
        if any(link.data_held() for link in holders if not link.gone):
            return
        end.ended = True
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
        return all(link.full() for link in self.router.live)

    def data_held(self) -> int:
        """How many values the replicas' links hold."""
        return sum(link.data_held() for link in self.links.values())

    @property
    def socket(self) -> Socket | None:
        """A live replica's socket, else any replica's; None while none has an endpoint."""
        links = [*self.router.live, *self.links.values()]
        return next((link.socket for link in links if link.socket is not None), None)

    @property
    def delivered(self) -> bool:
        """Whether our end went out and every replica acknowledged everything."""
        links, end = self.links.values(), self.end
        return (end.ended or not end.ending) and all(link.delivered for link in links)

    def close(self, linger_ms: int) -> None:
        """Close every replica's link."""
        for link in self.links.values():
            link.close(linger_ms=linger_ms)


def dissolve(group: TargetGroup) -> OutputLink:
    """The target runs as one process again (a reload without `replicas`): one link to it,
    given what every replica's link held, in order (without our order ids)."""
    link = group.make_link(group.target)
    link.framer.stream = group.stream
    for member in group.links.values():
        member.read_acks(decode_ack)
        for payload, held in member.take_data():
            origin = group.numbers.without(held)
            if group.keep is not None:
                group.keep(link, payload, origin)
            link.force(FrameKind.DATA, payload, origin)
        member.retire()
        link.dropped += member.dropped
    link.dropped += group.dropped
    group.end.tell(link, ending=True)
    return link


Output: TypeAlias = OutputLink | TargetGroup  # what a worker sends a target's values through


def links_of(output: Output) -> Sequence[OutputLink]:
    """The output links of one target: its own, or one per replica."""
    return list(output.links.values()) if isinstance(output, TargetGroup) else (output,)


def all_links(outputs: Iterable[Output]) -> list[OutputLink]:
    """Every output link of a worker's targets, replicas' each on its own (counters, close)."""
    return [link for output in outputs for link in links_of(output)]


def shown_links(outputs: Iterable[Output]) -> list[OutputLink]:
    """The links status shows: a replica gone for good only while it still holds values."""
    return [
        link
        for output in outputs
        for link in links_of(output)
        if not isinstance(output, TargetGroup) or link.target not in output.away or link.data_held()
    ]


def _read_acks(link: OutputLink) -> None:
    link.read_acks(decode_ack)


def _takes(link: OutputLink, backoff: bool) -> bool:
    """Whether a replica's link may get new values: connected, up, not withdrawn. A starting
    one with an endpoint is up (its process said hello: what it is sent waits in its socket;
    the supervisor announces its next states only when they end it)."""
    return (
        link.socket is not None
        and not (link.down or link.gone or backoff)
        and link.withdrawn_since is None
    )
