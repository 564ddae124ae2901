"""End-to-end acknowledgements of a replica (issue 13): an input is acknowledged upstream only
once every output it produced has left the replica's output links for good.

A replica killed with output still in its memory outbox (or in ZeroMQ's queue) would otherwise
lose it: its inputs were acknowledged when step() consumed them, so the sender upstream never
hands them to another replica. Here the inbox's commit of an input (workers/inbox.py
commit_one) is deferred: the commits made since the last look are sealed together in a Mark
that records, per output link still holding something, the newest seq handed to it so far
(every output of those inputs is at or below it: a seal comes after the outputs are handed to
the links). A Mark is released, and its commits applied (the inbox acknowledges them upstream,
cumulative per source process, as before), once each of its links' `released` seq (acked,
dropped by drop_oldest, dead-lettered, or its target retired: what the README counts) reaches
what it recorded. Marks are released in order: a later one records at least as much.

Values taken out of a link to go to another one (a replica gone for good hands its outbox to
the others; a target becoming replicas, or one process again) leave it without being
delivered: a link counts each such take (`OutputLink.handed_on`), and a Mark whose link was
taken from since it was sealed is sealed again against every link as it is now (the values
went to them).

Used by a replica with at-least-once delivery and targets, that does not stamp its own origins
(fan_in any: a feedback loop whose stages each waited for the others' acks could stall). An
idle replica holding commits also wakes on its targets' acks (Waiter.deferred), a busy one reads
them every burst. While a source replays to it what an earlier instance of it was sent (HELLO
flag HELLO_REPLAY: it restarted, perhaps crashing on one of them), it takes one input at a time,
each once the one before is acknowledged (Worker._settle, up to 1 s): the message it crashes on
every time is then its sender's oldest unacknowledged one, the one the sender dead-letters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workers.links import OutputLink

Commit = tuple[int, int | None]  # an input's (link seq, source generation), as commit_one takes
Need = tuple[OutputLink, int, int]  # a link, the seq it must release, its handed_on then


@dataclass
class Mark:
    """Inputs committed together, and what their outputs' links must release first."""

    commits: list[Commit]
    needs: tuple[Need, ...]


class DeferredAcks:
    """Holds a replica's input commits until their outputs are acknowledged (module doc)."""

    def __init__(
        self,
        links: Callable[[], Sequence[OutputLink]],
        commit: Callable[[int, int | None], None],
        flush: Callable[[], None],
    ) -> None:
        self.links = links  # every output link now (a replicated target's: each replica's)
        self.commit = commit  # the inbox's own commit of one input (acks upstream, batched)
        self.flush = flush  # the inbox's flush_acks: acknowledge what was released at once
        self.unsealed: list[Commit] = []
        self.marks: deque[Mark] = deque()
        self.held = 0  # commits not yet applied (unsealed and in marks)
        self.resealed = 0

    def defer(self, seq: int, generation: int | None) -> None:
        """An iteration consumed input `seq` of source instance `generation`; its outputs (if
        any) are in the links or will be before the next release()."""
        self.unsealed.append((seq, generation))
        self.held += 1

    def holds(self, generation: int | None) -> set[int]:
        """The seqs of source instance `generation` whose commit is still deferred."""
        held = {seq for seq, gen in self.unsealed if gen == generation}
        for mark in self.marks:
            held.update(seq for seq, gen in mark.commits if gen == generation)
        return held

    def _needs(self) -> tuple[Need, ...]:
        """What every link holds now: the newest seq handed to it, where it is not released."""
        needs: list[Need] = []
        for link in self.links():
            newest = link.next_seq - 1
            if newest > link.released and not link.gone:
                needs.append((link, newest, link.handed_on))
        return tuple(needs)

    def release(self) -> int:
        """Seal what was committed since the last call, then apply the commits of every Mark
        whose outputs left their links for good; how many were applied. Call it only where no
        consumed input's outputs are still on their way to the links (after acks were read)."""
        marks = self.marks
        if self.unsealed:
            marks.append(Mark(self.unsealed, self._needs()))
            self.unsealed = []
        applied = 0
        while marks:
            needs = marks[0].needs
            if any(link.handed_on != handed for link, _, handed in needs):
                self._reseal()
                needs = marks[0].needs
            if any(link.released < seq and not link.gone for link, seq, _ in needs):
                break
            for seq, generation in marks.popleft().commits:
                self.commit(seq, generation)
                applied += 1
        if applied:
            self.held -= applied
            self.flush()
        return applied

    def _reseal(self) -> None:
        """Values were taken out of a link to go to others: every Mark waits for all links as
        they are now."""
        needs = self._needs()
        for mark in self.marks:
            mark.needs = needs
        self.resealed += 1
