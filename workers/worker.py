"""The worker: one OS process per pipeline, running its scripts in an iteration loop.

Life of a worker: bind the input socket and say hello to the supervisor; wait until every
source has connected (DPorch's handshake rule); run the scripts' top level; loop; on end of
stream, stop or failure: send EOS (or BYE) to every target, wait for the targets to acknowledge
what they were sent, run the `end()` hooks, exit.

Nothing a worker sent is given up in silence. A stopping worker acknowledges every input it
processed and keeps serving its links until its targets have acknowledged its output, up to the
stop deadline (a little under the supervisor's --stop-timeout); a worker whose stream ended keeps
its undelivered output for up to `finish_timeout_s`, whatever state its targets are in. Past
either deadline, what is still held is lost (memory outbox) or kept for the next start (durable),
and the worker says so: an error, counted as dropped, and a failed exit where it is a loss.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from porch import logs
from porch.config import FanIn, OnError, Outbox, PipelineConfig
from porch.control import (
    WorkerState,
)
from porch.errors import PorchError, ScriptError
from porch.serializers import SerializationError, Serializer, get
from porch.stream import SKIP, Stop, clear_stop_request, stop_requested
from porch.wire import FrameKind, Origin, decode_ack
from workers.closing import OutputClose
from workers.concurrent import ConcurrentLoop
from workers.deadletter import DeadLetters, LinkLetters, summary
from workers.heartbeat import Counters, Heartbeat
from workers.host import ScriptHost
from workers.hotloop import FLUSH_INTERVAL_S, HotLoop
from workers.housekeeping import Housekeeping
from workers.inbox import Inbox, Undecodable
from workers.links import OutputLink
from workers.outbox import DurableOutbox
from workers.scheduler import Inputs
from workers.signals import StopSignals
from workers.sockets import WorkerSockets
from workers.targets import STALL_WARNING_S, link_status

log = logs.get("porch.worker")

STOP_TIMEOUT_S = 10.0  # the supervisor's default --stop-timeout
STOP_MARGIN_S = 1.5  # of --stop-timeout, kept for the end() hooks and the exit
POLL_MS = 1000  # idle wake-ups (signals, messages and acks wake the loop at once)
TICK_S = 0.05  # how often a busy loop looks at the control channel and acknowledgements
STEP_SAMPLE_EVERY = 8  # time one step() in 8: timing every one costs ~9% of a fast loop
POLL_BOTH = zmq.POLLIN | zmq.POLLOUT


@dataclass(frozen=True)
class WorkerOptions:
    """How the supervisor asked this worker to run."""

    control: str
    bind_host: str = "127.0.0.1"
    iterations: int | None = None
    parent_pid: int | None = None
    state_dir: Path | None = None
    key_file: Path | None = None  # cluster key: CURVE on every data link
    stop_timeout_s: float = STOP_TIMEOUT_S  # the supervisor kills us this long after a stop
    ipc_dir: Path | None = None  # the supervisor's run folder: its pipelines link over ipc://

    @property
    def stop_budget_s(self) -> float:
        """How long a stopping worker may spend draining and waiting for acknowledgements."""
        return max(self.stop_timeout_s - STOP_MARGIN_S, self.stop_timeout_s / 2)


class Worker:
    """Runs one pipeline."""

    def __init__(self, config: PipelineConfig, options: WorkerOptions) -> None:
        self.config = config
        self.options = options
        self.name = config.name
        self.serializer: Serializer = get(config.serializer)
        self.host = ScriptHost(config.scripts, config.name)
        self.counters = Counters()  # the loop's own counts (workers/heartbeat.py)
        state_dir = options.state_dir or Path(".porch")
        self.dead_letters = DeadLetters(state_dir / "dead-letter", config.name)
        letters = LinkLetters(self.dead_letters, self.serializer)
        self.sockets = WorkerSockets(config, options.control, options.bind_host, self.serializer,
                                     letters, options.key_file, options.ipc_dir)  # fmt: skip
        # the loop's sockets, read on every iteration (held here: one lookup, not two)
        self.control = self.sockets.control
        self.inbox = self.sockets.inbox
        self.outputs = self.sockets.outputs
        self.durable = (
            DurableOutbox(state_dir / "outbox" / f"{config.name}.sqlite", self.outputs)
            if config.outbox is Outbox.DURABLE
            else None
        )
        # A source (or a fan_in any stage: a loop must not carry one origin round and round)
        # stamps its values with its own origin ids; every other stage passes its inputs' on.
        self._stamps = self.inbox is None or config.fan_in is FanIn.ANY
        epoch = random.getrandbits(63)
        self._origin_seq = 1
        if self.durable is not None and self._stamps:
            epoch, self._origin_seq = self.durable.origin_start(epoch)
        self._stream = (config.name, epoch)
        for link in self.outputs:
            link.framer.stream = self._stream
        self.stops = StopSignals(config.name, options.stop_budget_s)
        self.ended = False
        heartbeat = Heartbeat(self.counters, self.outputs, self.inbox, self.dead_letters,
                              self.sockets.security)  # fmt: skip
        self.house = Housekeeping(
            config.name,
            self.control,
            self.outputs,
            self.inbox,
            self.stops,
            heartbeat,
            started_s=time.monotonic(),
            parent_pid=options.parent_pid,
            read_acks=self._read_acks,
        )
        self._next_tick = 0.0
        self._last_flush = 0.0
        self._step_sample = 0
        self._poller = self.sockets.poller(self.stops.wake_r)

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (see workers/signals.py)."""
        return self.stops.requested

    def install_signals(self) -> None:
        """First SIGTERM/SIGINT: graceful stop; second: exit at once."""
        self.stops.install()

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop: sources stop now, the rest drain what was sent for a while."""
        self.stops.request(reason)

    def _on_control(self) -> None:
        self.house.on_control()

    def _report_state(self, state: WorkerState, error: str = "") -> None:
        self.house.report_state(state, error)

    def _tick(self) -> None:
        """Housekeeping between iterations, at most every TICK_S: control, acks, heartbeat."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        self.house.tick(now)

    def _read_acks(self) -> None:
        for link in self.outputs:
            link.read_acks(decode_ack)
        if self.durable is not None:
            self.durable.sync()  # what was acked, dropped or retired leaves the disk too

    def _flush_outputs(self) -> None:
        """Send what the links have batched (adaptive batching: only busy loops batch)."""
        for link in self.outputs:
            link.flush()
        self._last_flush = time.perf_counter()

    def _after_iteration(self) -> None:
        """Flush if the loop is slow; a fast loop coalesces for up to FLUSH_INTERVAL_S."""
        if time.perf_counter() - self._last_flush >= FLUSH_INTERVAL_S:
            self._flush_outputs()
        self._tick()

    def _wait(self, timeout_ms: int, poller: zmq.Poller | None = None) -> None:
        """Block until input, a control message, an ack or a signal arrives, or the timeout."""
        self._flush_outputs()  # about to idle: nothing may wait in a batch
        if self.inbox is not None:
            self.inbox.flush_acks()  # about to idle: tell our sources what we have done
        events = dict((poller or self._poller).poll(timeout_ms))
        if self.stops.wake_r in events or self.stops.wake_r.fileno() in events:
            with contextlib.suppress(BlockingIOError):
                self.stops.wake_r.recv(4096)
        if self.control.socket in events:
            self._on_control()
        if self.inbox is not None and self.inbox.link.socket in events:
            self.inbox.receive()
        self._read_acks()
        self._tick()

    # ---- output --------------------------------------------------------------------------

    def _emit(self, value: Any, inputs: Any, origin: Origin) -> bool:
        """Send `value` to every target; False if the serializer could not encode it (then
        on_error decides, as for a failing step())."""
        if not self.outputs:
            return True
        try:
            payload = self.serializer.dumps(value)
        except SerializationError as exc:
            error = ScriptError(f"{self.host.output_origin()}: step() returned {exc}")
            if self.config.on_error is OnError.STOP:
                raise error from None
            self._on_poison(error, inputs)
            return False
        stamp: Origin | int = origin
        if self._stamps:  # the links take our own origin seq as a bare int (the hot path)
            stamp = own = self._origin_seq
            self._origin_seq = own + 1
            if self.durable is not None:
                self.durable.store(payload, (self._stream, own), own)
        elif self.durable is not None:
            self.durable.store(payload, origin)
        if len(payload) == 1:  # the hot path: one small frame joins each link's batch
            item = payload[0]
            for link in self.outputs:
                if not link.add(item, stamp):
                    self._hand_over(link, FrameKind.DATA, payload, stamp)
        else:
            for link in self.outputs:
                self._hand_over(link, FrameKind.DATA, payload, stamp)
        self.counters.msgs_out += 1
        return True

    def _pass_marker(self, origin: Origin) -> None:
        """This stage will send nothing for `origin`: say so, so a join drops its partner."""
        if self._stamps or not origin or not self.outputs:
            return  # a stamping stage's own ids are never joined on what it skips
        if self.durable is not None:
            self.durable.store([b""], origin)
        for link in self.outputs:
            self._hand_over(link, FrameKind.DATA, [b""], origin)

    def _hand_over(
        self, link: OutputLink, kind: FrameKind, payload: list[Any], origin: Origin | int = ()
    ) -> None:
        """Give one message to a link, waiting (while serving control) as long as it is full."""
        next_warning = time.monotonic() + STALL_WARNING_S
        while not link.offer(kind, payload, origin):
            now = time.monotonic()
            if self.stopping and now > self.stops.drain_deadline:
                # the input is processed (and will be acknowledged): its output must not be
                # dropped; the stop sequence waits for the target to take it
                link.force(kind, payload, origin)
                return
            if now > next_warning:
                next_warning = now + STALL_WARNING_S
                status = link_status(link)
                log.warning("output_blocked", pipeline=self.name, target=link.target,
                            reason=status["state"].blocked_reason, held=status["held"],
                            since=status["since"])  # fmt: skip
            self._wait(POLL_MS, self._blocked_poller(link))

    def _blocked_poller(self, link: OutputLink) -> zmq.Poller:
        """What a producer blocked on `link` waits for: acks (the outbox is full) and, only
        while ZeroMQ itself holds unsent entries, room in its queue; never a busy loop."""
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(self.stops.wake_r, zmq.POLLIN)
        if link.socket is not None:
            poller.register(link.socket, POLL_BOTH if link.unsent else zmq.POLLIN)
        return poller

    def _close_outputs(self, finished: bool) -> None:
        """End every link and wait for the targets' acknowledgements (workers/closing.py)."""
        self._flush_outputs()
        OutputClose(
            self.name,
            self.outputs,
            self.stops,
            finish_timeout_s=self.config.finish_timeout_s,
            stop_timeout_s=self.options.stop_timeout_s,
            kept=self.durable is not None,
        ).run(finished, self._wait, self._read_acks)

    # ---- the loop ------------------------------------------------------------------------

    def _wait_for_sources(self) -> bool:
        """Wait until every source said hello; False when a stop came first."""
        sources = self.house.sources
        if sources is None or sources.inbox.fanin.all_connected():
            return True
        self._report_state(WorkerState.WAITING_FOR_SOURCES)
        return sources.wait_for_all(self._wait, self.config.source_pipeline_count)

    def _iterate(self, inputs: Any, origin: Origin = ()) -> None:
        self._step_sample = sample = (self._step_sample + 1) % STEP_SAMPLE_EVERY
        started = time.perf_counter() if not sample else 0.0
        try:
            value = self.host.step(inputs)
            if not sample:
                self._step_time(time.perf_counter() - started)
        except (Stop, ScriptError) as exc:
            self._step_failed(exc, inputs, origin)
            return
        self._after_step(value, inputs, origin)

    def _step_failed(self, exc: Exception, inputs: Any, origin: Origin) -> None:
        """step() raised `exc` (Stop, or a ScriptError: on_error decides)."""
        if isinstance(exc, Stop):
            self.ended = True
            return
        if self.config.on_error is OnError.STOP:
            raise exc
        assert isinstance(exc, ScriptError)
        self._on_poison(exc, inputs)
        self._pass_marker(origin)

    def _after_step(self, value: Any, inputs: Any, origin: Origin) -> None:
        """What follows a step() that returned `value`: send it (or a marker), count it."""
        if value is SKIP:
            self._pass_marker(origin)
        elif not self._emit(value, inputs, origin):
            self._pass_marker(origin)
            return
        self.counters.iterations += 1
        if stop_requested():
            clear_stop_request()
            self.ended = True

    def _step_time(self, seconds: float) -> None:
        """Count one step() duration in the histogram the health report carries."""
        self.house.heartbeat.steps.add(seconds)

    def _on_poison(self, exc: ScriptError, inputs: Any) -> None:
        """on_error skip / dead-letter: record the input that made step() raise, and go on."""
        self.counters.skipped += 1
        if self.config.on_error is OnError.DEAD_LETTER:
            path = self.dead_letters.write(str(exc), value=inputs, traceback=exc.user_traceback)
            log.error("dead_lettered", pipeline=self.name, error=str(exc), file=str(path))
        else:
            log.warning("input_skipped", pipeline=self.name, error=str(exc),
                        input=summary(inputs)[:200])  # fmt: skip

    def _decoded(self, inbox: Inbox, values: Inputs) -> bool:
        """Whether every value of this input set decoded; if not, on_error decides, as for a
        failing step(): stop fails the pipeline, skip and dead-letter go on."""
        bad = [v for v in values.values() if isinstance(v, Undecodable)]
        inbox.undecodable -= len(bad)
        if not bad:
            return True
        if self.config.on_error is OnError.STOP:
            raise SerializationError(f'{bad[0].error}; or set "on_error" to skip or dead-letter')
        self.counters.skipped += 1
        for item in bad:
            if self.config.on_error is OnError.DEAD_LETTER:
                path = self.dead_letters.write(item.error, value=values, payload=item.payload,
                                               source=item.source)  # fmt: skip
                log.error("dead_lettered", pipeline=self.name, source=item.source,
                          error=item.error, file=str(path))  # fmt: skip
            else:
                log.warning("input_skipped", pipeline=self.name, source=item.source,
                            error=item.error, input=summary(values)[:200])  # fmt: skip
        return False

    def _source_loop(self) -> None:
        limit = self.options.iterations
        iterate, clock, counters = self._iterate, time.perf_counter, self.counters
        burst = HotLoop(self).source_burst
        while not self.stopping and not self.ended:
            if not burst(None if limit is None else limit - counters.iterations):
                iterate(None)
            if limit is not None and counters.iterations >= limit:
                self.ended = True
            if clock() - self._last_flush >= FLUSH_INTERVAL_S:
                self._after_iteration()

    def _sink_loop(self, inbox: Inbox) -> None:
        fanin = inbox.fanin
        if fanin.any_input:  # a feedback loop needs one member to go first
            self._iterate(dict.fromkeys(fanin.sources))
        hot = HotLoop(self)
        run = hot.run_queue if fanin.expected == 1 and not fanin.any_input else hot.run_sets
        while not self.ended:
            if self.stopping and not self._draining(inbox):
                return  # a live upstream keeps what we did not acknowledge and replays it
            if fanin.ready():
                if not run(inbox):
                    return
                self._flush_outputs()  # no more input queued: don't hold output back
                self._tick()
            elif fanin.exhausted():
                return
            elif self.stopping and inbox.quiet():
                return  # everything that was sent has been processed
            else:
                self._wait(POLL_MS)

    def _take_one(self, inbox: Inbox) -> None:
        """One iteration on one input set of the fan-in, then acknowledge it."""
        values, taken, origin, marked = inbox.take()
        if marked:  # filtered out upstream, or a join partner that never comes
            if inbox.undecodable:
                bad = [v for v in values.values() if isinstance(v, Undecodable)]
                inbox.undecodable -= len(bad)
            self._pass_marker(origin)
        elif not inbox.undecodable or self._decoded(inbox, values):
            self._iterate(values, origin)
        else:
            self._pass_marker(origin)
        inbox.commit(taken)

    def _draining(self, inbox: Inbox) -> bool:
        """Whether a stopping worker still takes input: for a moment from live sources, and
        until the stop deadline what stopped sources sent (they wait for its acknowledgement)."""
        now = time.monotonic()
        if now < self.stops.drain_deadline:
            return True
        fanin = inbox.fanin
        return (
            now < self.stops.stop_deadline
            and fanin.ready()
            and any(fanin.queued(name) for name in inbox.departed)
        )

    def _run_scripts(self) -> WorkerState:
        if self.durable is not None:
            self.durable.restore()
        if not self._wait_for_sources():
            return WorkerState.STOPPED
        try:
            self.host.load()
        except Stop:  # sys.exit(0) in a script's top level: the stream ends before it starts
            self.ended = True
            return WorkerState.FINISHED
        self._report_state(WorkerState.RUNNING)
        if self.host.is_async:  # iterations in flight at once (sync steps cannot overlap)
            ConcurrentLoop(self).run(self.inbox)
        elif self.inbox is None:
            self._source_loop()
        else:
            self._sink_loop(self.inbox)
        return WorkerState.STOPPED if self.stopping and not self.ended else WorkerState.FINISHED

    def _fail(self, exc: PorchError) -> WorkerState:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.house.last_error = self.house.last_error or error  # the first error is the cause
        # The traceback ends with the error; the supervisor says once more which pipeline failed.
        if isinstance(exc, ScriptError) and exc.user_traceback:
            sys.stderr.write(exc.user_traceback)
        else:
            sys.stderr.write(f"{error}\n")
        sys.stderr.flush()
        return WorkerState.FAILED

    def run(self) -> int:
        """Run the pipeline to its end; the exit code is 0 unless it failed."""
        self.sockets.hello()
        self._report_state(WorkerState.STARTING)
        try:
            outcome = self._run_scripts()
        except PorchError as exc:
            outcome = self._fail(exc)
        self._report_state(WorkerState.STOPPING, self.house.last_error)
        self._finish(outcome)
        return 1 if self.house.state is WorkerState.FAILED else 0

    def _finish(self, outcome: WorkerState) -> None:
        finished = outcome is WorkerState.FINISHED
        if self.inbox is not None:
            if finished:
                left = self.inbox.discard_rest()
                if left:
                    log.info("input_not_processed", pipeline=self.name, messages=left)
            else:
                self.inbox.flush_acks()
        try:
            self._close_outputs(finished)
        except PorchError as exc:
            outcome = self._fail(exc)
        for error in self.host.end():
            outcome = self._fail(error)
        self.host.close()
        self.house.send_health()
        self._report_state(outcome, self.house.last_error)
        log.info("worker_exit", pipeline=self.name, state=outcome.value,
                 iterations=self.counters.iterations)  # fmt: skip
        if self.durable is not None:
            self.durable.close()
        self.sockets.close()
