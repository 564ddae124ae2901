"""A worker's heartbeat: the health report (porch/health.py) it sends its supervisor every
HEARTBEAT_INTERVAL_S, built from where each count is kept, and the step() duration histogram
in it.

Counts live where they are counted: the loop's own in `Counters`, the inbox's in
`InboxCounters`, the links' on each link, the dead letters' and the handshakes' with their
owners. The report names each HealthReport field it fills (mypy checks the names): a counter
is added to HealthReport, counted where it happens, and named here once.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from porch.health import HealthReport
from porch.security import LinkSecurity
from workers.deadletter import DeadLetters
from workers.inbox import Inbox
from workers.replicas import Output, TargetGroup, all_links, shown_links
from workers.targets import link_status

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
        counters, outputs, inbox = self.counters, all_links(self.outputs), self.inbox
        groups = [output for output in self.outputs if isinstance(output, TargetGroup)]
        denied = self.security.denied if self.security is not None else 0
        return HealthReport(
            iterations=counters.iterations,
            msgs_out=counters.msgs_out,
            skipped=counters.skipped,
            msgs_in=inbox.counters.msgs_in if inbox is not None else 0,
            duplicates=inbox.counters.duplicates if inbox is not None else 0,
            bad_frames=inbox.counters.bad_frames if inbox is not None else 0,
            unpaired=inbox.counters.unpaired if inbox is not None else 0,
            reorder_window_overflow=(
                inbox.counters.reorder_window_overflow if inbox is not None else 0
            ),
            queue_depth=inbox.fanin.depth() if inbox is not None else 0,
            # CURVE clients turned away: by the ZAP handler, or by another server key
            handshakes_rejected=denied + (inbox.link.handshakes_failed if inbox is not None else 0),
            dead_letters=self.dead_letters.count,
            # (a replicated target counts what it got once every replica had finished too)
            dropped=sum(link.dropped for link in outputs) + sum(group.dropped for group in groups),
            replayed=sum(link.replayed for link in outputs),
            handshakes_failed=sum(link.handshakes_failed for link in outputs),
            reconnects=sum(link.reconnects for link in outputs),
            state=state,
            warning=warning,
            targets=tuple(link_status(link) for link in shown_links(self.outputs)),
            step_seconds=self.steps.encode(),
        )
