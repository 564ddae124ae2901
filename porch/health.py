"""A worker's health report: the counters and notes it sends its supervisor every second.

One typed definition, encoded and decoded here once, used by the worker (workers/worker.py
fills it from its and its inbox's counts) and the supervisor (porch/supervisor.py keeps each
worker's last one; status, porchd's rates and `porch run`'s progress read it). A new counter is
one `counter_field(...)` line here plus where it is counted: COUNTERS, status (porch/status.py),
porchctl and /metrics (porch/metrics.py) follow from it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

HEALTH_VERSION = 1  # sent as `version`; a report without it is read the same (version 1)


@dataclass(frozen=True)
class CounterInfo:
    """How /metrics names and explains one counter."""

    metric: str  # porch_<metric>_total
    help: str


def counter_field(help_text: str, metric: str = "") -> int:
    """A counter field of HealthReport (0 until counted); `metric` defaults to its name."""
    info = {"counter": CounterInfo(metric, help_text)}
    return dataclasses.field(default=0, metadata=info)


@dataclass(frozen=True)
class HealthReport:
    """One health report (the heartbeat). Counters count since the worker process started."""

    # counters: status shows each as a total over every worker instance of a pipeline, and
    # /metrics as porch_<metric>_total (porch/metrics.py), with this help text
    iterations: int = counter_field("Iterations (step() chains) run.")
    msgs_in: int = counter_field("Messages received on the pipeline's input (after dedup).",
                           metric="messages_in")  # fmt: skip
    msgs_out: int = counter_field("Messages the pipeline sent (one per iteration's output).",
                            metric="messages_out")  # fmt: skip
    dropped: int = counter_field("Messages dropped by a full output link (overflow drop_oldest).")
    bad_frames: int = counter_field("Undecodable frames dropped on the data port.")
    duplicates: int = counter_field("Duplicate messages the inbox discarded (replays, origin ids).")
    dead_letters: int = counter_field("Messages written to the dead-letter folder.")
    skipped: int = counter_field("Iterations skipped (porch.SKIP or on_error skip).")
    replayed: int = counter_field("Messages replayed to a restarted target.")
    handshakes_rejected: int = counter_field(
        "Data-link handshakes refused (wrong or no cluster key)."
    )
    handshakes_failed: int = counter_field(
        "Output links' handshakes a target refused (it serves with a key this host lacks)."
    )
    reconnects: int = counter_field(
        "Output links reopened (a dead connection, or a target rediscovered after a cut)."
    )
    unpaired: int = counter_field("Join values dropped: their partner was filtered out upstream.")
    reorder_window_overflow: int = counter_field(
        "Gaps in an ordered replicated source's values given up (window full, or a value "
        "missing too long): the values after it were delivered out of order."
    )
    queue_depth: int = 0  # a gauge: inputs waiting now
    state: str = ""  # the worker's WorkerState value when it sent the report
    warning: str = ""  # what keeps it from making progress, "" when nothing
    targets: tuple[Mapping[str, object], ...] = ()  # one per link (workers/targets.py LinkStatus)
    # the step() duration histogram: {"bounds": [s...], "counts": [n...], "sum": s}
    step_seconds: Mapping[str, object] | None = None

    def counter(self, name: str) -> int:
        """One counter by name (a field of this class)."""
        value: int = getattr(self, name)
        return value

    def counters(self) -> dict[str, int]:
        """Every counter, the totals and queue_depth, by name."""
        return {name: getattr(self, name) for name in (*COUNTERS, "queue_depth")}

    def encode(self) -> dict[str, object]:
        """The fields of the control message (porch.control.MessageType.HEALTH)."""
        fields = {name: getattr(self, name) for name in FIELDS}
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


# the counter fields, in their order: status shows them as totals over every worker instance
COUNTER_INFO: Mapping[str, CounterInfo] = {
    f.name: CounterInfo(f.metadata["counter"].metric or f.name, f.metadata["counter"].help)
    for f in dataclasses.fields(HealthReport)
    if "counter" in f.metadata
}
COUNTERS: tuple[str, ...] = tuple(COUNTER_INFO)
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HealthReport))  # in order
EMPTY = HealthReport()


_JSON = json.JSONEncoder(separators=(",", ":"))  # porch.control's message encoding
# the fields formatted as ints, in their order (a heartbeat gives them so: encode_parts)
INT_FIELDS: tuple[str, ...] = (*COUNTERS, "queue_depth")
_INTS = INT_FIELDS
_REST = tuple(name for name in FIELDS if name not in _INTS and name != "step_seconds")
# ReportEncoder writes the fields in this order, control.encode in FIELDS's: a field added
# elsewhere (a counter after `state`, a field after step_seconds) sends every report the
# general way until the layout is made to match again
_LAYOUT = (*_INTS, *_REST, "step_seconds") == FIELDS
_INT = frozenset({int})


class ReportEncoder:
    """Successive health reports of one worker as the JSON of their control message: the
    text porch.control.encode makes of `head` and `report.encode()` (a test holds them equal),
    for less. A worker sends one every second, an idle one on cold caches, where the general
    encoder's ~25 keys, its dict and its floats cost ~70 us; here the keys and the fields
    before the report's are made once, the counters are one %-format of ints, and the rest
    (state, warning, targets, the histogram's bounds) is encoded again only when it changed.

    A worker's heartbeat gives the report's parts (`encode_parts`: no HealthReport is built),
    and the same parts as the last report's give the same text without formatting it."""

    def __init__(self, head: Mapping[str, object]) -> None:
        self._head = dict(head)
        opening = _JSON.encode({**head, "version": HEALTH_VERSION})
        self._opening = opening[:-1] + ","  # {"type":"health","version":1,
        self._ints = ",".join(f"{_JSON.encode(name)}:%d" for name in _INTS)
        self._get_ints = operator.attrgetter(*_INTS)
        self._get_rest = operator.attrgetter(*_REST)
        self._rest_key: tuple[object, ...] | None = None
        self._rest = ""  # the JSON of the _REST fields (state, warning, targets), no braces
        self._bounds: list[object] = []  # the histogram's bounds last seen, and their JSON
        self._bounds_json = "[]"
        self._parts: tuple[object, ...] | None = None  # encode_parts's last parts, and text
        self._text = ""

    def encode(self, report: HealthReport) -> str:
        """The control message's JSON text."""
        ints = self._get_ints(report)
        steps = self._steps(report.step_seconds)
        if steps is None or not _INT.issuperset(map(type, ints)) or not _LAYOUT:
            return _JSON.encode({**self._head, **report.encode()})
        return self._text_of(ints, self._get_rest(report), steps)

    def encode_parts(
        self,
        ints: tuple[int, ...],
        rest: tuple[str, str, tuple[Mapping[str, object], ...]],
        bounds: list[float],
        counts: tuple[int, ...],
        total: float,
    ) -> str:
        """The text of the report whose INT_FIELDS are `ints` (in that order), whose
        (state, warning, targets) are `rest` and whose step_seconds is {"bounds": `bounds`,
        "counts": `counts`, "sum": `total`}: encode()'s text of that report (a test holds them
        equal). Parts equal to the last call's (an idle worker's report) give the last text
        at once."""
        parts = (ints, rest, counts, total)
        if parts == self._parts and bounds == self._bounds:
            return self._text
        if (
            type(total) is float
            and total - total == 0.0  # finite
            and type(bounds) is list
            and _INT.issuperset(map(type, counts))
            and _INT.issuperset(map(type, ints))
            and _LAYOUT
        ):
            if bounds != self._bounds:
                self._bounds, self._bounds_json = list(bounds), _JSON.encode(bounds)
            counted = ",".join(map(str, counts))
            steps = f'{{"bounds":{self._bounds_json},"counts":[{counted}],"sum":{total!r}}}'
            self._text = self._text_of(ints, rest, steps)
        else:
            state, warning, targets = rest
            histogram = {"bounds": bounds, "counts": list(counts), "sum": total}
            report = HealthReport(**dict(zip(_INTS, ints, strict=True)), state=state,
                                  warning=warning, targets=targets,
                                  step_seconds=histogram)  # fmt: skip
            self._text = _JSON.encode({**self._head, **report.encode()})
        self._parts = parts
        return self._text

    def _text_of(self, ints: tuple[object, ...], rest: tuple[object, ...], steps: str) -> str:
        if rest != self._rest_key:
            self._rest_key = rest
            fields = dict(zip(_REST, rest, strict=True))
            fields["targets"] = [dict(t) for t in cast(tuple[Mapping[str, object], ...],
                                                       fields["targets"])]  # fmt: skip
            self._rest = _JSON.encode(fields)[1:-1]
        return f'{self._opening}{self._ints % ints},{self._rest},"step_seconds":{steps}}}'

    def _steps(self, steps: Mapping[str, object] | None) -> str | None:
        """The JSON of step_seconds as workers/heartbeat.py makes it (bounds, int counts and
        a finite float sum, in that order); None for anything else."""
        if steps is None or list(steps) != ["bounds", "counts", "sum"]:
            return None
        bounds, counts, total = steps["bounds"], steps["counts"], steps["sum"]
        if (
            type(bounds) is not list
            or type(counts) is not list
            or not _INT.issuperset(map(type, counts))
            or type(total) is not float
            or not math.isfinite(total)
        ):
            return None
        if bounds != self._bounds:
            self._bounds, self._bounds_json = list(bounds), _JSON.encode(bounds)
        counted = ",".join(map(str, counts))
        return f'{{"bounds":{self._bounds_json},"counts":[{counted}],"sum":{total!r}}}'


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class LinkState(enum.StrEnum):
    """What status shows of one output link (a `targets` entry's `state`): the one list of
    these words, for the worker that reports them and for porchctl and top that show them."""

    CONNECTED = "connected"  # handshaken: what it holds is on its way
    CONNECTING = "connecting"  # an endpoint, no handshake yet
    HANDSHAKE_FAILING = "handshake failing"  # the target refuses our handshake (cluster key)
    NOT_FOUND = "not found"  # no endpoint in the directory yet
    UNREACHABLE = "unreachable"  # withdrawn by discovery: its host fell silent
    DOWN = "down"  # failed or stopped for good: nothing will take what is held
    FINISHED = "finished"  # its stream ended: nothing more is sent

    @property
    def blocked_reason(self) -> str:
        """Why a producer blocked on a link in this state waits (the output_blocked log)."""
        return _BLOCKED_REASONS[self]

    @property
    def trouble(self) -> bool:
        """Whether status shows the link apart: it cannot deliver for a reason nothing else
        shows (a target not found yet is in the pipeline's warning)."""
        return self in (LinkState.UNREACHABLE, LinkState.HANDSHAKE_FAILING)


_BLOCKED_REASONS = {
    LinkState.UNREACHABLE: "target unreachable (withdrawn by discovery)",
    LinkState.NOT_FOUND: "target not found yet",
    LinkState.CONNECTING: "target not connected yet",
    LinkState.HANDSHAKE_FAILING: "target refuses our handshake (cluster key)",
    LinkState.CONNECTED: "target is slow",
    LinkState.DOWN: "target is down",
    LinkState.FINISHED: "target finished",
}
