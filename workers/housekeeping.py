"""A worker's side of the control channel, and what it does between iterations.

The worker tells its supervisor its state (STATE, with the error that failed it) and, every
HEARTBEAT_INTERVAL_S, its health (HEALTH: counters, target links, warnings); it hears a stop
(STOP) and where every pipeline is (DIRECTORY, applied to its targets and sources).

Between iterations, at most every TICK_S (the loop decides when; a source whose step() sends
nothing, once a heartbeat: MessageLoop.after_iteration), `tick` reads the control
channel and the acknowledgements, looks at the links' socket events, ends the streams of
sources that finished without an EOS, checks for missing targets, and sends the heartbeat; a
supervisor that died without a parent-death signal is noticed then too.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence, Sequence
from typing import Any

import zmq

from porch.control import HEARTBEAT_INTERVAL_S, ControlClient, MessageType, WorkerState
from porch.health import ReportEncoder
from porch.names import pipeline_of
from workers.heartbeat import STEP_BOUNDS_S, Heartbeat
from workers.inbox import Inbox
from workers.linkpeer import hello_again
from workers.links import OutputLink
from workers.replicas import Output
from workers.signals import StopSignals
from workers.sources import SourceWatch
from workers.targets import TargetDirectory, TargetWatch

POLLIN = int(zmq.POLLIN)


class Housekeeping:
    """What a worker says to and hears from its supervisor, and its periodic checks."""

    def __init__(
        self,
        pipeline: str,
        control: ControlClient,
        outputs: MutableSequence[Output],
        inbox: Inbox | None,
        stops: StopSignals,
        heartbeat: Heartbeat,
        *,
        started_s: float,
        parent_pid: int | None,
        read_acks: Callable[[], None],
        loads: Callable[[Sequence[Any]], Any] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.control = control
        self.outputs = outputs
        self.inbox = inbox
        self.stops = stops
        self.heartbeat = heartbeat
        self.directory = TargetDirectory(pipeline, outputs, loads=loads)
        # sources name our pipeline among their targets (a replica's process name is not it)
        me = pipeline_of(pipeline)
        self.sources = SourceWatch(me, inbox, stops) if inbox is not None else None
        self.targets = TargetWatch(pipeline, outputs, started_s)
        self.state = WorkerState.STARTING
        self.last_error = ""  # the first error that failed the worker: its cause
        self._parent_pid = parent_pid
        self._read_acks = read_acks
        self._next_heartbeat = 0.0
        # the acks callable only reads the output links' sockets (no replica's deferred acks,
        # no durable outbox; the worker sets it): a tick may first poll them all at once
        self.probe_sockets = False
        self._health = ReportEncoder({"type": MessageType.HEALTH.value})
        self._last_text = ""  # the last health report's text, and its bytes
        self._last_health = b""

    def report_state(self, state: WorkerState, error: str = "") -> None:
        """Tell the supervisor our state (and the error, when it is a failure's)."""
        self.state = state
        self.control.send(MessageType.STATE, state=state.value, error=error)

    def on_control(self) -> None:
        """Take what the supervisor sent: a stop, or a directory (for our targets and sources)."""
        for kind, message in self.control.receive():
            if kind is MessageType.STOP:
                self.stops.request("supervisor")
            elif kind is MessageType.DIRECTORY:
                pipelines = self.directory.read(message)
                if pipelines is not None:
                    self.directory.apply(pipelines)
                    if self.sources is not None:
                        self.sources.note(pipelines)

    def warnings(self) -> str:
        """What keeps this pipeline from making progress, for `porchctl status`."""
        parts = self.targets.warnings()
        if self.sources is not None and self.sources.down:
            parts += self.sources.warnings()
        return "; ".join(parts) if parts else ""

    def send_health(self) -> None:
        """The heartbeat: our health report now, from its parts (no HealthReport is built:
        an idle worker sends one every second on cold caches). An idle worker's is the one
        before: its message is not encoded again; one that differs in its counts is encoded
        in part (porch.health.ReportEncoder.encode_parts)."""
        beat = self.heartbeat
        rest = (self.state.value, self.warnings(), beat.targets())
        steps = beat.steps
        text = self._health.encode_parts(beat.counts(), rest, STEP_BOUNDS_S, tuple(steps.counts),
                                         steps.sum_s)  # fmt: skip
        if text is not self._last_text:
            self._last_text = text
            self._last_health = text.encode()
        self.control.send_encoded(self._last_health)

    def _nothing_to_read(self, control: bool) -> bool:
        """Whether nothing waits on the control channel (when `control`), on any output
        link's socket (acks) or on its socket monitor (connection events): one zmq_poll of
        all of them, where reading each (on_control, read_acks, check_events) looks at each
        socket in turn (an idle source's tick each second: ~40 us less). False when reading
        the acks does more than read sockets, or a target is replicated: then they are read."""
        if not self.probe_sockets:
            return False
        items: list[tuple[Any, int]] = [(self.control.socket, POLLIN)] if control else []
        for link in self.outputs:
            if type(link) is not OutputLink:
                return False
            conn = link.conn
            if conn.socket is not None:
                items.append((conn.socket, POLLIN))
            if conn.monitor is not None:
                items.append((conn.monitor, POLLIN))
        return not zmq.zmq_poll(items, 0)

    @property
    def next_heartbeat_s(self) -> float:
        """When the next heartbeat is due (time.monotonic())."""
        return self._next_heartbeat

    def tick(self, now: float, control: bool = True, monitor: bool = True) -> None:
        """The housekeeping between iterations (module doc); `now` is time.monotonic().
        `control`: False when the caller has just seen the control channel empty (a wait
        that timed out: an idle sink's wake-up each second); `monitor`: False when it has just
        seen the input's socket monitor empty, or read it (its first look at a socket in a
        wake-up cost an idle sink ~25 us)."""
        self.stops.say()
        if self._nothing_to_read(control):
            for link in self.outputs:  # (what check_events does with no events)
                hello_again(link, now)  # type: ignore[arg-type]
        else:
            if control:
                self.on_control()
            self._read_acks()
            for link in self.outputs:
                link.check_events(self.pipeline)
        if self.inbox is not None:
            if monitor:
                self.inbox.link.check_events(self.pipeline)
            self.inbox.expire_order(now)
        if self.sources is not None:
            self.sources.end_overdue()
        self.targets.check(now, self.directory.known)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL_S
            self.send_health()
            self.stops.check_parent(self._parent_pid)
