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

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from porch import logs
from porch.config import Delivery, FanIn, Outbox, PipelineConfig
from porch.control import WorkerState
from porch.errors import PorchError, ScriptError
from porch.serializers import get
from porch.stream import Stop
from porch.wire import decode_ack
from workers.closing import OutputClose
from workers.concurrent import ConcurrentLoop
from workers.deadletter import DeadLetters, LinkLetters
from workers.deferred import DeferredAcks
from workers.heartbeat import Counters, Heartbeat
from workers.host import ScriptHost
from workers.hotloop import HotLoop
from workers.housekeeping import Housekeeping
from workers.inbox import Inbox
from workers.loop import MessageLoop
from workers.outbox import DurableOutbox
from workers.replicas import all_links
from workers.signals import StopSignals
from workers.sockets import WorkerSockets

log = logs.get("porch.worker")

STOP_TIMEOUT_S = 10.0  # the supervisor's default --stop-timeout
STOP_MARGIN_S = 1.5  # of --stop-timeout, kept for the end() hooks and the exit
SETTLE_S = 1.0  # how long a replica starting up waits for one input's outputs to be acked
SETTLE_WAIT_MS = 50  # one wait of it (acks wake it at once)


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


def end_input(inbox: Inbox, finished: bool, replica: bool, pipeline: str) -> int:
    """Acknowledge what was processed, and when our stream finished (porch.stop(), our
    sources' end) what never will be: we are done with it; return how much that is. A replica
    is one of several processes of its pipeline: what it leaves stays unacknowledged, so its
    senders hand it to the other replicas once it is gone (workers/replicas.py)."""
    if not finished:
        inbox.flush_acks()
        return 0
    if replica:
        left = inbox.fanin.depth()
        inbox.flush_acks()
        if left:
            log.info("input_left_to_other_replicas", pipeline=pipeline, messages=left)
        return left
    left = inbox.discard_rest()
    if left:
        log.info("input_not_processed", pipeline=pipeline, messages=left)
    return left


class Worker:
    """Runs one pipeline: builds its parts, runs its message loop (workers/loop.py), closes."""

    def __init__(self, config: PipelineConfig, options: WorkerOptions) -> None:
        self.config = config
        self.options = options
        self.name = config.name
        serializer = get(config.serializer)
        self.host = ScriptHost(config.scripts, config.name)
        self.counters = Counters()  # the loop's own counts (workers/heartbeat.py)
        state_dir = options.state_dir or Path(".porch")
        self.dead_letters = DeadLetters(state_dir / "dead-letter", config.name)
        letters = LinkLetters(self.dead_letters, serializer)
        self.sockets = WorkerSockets(config, options.control, options.bind_host, serializer,
                                     letters, options.key_file, options.ipc_dir)  # fmt: skip
        self.inbox = self.sockets.inbox
        self.outputs = self.sockets.outputs
        self.durable = (
            DurableOutbox(state_dir / "outbox" / f"{config.name}.sqlite", self.outputs)
            if config.outbox is Outbox.DURABLE
            else None
        )
        self.stops = StopSignals(config.name, options.stop_budget_s)
        heartbeat = Heartbeat(self.counters, self.outputs, self.inbox, self.dead_letters,
                              self.sockets.security)  # fmt: skip
        self.house = Housekeeping(
            config.name,
            self.sockets.control,
            self.outputs,
            self.inbox,
            self.stops,
            heartbeat,
            started_s=time.monotonic(),
            parent_pid=options.parent_pid,
            read_acks=self._read_acks,
            loads=serializer.loads,
        )
        self.loop = MessageLoop(config, self.host, self.sockets, serializer, self.durable,
                                stops=self.stops, house=self.house, counters=self.counters,
                                dead_letters=self.dead_letters,
                                read_acks=self._read_acks)  # fmt: skip
        # a target the directory shows as replicas may route by value (partition_by)
        self.house.directory.on_groups = self.loop.emitter.outputs_changed
        if self.durable is not None:  # values handed from one replica to another keep a row
            self.house.directory.keep = self.durable.keep
        self._settling = True  # see _settle
        self.deferred = self._deferred_acks()
        # _read_acks reads the links' sockets and nothing else: a tick may poll them first
        self.house.probe_sockets = self.deferred is None and self.durable is None

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (see workers/signals.py)."""
        return self.stops.requested

    @property
    def ended(self) -> bool:
        """Whether the stream ended (Stop, porch.stop(), the iteration limit)."""
        return self.loop.ended

    def install_signals(self) -> None:
        """First SIGTERM/SIGINT: graceful stop; second: exit at once."""
        self.stops.install()

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop: sources stop now, the rest drain what was sent for a while."""
        self.stops.request(reason)

    def _report_state(self, state: WorkerState, error: str = "") -> None:
        self.house.report_state(state, error)

    def _deferred_acks(self) -> DeferredAcks | None:
        """A replica acknowledges an input once its outputs are (workers/deferred.py)."""
        config, inbox = self.config, self.inbox
        if (
            inbox is None
            or config.replica_of is None
            or not config.target_pipeline_names
            or config.delivery is not Delivery.AT_LEAST_ONCE
            or config.fan_in is FanIn.ANY
        ):
            return None
        outputs = self.outputs
        deferred = DeferredAcks(lambda: all_links(outputs), inbox.apply_commit, inbox.flush_acks)
        inbox.deferral = deferred
        self.loop.waiter.deferred = lambda: deferred.held > 0
        self.loop.settle = self._settle
        return deferred

    def _settle(self) -> bool:
        """While a source that replays what an earlier instance of ours was sent (HELLO_REPLAY)
        is acknowledged one by one, take one input at a time, each once the outputs of the one
        before are acknowledged (up to SETTLE_S; after a timeout, no more waits): a message we
        crash on every time is then the oldest its sender has not seen acknowledged, the one
        it dead-letters after a few crashes (a fresh start takes its input at full speed: a
        crash there costs one more delivery). Whether to take one input at a time. Otherwise,
        with inputs waiting, read the acks now (a busy loop reads them every TICK_S only, and
        our sources wait for ours)."""
        deferred, inbox = self.deferred, self.inbox
        if inbox is None or deferred is None:
            return False
        if not self._settling or not inbox.resuming:
            if deferred.held:  # (a durable outbox's rows go at the next tick)
                for link in self.outputs:
                    link.read_acks(decode_ack)
                deferred.release()
            return False
        if deferred.held:
            self.loop.flush_outputs()
            deadline = time.monotonic() + SETTLE_S
            while deferred.held and not self.stopping:
                if time.monotonic() >= deadline:
                    self._settling = False  # a target slow or away: acks wait, input does not
                    log.info("acks_unsettled", pipeline=self.name, held=deferred.held,
                             waited_s=SETTLE_S)  # fmt: skip
                    break
                self.loop.waiter.wait(SETTLE_WAIT_MS)
        return True

    def _read_acks(self) -> None:
        for link in self.outputs:
            link.read_acks(decode_ack)
        if self.deferred is not None:
            self.deferred.release()
        if self.durable is not None:
            self.durable.sync()  # what was acked, dropped or retired leaves the disk too

    def _close_outputs(self, finished: bool) -> None:
        """End every link and wait for the targets' acknowledgements (workers/closing.py)."""
        self.loop.flush_outputs()
        OutputClose(
            self.name,
            self.outputs,
            self.stops,
            finish_timeout_s=self.config.finish_timeout_s,
            stop_timeout_s=self.options.stop_timeout_s,
            kept=self.durable is not None,
        ).run(finished, self.loop.waiter.wait, self._read_acks)

    def _wait_for_sources(self) -> bool:
        """Wait until every source said hello; False when a stop came first."""
        sources = self.house.sources
        if sources is None or sources.inbox.fanin.all_connected():
            return True
        self._report_state(WorkerState.WAITING_FOR_SOURCES)
        return sources.wait_for_all(self.loop.waiter.wait, self.config.source_pipeline_count)

    def _run_scripts(self) -> WorkerState:
        if self.durable is not None:
            self.durable.restore()
        if not self._wait_for_sources():
            return WorkerState.STOPPED
        loop = self.loop
        try:
            self.host.load()
        except Stop:  # sys.exit(0) in a script's top level: the stream ends before it starts
            loop.ended = True
            return WorkerState.FINISHED
        self._report_state(WorkerState.RUNNING)
        if self.host.is_async:  # iterations in flight at once (sync steps cannot overlap)
            ConcurrentLoop(loop, self.config.concurrency).run(self.inbox, self.options.iterations)
        elif self.inbox is None:
            loop.run_source(self.options.iterations, HotLoop(loop))
        else:
            loop.run_sink(self.inbox, HotLoop(loop))
        return WorkerState.STOPPED if self.stopping and not loop.ended else WorkerState.FINISHED

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
        self.stops.say()  # a signal's stop the loop ended on before its housekeeping said it
        self._report_state(WorkerState.STOPPING, self.house.last_error)
        self._finish(outcome)
        return 1 if self.house.state is WorkerState.FAILED else 0

    def _finish(self, outcome: WorkerState) -> None:
        finished = outcome is WorkerState.FINISHED
        if self.inbox is not None:
            end_input(self.inbox, finished, self.config.replica_of is not None, self.name)
        try:
            self._close_outputs(finished)
        except PorchError as exc:
            outcome = self._fail(exc)
        for error in self.host.end():
            outcome = self._fail(error)
        self.host.close()
        self.stops.say()
        self.house.send_health()
        self._report_state(outcome, self.house.last_error)
        log.info("worker_exit", pipeline=self.name, state=outcome.value,
                 iterations=self.counters.iterations)  # fmt: skip
        if self.durable is not None:
            self.durable.close()
        self.sockets.close()
