"""The worker's message loop: a source's iterations, a stage's input sets, one at a time.

Each iteration calls the scripts' step() (workers/host.py) and hands what it returned to the
output side (workers/emitter.py); a failure is on_error's (workers/onerror.py); waiting for
input, acknowledgements, room on a link or the control channel is workers/waiting.py's. The
common cases run per burst (workers/hotloop.py), which falls back to the per-message path
here for the unusual (an exception, a value that travels alone, undecodable input), and
async steps run concurrently (workers/concurrent.py); both use this class's parts.

A busy loop coalesces its output for up to FLUSH_INTERVAL_S (adaptive batching: an idle or slow
loop sends each value at once), a stage with a backlog of input for up to BACKLOG_FLUSH_S. A
stopping worker takes input for a moment from live sources, and until the stop deadline what
stopped sources sent (they wait for its acknowledgement); a live upstream replays what was not
acknowledged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from porch.config import FanIn, PipelineConfig
from porch.errors import ScriptError
from porch.serializers import Serializer
from porch.stream import SKIP, Stop, clear_stop_request, stop_requested
from porch.wire import Origin
from workers.deadletter import DeadLetters
from workers.emitter import Emitter
from workers.heartbeat import Counters
from workers.host import ScriptHost
from workers.housekeeping import Housekeeping
from workers.inbox import Inbox, Undecodable
from workers.lone import LoneStage
from workers.onerror import ErrorPolicy
from workers.outbox import DurableOutbox
from workers.signals import StopSignals
from workers.sockets import WorkerSockets
from workers.waiting import POLL_MS, Waiter

FLUSH_INTERVAL_S = 0.0002  # a busy loop sends its batched output at least this often
# ... unless more input is queued behind it (a backlog): then at least this often (its values
# wait in the queue anyway; one frame per slow step() costs every process on the path a wake-up)
BACKLOG_FLUSH_S = 0.01
STEP_SAMPLE_EVERY = 8  # time one step() in 8: timing every one costs ~9% of a fast loop


class Bursts(Protocol):
    """The per-burst loops (workers/hotloop.py's HotLoop), built once the scripts are loaded."""

    step: Callable[..., Any] | None  # the script's own step() (ScriptHost.direct_step)
    takes_input: bool

    def source_burst(self, left: int | None) -> bool: ...

    def run_queue(self, inbox: Inbox) -> bool: ...

    def run_sets(self, inbox: Inbox) -> bool: ...


class MessageLoop:
    """One worker's iterations, from its input (or none: a source) to its output links."""

    def __init__(
        self,
        config: PipelineConfig,
        host: ScriptHost,
        sockets: WorkerSockets,
        serializer: Serializer,
        durable: DurableOutbox | None,
        *,
        stops: StopSignals,
        house: Housekeeping,
        counters: Counters,
        dead_letters: DeadLetters,
        read_acks: Callable[[], None],
    ) -> None:
        self.host = host
        self.counters = counters
        self.inbox = sockets.inbox
        self.outputs = sockets.outputs
        self.stops = stops
        self.ended = False  # the stream ended: Stop, porch.stop(), the iteration limit
        self.errors = ErrorPolicy(config.name, config.on_error, counters, dead_letters)
        self.read_acks = read_acks  # apply the acknowledgements waiting on the output links
        self.waiter = Waiter(config.name, sockets, stops, house, self.flush_outputs, read_acks,
                             keep=durable.keep if durable is not None else None)  # fmt: skip
        # A source (or a fan_in any stage: a loop must not carry one origin round and round)
        # stamps its values with its own origin ids; every other stage passes its inputs' on.
        stamps = self.inbox is None or config.fan_in is FanIn.ANY
        self.emitter = Emitter(config.name, self.outputs, serializer, durable, counters,
                               stamps=stamps, host=host, errors=self.errors,
                               hand_over=self.waiter.hand_over)  # fmt: skip
        self.step_time = house.heartbeat.steps.add  # one step()'s seconds, to the histogram
        self.last_flush = 0.0  # perf_counter s
        self._step_sample = 0
        # a replica whose acks wait for its outputs' (workers/deferred.py): before the next
        # input, while it acknowledges one by one; whether the loop must take one at a time
        self.settle: Callable[[], bool] | None = None

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (see workers/signals.py)."""
        return self.stops.requested

    def flush_outputs(self) -> None:
        """Send what the links have batched (adaptive batching: only busy loops batch)."""
        for link in self.outputs:
            link.flush()
        self.last_flush = time.perf_counter()

    def after_iteration(self, quiet: bool = False) -> None:
        """Flush if the loop is slow; a fast loop coalesces for up to FLUSH_INTERVAL_S.

        `quiet`: a source whose iterations since the last call sent nothing (its step()
        returned SKIP): nothing waits in a batch, and its housekeeping (control, acks, link
        events) comes with its heartbeat, once every HEARTBEAT_INTERVAL_S: an idle source's
        step() that sleeps 0.5 s would otherwise run the whole tick at each wake-up."""
        if quiet and time.monotonic() < self.waiter.house.next_heartbeat_s:
            self.last_flush = time.perf_counter()  # (nothing was batched since)
            return
        if time.perf_counter() - self.last_flush >= FLUSH_INTERVAL_S:
            self.flush_outputs()
        self.waiter.tick()

    # ---- one iteration -------------------------------------------------------------------

    def iterate(self, inputs: Any, origin: Origin = ()) -> None:
        """One step() on `inputs` (None: a source's), its value sent on."""
        self._step_sample = sample = (self._step_sample + 1) % STEP_SAMPLE_EVERY
        started = time.perf_counter() if not sample else 0.0
        try:
            value = self.host.step(inputs)
            if not sample:
                self.step_time(time.perf_counter() - started)
        except (Stop, ScriptError) as exc:
            self.step_failed(exc, inputs, origin)
            return
        self.after_step(value, inputs, origin)

    def step_failed(self, exc: Exception, inputs: Any, origin: Origin) -> None:
        """step() raised `exc` (Stop, or a ScriptError: on_error decides)."""
        if isinstance(exc, Stop):
            self.ended = True
            return
        if self.errors.fails:
            raise exc
        assert isinstance(exc, ScriptError)
        self.errors.poison(exc, inputs)
        self.emitter.pass_marker(origin)

    def after_step(self, value: Any, inputs: Any, origin: Origin) -> None:
        """What follows a step() that returned `value`: send it (or a marker), count it."""
        if value is SKIP:
            self.emitter.pass_marker(origin)
        elif not self.emitter.emit(value, inputs, origin):
            self.emitter.pass_marker(origin)
            return
        self.counters.iterations += 1
        if stop_requested():
            clear_stop_request()
            self.ended = True

    def take_one(self, inbox: Inbox) -> None:
        """One iteration on one input set of the fan-in, then acknowledge it."""
        if self.settle is not None:
            self.settle()
        values, taken, origin, marked = inbox.take()
        if marked:  # filtered out upstream, or a join partner that never comes
            if inbox.undecodable:
                bad = [v for v in values.values() if isinstance(v, Undecodable)]
                inbox.undecodable -= len(bad)
            self.emitter.pass_marker(origin)
        elif not inbox.undecodable or self.errors.decoded(inbox, values):
            self.iterate(values, origin)
        else:
            self.emitter.pass_marker(origin)
        inbox.commit(taken)

    def draining(self, inbox: Inbox) -> bool:
        """Whether a stopping worker still takes input: for a moment from live sources, and
        until the stop deadline what stopped sources sent (they wait for its acknowledgement).
        Values held back for ordering go now: a stopping worker waits for no gap."""
        inbox.release_held()
        now = time.monotonic()
        if now < self.stops.drain_deadline:
            return True
        fanin = inbox.fanin
        return (
            now < self.stops.stop_deadline
            and fanin.ready()
            and any(fanin.queued(name) for name in inbox.departed)
        )

    # ---- the loops -----------------------------------------------------------------------

    def run_source(self, limit: int | None, bursts: Bursts) -> None:
        """A source's iterations, until the stream ends, `limit` is reached or a stop."""
        iterate, clock, counters = self.iterate, time.perf_counter, self.counters
        burst = bursts.source_burst
        while not self.stopping and not self.ended:
            if not burst(None if limit is None else limit - counters.iterations):
                iterate(None)
            if limit is not None and counters.iterations >= limit:
                self.ended = True
            if clock() - self.last_flush >= FLUSH_INTERVAL_S:
                self.after_iteration()

    def run_sink(self, inbox: Inbox, bursts: Bursts) -> None:
        """A stage's input sets, until every source ended, the stream ends or a stop."""
        fanin = inbox.fanin
        if fanin.any_input:  # a feedback loop needs one member to go first
            self.iterate(dict.fromkeys(fanin.sources))
        one = fanin.expected == 1 and not fanin.any_input
        run = bursts.run_queue if one else bursts.run_sets
        lone = None  # a value that arrives alone runs as it is received (workers/lone.py)
        if one and bursts.step is not None and bursts.takes_input:
            lone = LoneStage(self, inbox, bursts.step)
        while not self.ended:
            if self.stopping and not self.draining(inbox):
                return  # a live upstream keeps what we did not acknowledge and replays it
            if fanin.ready():
                if not run(inbox):
                    return
                self.flush_outputs()  # no more input queued: don't hold output back
                self.waiter.tick()
            elif fanin.exhausted():
                return
            elif self.stopping and inbox.quiet():
                return  # everything that was sent has been processed
            else:  # input that makes a set is run before the housekeeping (latency)
                self.waiter.wait(POLL_MS, ready=fanin.ready, lone=lone)
