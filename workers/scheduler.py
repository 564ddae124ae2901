"""Fan-in: per-source queues behind a gate that pairs values FIFO or by origin. No sockets here.

Queued items are tuples whose [1] is the value and [2] its origin (porch.wire: a flat
`(stream, seq, ...)` tuple, `stream = (pipeline, epoch)`); a value of porch.SKIP is a skip
marker: the value of that origin was filtered out upstream.

How a wait-for-all set forms (the README's "Joins and origin ids" states the same):
- One source: its values in order (markers included: the worker passes them on).
- Several sources whose first values share an origin pipeline (a diamond: b and c both derive
  from a): ALIGNED. A set is the values of the same source iteration, whatever order they arrive
  in. Each link delivers a pipeline's origins in increasing order, so once a source has sent
  iteration k (or a later epoch), it will never send an earlier one: a value waiting for a
  partner its source has passed (filtered out, or processed before a restart) can never pair,
  and leaves as a set with SKIP placeholders ("unpaired"), as does a set with a marker in it.
- Several sources with no common origin: FIFO, one value of each in arrival order (DPorch).
- `any_input`: a set is ready as soon as one source has a value; the missing ones are None (for
  feedback loops). Markers leave alone.

One source (the common case): a batch of consecutive new values is queued as one Span (no item
per value); `next_item`, `pop`, `depth` and `queued` take and count its values one by one.

Replicas: the processes NAME#TAG-K of a replicated pipeline are ONE source, NAME (its queue, its
key in a set, one of source_pipeline_count). Methods that take a source accept a replica's
process name for it (connect, end, has_ended, `in`, queued), `push` and `appender` take the
source's name (NAME). NAME's stream ends once every replica the directory lists as live
(`set_live`) has ended, and at least one has; before any directory, every replica that connected.
Its replicas' values interleave, so a join never takes NAME as having passed an id (its values
wait for their partners, or for the end of the stream).
"""

from __future__ import annotations

import enum
import functools
import itertools
import operator
from collections import deque
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

from porch.names import is_replica, pipeline_of
from porch.stream import SKIP
from porch.wire import Origin, Stream

UserValue = Any  # what a step() returned: any Python value (the one free-form alias here)
Item = tuple[int, UserValue, Origin, int | None]  # (link seq, value, origin, generation)
Taken = dict[str, Item]  # one input set's queue items by source name (what is committed)
Inputs = dict[str, UserValue]  # one input set's values by source name (step()'s input_data)

OLD_EPOCHS = 16  # epochs of one origin pipeline remembered per source (restarts of it)
UNPAIRED: Item = (0, SKIP, (), None)  # the place of a partner that will never come
_ORIGIN = operator.itemgetter(2)
_VALUE = operator.itemgetter(1)
_STREAM = operator.itemgetter(0)


class Span:
    """Consecutive values of one source instance queued as one entry (one source's fast path):
    value i has link seq `seq + i` and the origin `(stream, origin_seq + i)` (none when
    `stream` is None); `at` is the first one not taken yet."""

    __slots__ = ("at", "generation", "origin_seq", "seq", "skips", "stream", "values")

    def __init__(
        self,
        seq: int,
        values: list[UserValue],
        stream: Any,
        origin_seq: int,
        generation: int | None,
    ) -> None:
        self.seq = seq
        self.values = values
        self.at = 0
        self.stream = stream
        self.origin_seq = origin_seq
        self.generation = generation
        # whether a value is a skip marker (marked(); False: a WHOLE batch's, none is)
        self.skips: bool | None = None

    def __len__(self) -> int:
        return len(self.values) - self.at

    def marked(self) -> bool:
        """Whether one of its values is a skip marker (looked for once)."""
        skips = self.skips
        if skips is None:
            skips = self.skips = any(map(operator.is_, self.values, itertools.repeat(SKIP)))
        return skips

    def origin(self, i: int) -> Origin:
        """Value i's origin."""
        stream = self.stream
        return () if stream is None else (stream, self.origin_seq + i)

    def take(self) -> Item:
        """The next value's queue item."""
        i = self.at
        self.at = i + 1
        return (self.seq + i, self.values[i], self.origin(i), self.generation)


def _count(queue: deque[Any]) -> int:
    """Values in a queue of items and Spans."""
    return sum(len(entry) if type(entry) is Span else 1 for entry in queue)


class TooManySources(Exception):
    """More distinct sources connected than the config's source_pipeline_count."""


class Pairing(enum.Enum):
    """How a wait-for-all gate picks the values of one set."""

    UNDECIDED = "undecided"  # not every source has sent a value yet
    FIFO = "fifo"
    ALIGNED = "aligned"
    ANY = "any"


Key = tuple[Any, ...]  # flat (stream, seq, ...): the value's id in each aligned pipeline


class _Frontier:
    """How far one source has come in each origin stream (its values arrive in order)."""

    def __init__(self) -> None:
        self.highest: dict[Stream, int] = {}  # stream (pipeline, epoch) -> highest seq sent
        self.current: dict[str, Stream] = {}  # pipeline -> the stream (epoch) it sends now

    def advance(self, key: Key) -> None:
        highest = self.highest
        for i in range(0, len(key), 2):
            stream, seq = key[i], key[i + 1]
            known = highest.get(stream)
            if known is None:  # a new epoch of that pipeline: the earlier ones are over
                self.current[stream[0]] = stream
                highest[stream] = seq
                if len(highest) > OLD_EPOCHS:
                    del highest[next(iter(highest))]
            elif seq > known:
                highest[stream] = seq

    def advance_one(self, stream: Any, seq: int) -> None:
        known = self.highest.get(stream)
        if known is None:
            self.advance((stream, seq))
        elif seq > known:
            self.highest[stream] = seq

    def passed_one(self, stream: Any, seq: int) -> bool:
        """passed() of the id (stream, seq)."""
        known = self.highest.get(stream)
        return known is not None and (seq <= known or self.current[stream[0]] != stream)

    def passed(self, key: Key) -> bool:
        """Whether this source is past `key`: it will never send a value of it."""
        highest = self.highest
        for i in range(0, len(key), 2):
            stream = key[i]
            known = highest.get(stream)
            if known is not None and (key[i + 1] <= known or self.current[stream[0]] != stream):
                return True
        return False


class _Interleaved(_Frontier):
    """The frontier of a replicated source: its replicas' values interleave, so it is never
    known to be past an id (until its stream ends)."""

    def passed(self, key: Key) -> bool:
        return False

    def passed_one(self, stream: Any, seq: int) -> bool:
        return False


@dataclass
class _Replicas:
    """The replica processes of one replicated source, and which of them ended their stream."""

    members: set[str] = field(default_factory=set)  # connected (or finished before they came)
    ended: set[str] = field(default_factory=set)
    live: Set[str] | None = None  # the directory's live replicas (None: no directory yet)

    def over(self) -> bool:
        """Whether the source's stream ended: every live replica ended, and at least one."""
        live = self.members if self.live is None else self.live
        return bool(self.ended) and all(name in self.ended for name in live)


class FanIn:
    """Collects values per source and releases them as one input set per iteration."""

    def __init__(self, expected: int, any_input: bool = False) -> None:
        self.expected = expected
        self.any_input = any_input
        self.pairing = Pairing.ANY if any_input else Pairing.UNDECIDED
        if expected == 1 and not any_input:
            self.pairing = Pairing.FIFO
        self._queues: dict[str, deque[Any]] = {}
        self._ended: set[str] = set()
        self._replicas: dict[str, _Replicas] = {}  # replicated sources by pipeline name
        # called with a replicated source's name just before its stream ends (the inbox
        # delivers the values it still holds back for ordering)
        self.before_end: Callable[[str], None] | None = None
        self._aligner = Aligner(self._queues, self._ended)  # used once pairing is ALIGNED
        self._only: deque[Any] = deque()  # one source: its queue (for the fast paths)
        self._only_name = ""
        if expected == 1:
            self.ready = self._ready_only  # type: ignore[method-assign]
            self.pop = self._pop_only  # type: ignore[method-assign]

    @property
    def unpaired(self) -> int:
        """Values dropped: a partner was filtered out upstream or never came."""
        self._aligner.drain()
        return self._aligner.unpaired

    @property
    def aligned_on(self) -> tuple[str, ...]:
        """The origin pipelines an ALIGNED gate pairs values by."""
        return self._aligner.aligned_on

    def _ready_only(self) -> bool:
        return bool(self._only)

    def _pop_only(self) -> Taken:
        return {self._only_name: self.next_item()}

    def next_item(self) -> Item:
        """One source: its next queued item (taken off its Span, if it is in one)."""
        queue = self._only
        head = queue[0]
        if type(head) is not Span:
            return queue.popleft()  # type: ignore[no-any-return]
        item = head.take()
        if head.at == len(head.values):
            queue.popleft()
        return item

    def takes_spans(self) -> bool:
        """Whether several sources' consecutive values are queued as one Span (push_span):
        a two-source join aligned on one pipeline."""
        return self.pairing is Pairing.ALIGNED and self._aligner.lazy

    def push_span(self, source: str, span: Span) -> None:
        """Queue `source`'s consecutive values (when takes_spans())."""
        self._aligner.push_span(source, span)

    def pairs(self) -> PairRun | None:
        """The oldest complete sets, if they are a run of pairs (an aligned join of two
        sources): take them with took_pairs()."""
        if self.pairing is not Pairing.ALIGNED:
            return None
        self._aligner.drain()
        return self._aligner.pairs()

    def took_pairs(self, run: PairRun, count: int) -> None:
        """The oldest `count` sets of `run` (from pairs()) were taken."""
        self._aligner.took_pairs(run, count)

    def single(self) -> tuple[str, deque[Any]]:
        """One expected source: its name and its queue (items leave it from the left)."""
        return self._only_name, self._only

    def appender(self, source: str) -> Callable[[Any], None]:
        """What queues one item of `source`: the fastest callable for the current pairing."""
        if self.pairing is Pairing.FIFO or self.pairing is Pairing.ANY:
            return self._queues[source].append
        if self.pairing is Pairing.ALIGNED:
            return self._aligner.appender(source)
        return functools.partial(self.push, source)

    @property
    def sources(self) -> list[str]:
        """Names of the sources connected so far, in order of arrival."""
        return list(self._queues)

    def connect(self, source: str) -> None:
        """Register a source or one replica of it (idempotent); raise TooManySources past the
        expected count."""
        replica = is_replica(source)
        if replica:
            name = pipeline_of(source)
            if name not in self._queues and len(self._queues) >= self.expected:
                raise TooManySources(source)
            group = self._replicas.setdefault(name, _Replicas())
            group.members.add(source)
            group.ended.discard(source)  # a restarted replica starts a new stream
            source = name
        if source in self._queues:
            self._aligner.drain()  # (what came before is aligned as the source was)
            self._ended.discard(source)  # a restarted source starts a new stream
            return
        if len(self._queues) >= self.expected:
            raise TooManySources(source)
        self._queues[source] = deque()
        if self.expected == 1:
            self._only, self._only_name = self._queues[source], source
        self._aligner.connect(source, interleaved=replica)

    def __contains__(self, source: object) -> bool:
        if isinstance(source, str) and is_replica(source):
            group = self._replicas.get(pipeline_of(source))
            return group is not None and source in group.members
        return source in self._queues

    def members(self, source: str) -> list[str]:
        """The processes of a source: its connected replicas, or the source itself."""
        group = self._replicas.get(source)
        return sorted(group.members) if group is not None else [source]

    def live_replicas(self, source: str) -> list[str]:
        """The replicas of `source` that may still send: listed as live by the directory and
        not ended ([] before any directory: who else comes is not known)."""
        group = self._replicas.get(source)
        if group is None or group.live is None:
            return []
        return [name for name in group.live if name not in group.ended]

    def set_live(self, source: str, live: Set[str]) -> None:
        """The replicas of `source` the directory lists as live (neither gone, withdrawn, nor
        failed or stopped for good): its stream ends once each of them ended."""
        group = self._replicas.setdefault(source, _Replicas())
        group.live = live
        if source in self._queues and source not in self._ended and group.over():
            self._end(source)

    def all_connected(self) -> bool:
        """Whether every expected source has said hello."""
        return len(self._queues) >= self.expected

    def push(self, source: str, item: Any) -> None:
        """Queue one item from a connected source."""
        if self.pairing is not Pairing.ALIGNED:
            self._queues[source].append(item)
            if self.pairing is Pairing.UNDECIDED and self.ready_to_decide():
                self._decide()
            return
        self._aligner.drain()
        self._aligner.align(source, item)

    def end(self, source: str) -> None:
        """Mark a source's stream (or one replica's) as ended; what it queued is still
        delivered."""
        if is_replica(source):
            name = pipeline_of(source)
            group = self._replicas.get(name)
            if group is None or source not in group.members:
                return
            group.ended.add(source)
            if name in self._ended or not group.over():
                return
            source = name
        if source in self._queues:
            self._end(source)

    def _end(self, source: str) -> None:
        self._aligner.drain()
        if self.before_end is not None and source in self._replicas:
            self.before_end(source)
        self._ended.add(source)
        if self.pairing is Pairing.ALIGNED:
            self._aligner.sweep(source)

    def has_ended(self, source: str) -> bool:
        """Whether `source` (or that replica of it) sent end of stream."""
        if is_replica(source):
            group = self._replicas.get(pipeline_of(source))
            return group is not None and source in group.ended
        return source in self._ended

    def ready(self) -> bool:
        """Whether an input set can be taken now."""
        pairing = self.pairing
        if pairing is Pairing.ALIGNED:
            aligner = self._aligner
            if aligner.log:
                aligner.drain()
            return bool(aligner.sets)
        queues = self._queues
        if pairing is Pairing.ANY:
            return any(queues.values())
        if pairing is Pairing.UNDECIDED or len(queues) < self.expected:
            return False  # it decides as soon as every source has a value (markers count)
        if all(queues.values()):
            return True
        return any(q and q[0][1] is SKIP for q in queues.values())  # a marker leaves alone

    def pop(self) -> Taken:
        """Take one input set's items by source (only `ready()` ones; SKIP items are markers)."""
        if self.pairing is Pairing.ALIGNED:
            self._aligner.drain()
            return self._aligner.pop()
        queues = self._queues
        if len(queues) > 1 or self.any_input:
            for name, queue in queues.items():
                if queue and queue[0][1] is SKIP:
                    return {name: queue.popleft()}
        return {name: q.popleft() for name, q in queues.items() if q}

    def exhausted(self) -> bool:
        """Whether no input set can ever form again."""
        if not self._ended:  # (every idle wake-up asks: no source ended, no drain)
            return False
        if self.any_input:
            return len(self._ended) >= self.expected and not any(self._queues.values())
        if self.pairing is Pairing.ALIGNED:
            self._aligner.drain()
            return self._aligner.exhausted()
        return any(not self._queues[name] for name in self._ended)

    def queued(self, source: str) -> int:
        """How many values of `source` (of every replica of it) wait."""
        source = pipeline_of(source)
        if self.pairing is Pairing.ALIGNED:
            self._aligner.drain()
            return self._aligner.counts.get(source, 0)
        queue = self._queues.get(source)
        return _count(queue) if queue is not None else 0

    def depth(self) -> int:
        """How many values are queued across all sources."""
        if self.pairing is Pairing.ALIGNED:
            self._aligner.drain()
            return sum(self._aligner.counts.values())
        depth = 0
        for queue in self._queues.values():  # (a loop: an idle worker's heartbeat reads it)
            if queue:
                depth += _count(queue)
        return depth

    # ---- choosing how to pair --------------------------------------------------------------

    def ready_to_decide(self) -> bool:
        """Whether every expected source has sent its first value."""
        return len(self._queues) >= self.expected and all(self._queues.values())

    def _decide(self) -> None:
        """Align when the first values of every source share an origin pipeline, else FIFO."""
        common: set[str] | None = None
        for queue in self._queues.values():
            origin = queue[0][2]
            pipelines = {stream[0] for stream in origin[::2]}
            common = pipelines if common is None else common & pipelines
        if not common:
            self.pairing = Pairing.FIFO
            return
        self.pairing = Pairing.ALIGNED
        self._aligner.start(tuple(sorted(common)))
        # Every queued value moves to pending before any end counts: a source that ended
        # while the gate was undecided still holds values that are not in pending yet, and
        # must not be taken as having passed its partners' iterations.
        ended = set(self._ended)
        self._ended.clear()
        for name, queue in self._queues.items():
            while queue:
                self._aligner.align(name, queue.popleft())
        self._ended.update(ended)
        for name in ended:
            self._aligner.sweep(name)


Side = list[Item] | tuple[int, int | None]  # one source's items of a PairRun (see there)


class PairRun:
    """Complete sets of two sources, in order: set i is `ones[i]` of `names[0]` and `twos[i]`
    of `names[1]` (the gate's order of its sources), its id `origins[i]` (None: `(stream,
    origin_seq + i)`); `start` is the next set. Each source's side of the run (`sides`) is the
    list of its queue items, or `(seq, generation)`: consecutive values of one source instance
    whose link seqs start at `seq` (Span). `marked`: whether a set may hold a skip marker
    (False: none does)."""

    __slots__ = (
        "marked",
        "names",
        "ones",
        "origin_seq",
        "origins",
        "sides",
        "start",
        "stream",
        "twos",
    )

    def __init__(
        self,
        names: tuple[str, str],
        ones: list[UserValue],
        twos: list[UserValue],
        sides: tuple[Side, Side],
        origins: list[Origin] | None,
        stream: Any = None,
        origin_seq: int = 0,
        marked: bool | None = None,
    ) -> None:
        self.names = names
        self.ones = ones
        self.twos = twos
        self.sides = sides
        self.origins = origins
        self.stream = stream
        self.origin_seq = origin_seq
        self.start = 0
        if marked is None:  # (False: no set has a marker; True: one may have)
            skips = itertools.repeat(SKIP)
            marked = any(map(operator.is_, ones, skips)) or any(map(operator.is_, twos, skips))
        self.marked = marked

    def origin(self, i: int) -> Origin:
        """Set i's id."""
        origins = self.origins
        return origins[i] if origins is not None else (self.stream, self.origin_seq + i)

    def item(self, side: int, i: int) -> Item:
        """Set i's queue item of source `names[side]`."""
        items = self.sides[side]
        if isinstance(items, list):
            return items[i]
        seq, generation = items
        value = self.ones[i] if side == 0 else self.twos[i]
        return (seq + i, value, self.origin(i), generation)

    def generation(self, side: int, i: int) -> int | None:
        """The source instance set i's item of `names[side]` came from."""
        items = self.sides[side]
        return items[i][3] if isinstance(items, list) else items[1]

    def markers(self) -> int:
        """How many sets hold one marker and one value (the value goes unpaired)."""
        if not self.marked:
            return 0
        ones, twos = self.ones, self.twos
        return sum((one is SKIP) is not (two is SKIP) for one, two in zip(ones, twos, strict=True))


class Aligner:
    """An ALIGNED gate: pairs the values of several sources by their id in the aligned origin
    pipelines (see the module docstring), whatever order they arrive in."""

    def __init__(self, queues: dict[str, deque[Any]], ended: set[str]) -> None:
        self.queues = queues  # the gate's sources, in order (shared with FanIn)
        self.ended = ended  # sources that ended their stream (shared with FanIn)
        self.unpaired = 0  # values dropped: a partner was filtered out upstream or never came
        self.aligned_on: tuple[str, ...] = ()
        self._one: str | None = None  # the one pipeline aligned on (the common case)
        self._partner: dict[str, tuple[str, dict[Key, Any]]] = {}  # two sources: the other one
        self._pending: dict[str, dict[Key, Any]] = {}
        self._first = ""  # two sources: the one that connected first (sets list it first)
        self._frontiers: dict[str, _Frontier] = {}
        self.sets: deque[Taken | PairRun] = deque()  # complete sets, ready to be taken
        self.counts: dict[str, int] = {}  # values waiting per source
        # Two sources aligned on one pipeline (a diamond) queue their values unaligned, in
        # `arrivals` (a run of items) or as Spans, and `log` says in which order they came
        # (source, and the index of the run's first item in arrivals[source], or the Span);
        # drain() aligns them before anything looks at the gate, as if each value had been
        # aligned as it came, whole runs at a time. Spans of one source that wait for the
        # other's values stay Spans (`ahead`, of `ahead_source`; both pending dicts empty):
        # they stand for the values align() would hold in that source's pending dict.
        self.lazy = False
        self.arrivals: dict[str, deque[Item]] = {}
        self.log: list[tuple[str, int | Span]] = []
        self._ahead: deque[Span] = deque()
        self._ahead_source = ""
        self._runs_logged = False  # the log holds runs of items (not only Spans)

    def connect(self, source: str, *, interleaved: bool = False) -> None:
        """Register a new source (`interleaved`: a replicated one)."""
        self._pending[source] = {}
        self._frontiers[source] = _Interleaved() if interleaved else _Frontier()
        self.counts[source] = 0
        self.arrivals[source] = deque()

    def start(self, aligned_on: tuple[str, ...]) -> None:
        """Pair by the ids of these origin pipelines from now on."""
        self.aligned_on = aligned_on
        self._one = aligned_on[0] if len(aligned_on) == 1 else None
        if len(self._pending) == 2:
            (first, one), (second, two) = self._pending.items()
            self._partner = {first: (second, two), second: (first, one)}
            self._first = next(iter(self.queues))
            plain = all(type(f) is _Frontier for f in self._frontiers.values())
            self.lazy = self._one is not None and plain

    def appender(self, source: str) -> Callable[[Any], None]:
        """What queues a run of `source`'s values (one call per run; valid until the next
        call on the gate)."""
        if not self.lazy:
            return functools.partial(self.align, source)
        arrivals = self.arrivals[source]
        self.log.append((source, len(arrivals)))
        self._runs_logged = True
        return arrivals.append

    def push_span(self, source: str, span: Span) -> None:
        """Queue `source`'s consecutive values (a lazy gate's; else one by one)."""
        if self.lazy:
            self.log.append((source, span))
        else:
            for _ in range(len(span)):
                self.align(source, span.take())

    def drain(self) -> None:
        """Align what `appender` and `push_span` queued, in the order it came."""
        log = self.log
        if not log:
            return
        if not self._runs_logged:  # Spans only (the hot path)
            entries = log[:]
            log.clear()
            for source, span in entries:
                self._align_span(source, span)  # type: ignore[arg-type]
            return
        self._runs_logged = False
        arrivals = self.arrivals
        runs: list[tuple[str, int | Span]] = []
        ends: dict[str, int] = {}
        for source, first in reversed(log):
            if type(first) is int:
                runs.append((source, ends.get(source, len(arrivals[source])) - first))
                ends[source] = first
            else:
                runs.append((source, first))
        log.clear()
        for source, count in reversed(runs):
            if isinstance(count, Span):
                self._align_span(source, count)
                continue
            if not count:
                continue
            queued = arrivals[source]
            if count == len(queued):
                items = list(queued)
                queued.clear()
            else:
                items = [queued.popleft() for _ in range(count)]
            self._unahead()
            self._align_run(source, items)

    def _unahead(self) -> None:
        """The Spans waiting ahead go into their source's pending dict (as align() holds
        them) before anything else looks at it."""
        ahead = self._ahead
        if not ahead:
            return
        pending = self._pending[self._ahead_source]
        while ahead:
            span = ahead.popleft()
            items = [span.take() for _ in range(len(span))]
            pending.update(zip(map(_ORIGIN, items), items, strict=True))

    def _align_span(self, source: str, span: Span) -> None:
        """Align a Span as align() would its values one by one: whole at once where the
        partner's Spans waiting ahead hold the same ids in order (pairs), or where nothing
        waits on either side or only this source's values (they wait, as Spans)."""
        other_name, other = self._partner[source]
        stream = span.stream
        if stream is None or stream[0] != self._one or self._pending[source] or other:
            self._unahead()
            self._align_run(source, [span.take() for _ in range(len(span))])
            return
        ahead = self._ahead
        if ahead and self._ahead_source == other_name:
            self._pair_ahead(source, span)
            if span.at == len(span.values):
                return
            if ahead:  # (not the partner's next ids)
                self._unahead()
                self._align_run(source, [span.take() for _ in range(len(span))])
                return
        first = span.origin_seq + span.at
        last = span.origin_seq + len(span.values) - 1
        if ahead:  # this source's own: ids must go on increasing in one stream
            tail = ahead[-1]
            if tail.stream != stream or tail.origin_seq + len(tail.values) - 1 >= first:
                self._unahead()
                self._align_run(source, [span.take() for _ in range(len(span))])
                return
        if other_name in self.ended or self._frontiers[other_name].passed_one(stream, first):
            self._unahead()
            self._align_run(source, [span.take() for _ in range(len(span))])
            return
        # ahead of the partner: they wait (none is passed: the partner is behind the first)
        ahead.append(span)
        self._ahead_source = source
        self._frontiers[source].advance_one(stream, last)
        self.counts[source] += len(span.values) - span.at

    def _pair_ahead(self, source: str, span: Span) -> None:
        """Pair `span`'s values with the partner's Spans waiting ahead while their ids are
        the same, in order, and no pair would make align() sweep (the partner's next id is a
        later one of the same stream, or there is none)."""
        ahead = self._ahead
        stream = span.stream
        frontier = self._frontiers[source]
        while ahead and span.at < len(span.values):
            head = ahead[0]
            mine = span.origin_seq + span.at
            if head.stream != stream or head.origin_seq + head.at != mine:
                return
            waiting = len(head.values) - head.at
            count = min(len(span.values) - span.at, waiting)
            if count == waiting and len(ahead) > 1:
                after = ahead[1]  # the partner's next id once these pair (align() sweeps if
                if after.stream != stream or after.origin_seq + after.at <= mine + count - 1:
                    return  # it is not a later one of the same stream)
            self._span_pairs(source, span, head, count)
            if count == waiting:
                ahead.popleft()
            frontier.advance_one(stream, mine + count - 1)
            self.counts[source] += count

    def _span_pairs(self, source: str, span: Span, mates: Span, count: int) -> None:
        """`count` complete sets: the next values of `span` (of `source`) and `mates`."""
        mine, theirs = span.at, mates.at
        span.at, mates.at = mine + count, theirs + count
        ours, partners = span.values, mates.values
        if mine or count != len(ours):
            ours = ours[mine : mine + count]
        if theirs or count != len(partners):
            partners = partners[theirs : theirs + count]
        own: Side = (span.seq + mine, span.generation)
        their: Side = (mates.seq + theirs, mates.generation)
        first = source == self._first
        other_name = self._partner[source][0]
        run = PairRun(
            (source, other_name) if first else (other_name, source),
            ours if first else partners,
            partners if first else ours,
            (own, their) if first else (their, own),
            None,
            span.stream,
            span.origin_seq + mine,
            span.marked() or mates.marked(),
        )
        self.unpaired += run.markers()
        self.sets.append(run)

    def _align_run(self, source: str, items: list[Item]) -> None:
        """Align a run of `source`'s values as align() would one by one; whole runs at once
        where their ids come in order in one stream: after the partner's same ids (pairs), or
        ahead of the partner (they wait). (Nothing waits ahead as Spans: _unahead.)"""
        if not items:
            return
        keys = list(map(_ORIGIN, items))
        other_name, other = self._partner[source]
        own = self._pending[source]
        stream = keys[0][0] if len(keys[0]) == 2 else None
        if (
            len(items) < 2
            or stream is None
            or stream[0] != self._one
            or set(map(len, keys)) != {2}
            or set(map(_STREAM, keys)) != {stream}
            or not all(map(operator.lt, keys, keys[1:]))  # (one stream: by seq)
            or (own and not own.keys().isdisjoint(keys))
        ):
            for item in items:
                self.align(source, item)
            return
        frontier = self._frontiers[source]
        matched = min(len(items), len(other))
        if matched and list(itertools.islice(other, matched)) != keys[:matched]:
            matched = 0  # (not the partner's next ids: one by one)
        if matched > 1:  # the partner's oldest values, in order: pairs
            paired = matched - 1  # (the last one goes through align(): it may sweep)
            mates = list(map(other.pop, keys[:paired]))
            frontier.advance_one(stream, keys[paired - 1][1])
            self.counts[source] += paired
            ours = items[:paired]
            if source == self._first:
                self._item_pairs((source, other_name), ours, mates, keys[:paired])
            else:
                self._item_pairs((other_name, source), mates, ours, keys[:paired])
        if matched:
            self.align(source, items[matched - 1])
            items, keys = items[matched:], keys[matched:]
            if not items:
                return
        if other or other_name in self.ended or self._frontiers[other_name].passed(keys[0]):
            for item in items:
                self.align(source, item)
            return
        # ahead of the partner: they wait (none is passed: the partner is behind the first)
        own.update(zip(keys, items, strict=True))
        frontier.advance_one(stream, keys[-1][1])
        self.counts[source] += len(items)

    def _item_pairs(
        self, names: tuple[str, str], firsts: list[Item], seconds: list[Item], keys: list[Key]
    ) -> None:
        """Complete sets of queue items, in order (ids `keys`)."""
        run = PairRun(names, list(map(_VALUE, firsts)), list(map(_VALUE, seconds)),
                      (firsts, seconds), keys)  # fmt: skip
        self.unpaired += run.markers()  # (a set with a marker: its value goes unpaired)
        self.sets.append(run)

    def pairs(self) -> PairRun | None:
        """The oldest complete sets if they are a run of pairs (take them with took_pairs)."""
        sets = self.sets
        if sets:
            head = sets[0]
            if type(head) is PairRun:
                return head
        return None

    def took_pairs(self, run: PairRun, count: int) -> None:
        """`count` sets of `run` (the oldest ones) were taken."""
        run.start += count
        first, second = run.names
        counts = self.counts
        counts[first] -= count
        counts[second] -= count
        if run.start >= len(run.ones):
            self.sets.popleft()

    def pop(self) -> Taken:
        """The oldest complete set."""
        head = self.sets[0]
        if type(head) is PairRun:
            index = head.start
            (first, second) = head.names
            pair = {first: head.item(0, index), second: head.item(1, index)}
            self.took_pairs(head, 1)
            return pair
        taken = self.sets.popleft()
        assert isinstance(taken, dict)
        for name, item in taken.items():
            if item is not UNPAIRED:
                self.counts[name] -= 1
        return taken

    def exhausted(self) -> bool:
        """Whether no set can form again (a source ended with nothing left waiting)."""
        ahead = self._ahead_source if self._ahead else None
        return not self.sets and any(
            not self._pending[name] and name != ahead for name in self.ended
        )

    def _key(self, origin: tuple[Any, ...]) -> Key | None:
        """`origin`'s ids in the aligned pipelines, in their order; None if one is missing."""
        if len(origin) == 2 and origin[0][0] == self._one:
            return origin  # the common case: one id, of the one aligned pipeline
        found: dict[str, tuple[Any, int]] = {}
        for i in range(0, len(origin), 2):
            found.setdefault(origin[i][0], (origin[i], origin[i + 1]))
        try:
            return tuple(x for p in self.aligned_on for x in found[p])
        except KeyError:
            return None

    def align(self, source: str, item: Any) -> None:
        if self._ahead:
            self._unahead()
        self.counts[source] += 1
        origin = item[2]
        partner = self._partner.get(source)
        if partner is not None and len(origin) == 2 and origin[0][0] == self._one:
            # the hot path: two sources, one aligned pipeline, one id; the value is its own key
            pending = self._pending[source]
            if origin not in pending:
                self._frontiers[source].advance_one(origin[0], origin[1])
                other_name, other = partner
                if origin in other:  # its partner waits: the set is complete
                    mate = other.pop(origin)
                    if other and self._may_have_passed(origin, next(iter(other))):
                        self.sweep(source)  # older values of the other one, passed, go first
                    if item[1] is SKIP or mate[1] is SKIP:
                        self._release({source: item, other_name: mate})
                    elif source == self._first:  # a whole pair, in the sources' order
                        self.sets.append({source: item, other_name: mate})
                    else:
                        self.sets.append({other_name: mate, source: item})
                    return
                pending[origin] = item
                if other and self._may_have_passed(origin, next(iter(other))):
                    self.sweep(source)
                if other_name in self.ended or self._frontiers[other_name].passed(origin):
                    self._settle(origin)
                return
        key = self._key(origin)
        pending = self._pending[source]
        if key is None or key in pending:  # no aligned origin, or a second value of one
            self._release({source: item})
            return
        self._frontiers[source].advance(key)
        if all(key in p for name, p in self._pending.items() if name != source):  # complete
            found = {name: (item if name == source else p.pop(key))
                     for name, p in self._pending.items()}  # fmt: skip
            self.sweep(source)  # older values of the others that this one has passed go first
            self._release(found)
            return
        pending[key] = item
        self.sweep(source)
        self._settle(key)

    @staticmethod
    def _may_have_passed(origin: Key, oldest: Key) -> bool:
        """Whether a source that sent `origin` may be past `oldest` (another source's oldest
        waiting value); False for the usual case of a later value of the same stream."""
        return not (len(oldest) == 2 and oldest[0] == origin[0] and oldest[1] > origin[1])

    def sweep(self, source: str) -> None:
        """`source` moved on (or ended): settle the other sources' values it has passed."""
        self._unahead()
        ended = source in self.ended
        frontier = self._frontiers[source]
        own = self._pending[source]
        passed = []
        for name, pending in self._pending.items():
            if name == source:
                continue
            for key in pending:  # oldest first; no copy: usually the first one or two decide
                if key in own:
                    continue
                if not (ended or frontier.passed(key)):
                    break  # keys arrive in order: the rest are newer still
                passed.append(key)
        for key in passed:
            self._settle(key)

    def _settle(self, key: Key) -> None:
        """Release the set of `key` once every source holds it or has passed it."""
        holders = {}
        for name, pending in self._pending.items():
            if key in pending:
                holders[name] = pending
            elif not (name in self.ended or self._frontiers[name].passed(key)):
                return  # still to come from `name`
        if holders:
            self._release({name: pending.pop(key) for name, pending in holders.items()})

    def _release(self, found: Taken) -> None:
        taken = {name: found.get(name, UNPAIRED) for name in self.queues}
        kept = 0
        for item in found.values():
            if item[1] is not SKIP:
                kept += 1
        if kept and kept < len(taken):  # real values that go without their partners
            self.unpaired += kept
        self.sets.append(taken)
