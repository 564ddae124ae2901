"""A worker's health report: the counters and notes it sends its supervisor every second.

One typed definition, encoded and decoded here once, used by the worker (workers/worker.py
fills it from its and its inbox's counts) and the supervisor (porch/supervisor.py keeps each
worker's last one; status, porchd's rates and `porch run`'s progress read it). A new counter is
one field here (and in COUNTERS when status shows it as a total) plus where it is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HEALTH_VERSION = 1  # sent as `version`; a report without it is read the same (version 1)


@dataclass(frozen=True)
class HealthReport:
    """One health report (the heartbeat). Counters count since the worker process started."""

    iterations: int = 0
    msgs_in: int = 0
    msgs_out: int = 0
    dropped: int = 0
    bad_frames: int = 0
    duplicates: int = 0  # inputs seen twice (by link seq or by origin)
    dead_letters: int = 0
    skipped: int = 0
    replayed: int = 0
    handshakes_rejected: int = 0  # CURVE clients turned away (ZAP, or another server key)
    handshakes_failed: int = 0  # our output links' handshakes that a target refused
    reconnects: int = 0  # output links reopened (dead connection, or target rediscovered)
    unpaired: int = 0  # join values dropped: their partner was filtered out or never comes
    queue_depth: int = 0  # a gauge: inputs waiting now
    state: str = ""  # the worker's WorkerState value when it sent the report
    warning: str = ""  # what keeps it from making progress, "" when nothing
    targets: tuple[Mapping[str, Any], ...] = ()  # one per output link (worker.link_status)
    # the step() duration histogram: {"bounds": [s...], "counts": [n...], "sum": s}
    step_seconds: Mapping[str, Any] | None = None

    def counter(self, name: str) -> int:
        """One counter by name (a field of this class)."""
        value: int = getattr(self, name)
        return value

    def counters(self) -> dict[str, int]:
        """Every counter, the totals and queue_depth, by name."""
        return {name: getattr(self, name) for name in (*COUNTERS, "queue_depth")}

    def encode(self) -> dict[str, object]:
        """The fields of the control message (porch.control.MessageType.HEALTH)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["targets"] = [dict(t) for t in self.targets]
        return {"version": HEALTH_VERSION, **fields}

    @classmethod
    def decode(cls, message: Mapping[str, object]) -> HealthReport:
        """Read a report from a control message; a missing or ill-typed field reads as its
        default (a worker of another version still shows what it does send)."""
        counts = {name: _count(message.get(name)) for name in (*COUNTERS, "queue_depth")}
        targets = message.get("targets")
        steps = message.get("step_seconds")
        return cls(
            **counts,
            state=_text(message.get("state")),
            warning=_text(message.get("warning")),
            targets=tuple(t for t in targets if isinstance(t, dict))
            if isinstance(targets, list)
            else (),
            step_seconds=steps if isinstance(steps, dict) else None,
        )


# counters status shows as totals over every worker instance a pipeline has had, in its order
COUNTERS: tuple[str, ...] = (
    "iterations",
    "msgs_in",
    "msgs_out",
    "dropped",
    "bad_frames",
    "duplicates",
    "dead_letters",
    "skipped",
    "replayed",
    "handshakes_rejected",
    "handshakes_failed",
    "reconnects",
    "unpaired",
)
EMPTY = HealthReport()


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
