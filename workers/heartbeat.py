"""A worker's heartbeat: the health report (porch/health.py) it sends its supervisor every
HEARTBEAT_INTERVAL_S, built from where each count is kept, and the step() duration histogram
in it.

Counts live where they are counted: the loop's own in `Counters`, the inbox's in
`InboxCounters`, the links' on each link, the dead letters' and the handshakes' with their
owners. The report names each HealthReport field it fills (mypy checks the names): a counter
is added to HealthReport, counted where it happens, and named here once, in `counts`, which
gives them in porch.health.INT_FIELDS order (the heartbeat sends them so, without building a
report; a unit test holds each in its place).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from porch.health import HealthReport
from porch.security import LinkSecurity
from workers.deadletter import DeadLetters
from workers.inbox import Inbox
from workers.links import OutputLink
from workers.replicas import Output, TargetGroup, shown_links
from workers.targets import LinkStatus, link_status

# upper bounds of the step() duration histogram (seconds), as Prometheus buckets
STEP_BOUNDS_S = [0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]


@dataclass
class Counters:
    """What the worker's loop counts itself (the rest of its health is counted elsewhere)."""

    iterations: int = 0
    msgs_out: int = 0
    skipped: int = 0


class StepHistogram:
    """How long step() took: a count per STEP_BOUNDS_S bucket (the last is +Inf) and the sum."""

    def __init__(self) -> None:
        self.counts = [0] * (len(STEP_BOUNDS_S) + 1)
        self.sum_s = 0.0

    def add(self, seconds: float) -> None:
        """Count one step() duration."""
        self.counts[bisect.bisect_left(STEP_BOUNDS_S, seconds)] += 1
        self.sum_s += seconds

    def encode(self) -> dict[str, object]:
        """The health report's `step_seconds`: {"bounds": [s...], "counts": [n...], "sum": s}."""
        # a copy of the counts: a report is compared with the one before (housekeeping.py)
        return {"bounds": STEP_BOUNDS_S, "counts": list(self.counts), "sum": self.sum_s}


class Heartbeat:
    """Builds a worker's health report from its parts."""

    def __init__(
        self,
        counters: Counters,
        outputs: Sequence[Output],
        inbox: Inbox | None,
        dead_letters: DeadLetters,
        security: LinkSecurity | None,
    ) -> None:
        self.counters = counters
        self.outputs = outputs
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.security = security
        self.steps = StepHistogram()

    def report(self, state: str, warning: str) -> HealthReport:
        """The health report now (`state`: the worker's WorkerState value)."""
        (iterations, msgs_in, msgs_out, dropped, bad_frames, duplicates, dead_letters, skipped,
         replayed, handshakes_rejected, handshakes_failed, reconnects, unpaired,
         reorder_window_overflow, queue_depth) = self.counts()  # fmt: skip
        return HealthReport(
            iterations=iterations,
            msgs_in=msgs_in,
            msgs_out=msgs_out,
            dropped=dropped,
            bad_frames=bad_frames,
            duplicates=duplicates,
            dead_letters=dead_letters,
            skipped=skipped,
            replayed=replayed,
            handshakes_rejected=handshakes_rejected,
            handshakes_failed=handshakes_failed,
            reconnects=reconnects,
            unpaired=unpaired,
            reorder_window_overflow=reorder_window_overflow,
            queue_depth=queue_depth,
            state=state,
            warning=warning,
            targets=self.targets(),
            step_seconds=self.steps.encode(),
        )

    def counts(self) -> tuple[int, ...]:
        """The report's counters and queue_depth, in porch.health.INT_FIELDS order (what an
        idle worker sends every second: one tuple, read from where each is counted; a unit
        test holds each in its place)."""
        counters, inbox = self.counters, self.inbox
        dropped = replayed = failed = reconnects = 0
        for output in self.outputs:
            links: Iterable[OutputLink] = (output,)  # type: ignore[assignment]
            if isinstance(output, TargetGroup):
                # (a replicated target counts what it got once every replica had finished too)
                dropped += output.dropped
                links = output.links.values()
            for link in links:
                dropped += link.dropped
                replayed += link.replayed
                failed += link.handshakes_failed
                reconnects += link.reconnects
        # CURVE clients turned away: by the ZAP handler, or by another server key
        rejected = self.security.denied if self.security is not None else 0
        dead = self.dead_letters.count
        if inbox is None:
            return (counters.iterations, 0, counters.msgs_out, dropped, 0, 0, dead,
                    counters.skipped, replayed, rejected, failed, reconnects, 0, 0, 0)  # fmt: skip
        got = inbox.counters
        return (counters.iterations, got.msgs_in, counters.msgs_out, dropped, got.bad_frames,
                got.duplicates, dead, counters.skipped, replayed,
                rejected + inbox.link.handshakes_failed, failed, reconnects, got.unpaired,
                got.reorder_window_overflow, inbox.fanin.depth())  # fmt: skip

    def targets(self) -> tuple[LinkStatus, ...]:
        """Each shown output link's status (the report's `targets`)."""
        outputs = self.outputs
        if TargetGroup not in map(type, outputs):  # (each link is shown)
            return tuple(map(link_status, outputs))  # type: ignore[arg-type]
        return tuple(link_status(link) for link in shown_links(outputs))
