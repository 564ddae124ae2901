"""The worker: one OS process per pipeline, running its scripts in an iteration loop.

Life of a worker: bind the input socket and say hello to the supervisor; wait until every
source has connected (DPorch's handshake rule); run the scripts' top level; loop; on end of
stream, stop or failure: send EOS to every target, run the `end()` hooks, flush, exit.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

import zmq

from porch import logs
from porch.config import PipelineConfig
from porch.control import HEARTBEAT_INTERVAL_S, ControlClient, MessageType, WorkerState
from porch.errors import PorchError, ScriptError, WireError
from porch.serializers import BY_ID, SerializationError, Serializer, get
from porch.stream import SKIP, Stop, clear_stop_request, stop_requested
from porch.wire import FrameKind, HeaderEncoder, decode_header
from workers.host import ScriptHost
from workers.links import InputLink, OutputLink
from workers.scheduler import FanIn, TooManySources

log = logs.get("porch.worker")

DRAIN_TIMEOUT_S = 2.0  # after a stop, how long a pipeline keeps processing what was sent to it
FLUSH_TIMEOUT_S = 5.0  # at exit, how long to wait for targets that have no endpoint yet
POLL_MS = 200
RECV_BATCH = 256
TICK_S = 0.05  # how often a busy loop looks at the control channel
STALL_WARNING_S = 10.0  # how often a pipeline that cannot make progress says why


@dataclass
class Counters:
    """What a worker reports as its health."""

    iterations: int = 0
    msgs_in: int = 0
    msgs_out: int = 0
    dropped: int = 0
    bad_frames: int = 0
    queue_depth: int = 0


@dataclass(frozen=True)
class WorkerOptions:
    """How the supervisor asked this worker to run."""

    control: str
    bind_host: str = "127.0.0.1"
    iterations: int | None = None
    parent_pid: int | None = None


class Worker:
    """Runs one pipeline."""

    def __init__(self, config: PipelineConfig, options: WorkerOptions) -> None:
        self.config = config
        self.options = options
        self.name = config.name
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.instance = random.getrandbits(63)
        self.serializer: Serializer = get(config.serializer)
        self.host = ScriptHost(config.scripts, config.name)
        self.fanin = FanIn(config.source_pipeline_count)
        self.counters = Counters()
        self.state = WorkerState.STARTING
        self.control = ControlClient(self.ctx, options.control, config.name)
        self.inputs = (
            InputLink(self.ctx, options.bind_host, config.queue_limit)
            if config.source_pipeline_count
            else None
        )
        headers = HeaderEncoder(self.serializer.id, self.instance, config.name)
        self.outputs = [
            OutputLink(self.ctx, target, headers, config.queue_limit)
            for target in config.target_pipeline_names
        ]
        self.stopping = False
        self.ended = False
        self._departed: set[str] = set()  # sources that said BYE (stopped, may come back)
        self._drain_deadline = 0.0
        self._next_tick = 0.0
        self._next_heartbeat = 0.0
        self._last_error = ""
        self._wake_r, self._wake_w = socket.socketpair()
        self._poller = self._make_poller()

    # ---- signals and control -------------------------------------------------------------

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self.inputs is not None:
            poller.register(self.inputs.socket, zmq.POLLIN)
        return poller

    def install_signals(self) -> None:
        """First SIGTERM/SIGINT: graceful stop; second: exit at once."""
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            os._exit(130)
        self.request_stop(signal.Signals(signum).name)

    def request_stop(self, reason: str) -> None:
        """Begin a graceful stop: sources stop now, the rest drain what was sent for a while."""
        if not self.stopping:
            log.info("stop_requested", pipeline=self.name, reason=reason)
            self.stopping = True
            self._drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S

    def _on_control(self) -> None:
        for kind, message in self.control.receive():
            if kind is MessageType.STOP:
                self.request_stop("supervisor")
            elif kind is MessageType.DIRECTORY:
                self._apply_directory(message.get("pipelines", {}))

    def _apply_directory(self, pipelines: dict[str, Any]) -> None:
        for link in self.outputs:
            entry = pipelines.get(link.target)
            if not isinstance(entry, dict):
                continue
            if entry.get("state") == "finished":  # stopped or failed ones may come back
                if not link.gone:
                    log.warning(
                        "target_gone",
                        pipeline=self.name,
                        target=link.target,
                        state=entry.get("state"),
                    )
                    link.retire()
            elif isinstance(entry.get("endpoint"), str):
                link.connect(entry["endpoint"])

    def _report_state(self, state: WorkerState, error: str = "") -> None:
        self.state = state
        self.control.send(MessageType.STATE, state=state.value, error=error)

    def _heartbeat(self) -> None:
        self.counters.queue_depth = self.fanin.depth()
        self.counters.dropped = sum(link.dropped for link in self.outputs)
        self.control.send(MessageType.HEALTH, state=self.state.value, **asdict(self.counters))

    def _tick(self) -> None:
        """Housekeeping between iterations, at most every TICK_S: control, heartbeat, parent."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        self._on_control()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL_S
            self._heartbeat()
            parent = self.options.parent_pid
            if parent is not None and os.getppid() != parent:
                self.request_stop("supervisor_gone")

    def _wait(self, timeout_ms: int, poller: zmq.Poller | None = None) -> None:
        """Block until input, a control message or a signal arrives, or the timeout passes."""
        events = dict((poller or self._poller).poll(timeout_ms))
        if self._wake_r in events or self._wake_r.fileno() in events:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        if self.control.socket in events:
            self._on_control()
        if self.inputs is not None and self.inputs.socket in events:
            self._receive()
        self._tick()

    # ---- input ---------------------------------------------------------------------------

    def _receive(self) -> None:
        assert self.inputs is not None
        for message in self.inputs.receive(RECV_BATCH):
            try:
                self._accept(message)
            except (WireError, SerializationError) as exc:
                self.counters.bad_frames += 1
                log.warning(
                    "bad_frame_dropped",
                    pipeline=self.name,
                    reason=str(exc),
                    total=self.counters.bad_frames,
                )

    def _accept(self, message: list[bytes]) -> None:
        if len(message) < 2:
            raise WireError("message without a header frame")
        header = decode_header(message[1])
        if header.sender not in self.fanin:
            try:
                self.fanin.connect(header.sender)
            except TooManySources:
                raise WireError(
                    f"unexpected source {header.sender!r}: source_pipeline_count is "
                    f"{self.fanin.expected} and {self.fanin.sources} already connected"
                ) from None
            log.info("source_connected", pipeline=self.name, source=header.sender)
        if header.kind is FrameKind.BYE:
            log.info("source_departed", pipeline=self.name, source=header.sender)
            self._departed.add(header.sender)
            return
        self._departed.discard(header.sender)
        if header.kind is FrameKind.DATA:
            self.fanin.push(header.sender, self._decode(header.serializer, message[2:]))
            self.counters.msgs_in += 1
        elif header.kind is FrameKind.EOS:
            log.info("source_ended", pipeline=self.name, source=header.sender)
            self.fanin.end(header.sender)

    def _decode(self, serializer_id: int, frames: list[bytes]) -> Any:
        serializer = BY_ID.get(serializer_id)
        if serializer is None:
            raise WireError(f"unknown serializer id {serializer_id}")
        if self.serializer.name == "json" and serializer.name != "json":
            raise WireError(f"refusing {serializer.name} data: this pipeline accepts json only")
        if not frames:
            raise WireError("data message without payload")
        try:
            return serializer.loads(frames)
        except Exception as exc:
            raise SerializationError(
                f"cannot deserialize {serializer.name} payload: {exc}"
            ) from exc

    # ---- output --------------------------------------------------------------------------

    def _emit(self, value: Any) -> None:
        if not self.outputs:
            return
        payload = self.serializer.dumps(value)
        for link in self.outputs:
            self._hand_over(link, link.frame(FrameKind.DATA, payload))
        self.counters.msgs_out += 1

    def _hand_over(self, link: OutputLink, message: list[Any]) -> None:
        """Give one message to a link, waiting (while serving control) as long as it is full."""
        next_warning = time.monotonic() + STALL_WARNING_S
        while not link.offer(message):
            now = time.monotonic()
            if self.stopping and now > self._drain_deadline:
                link.dropped += 1
                return
            if now > next_warning:
                next_warning = now + STALL_WARNING_S
                reason = "target not found yet" if link.socket is None else "target is slow"
                log.warning(
                    "output_blocked",
                    pipeline=self.name,
                    target=link.target,
                    reason=reason,
                    held=len(link.pending),
                )
            poller = zmq.Poller()
            poller.register(self.control.socket, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            if link.socket is not None:
                poller.register(link.socket, zmq.POLLOUT)
            self._wait(POLL_MS, poller)
            link.flush()

    def _close_outputs(self, kind: FrameKind) -> None:
        """Send EOS (stream ended) or BYE (stopped, failed) on every link, then close them."""
        for link in self.outputs:
            self._hand_over(link, link.frame(kind, []))
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while not all(link.settled for link in self.outputs) and time.monotonic() < deadline:
            self._wait(POLL_MS)
            for link in self.outputs:
                link.flush()
        for link in self.outputs:
            if not link.settled:
                log.warning(
                    "output_discarded",
                    pipeline=self.name,
                    target=link.target,
                    messages=len(link.pending),
                    reason="target never appeared",
                )
            link.close()

    # ---- the loop ------------------------------------------------------------------------

    def _wait_for_sources(self) -> bool:
        """Wait until every source said hello; False when a stop came first."""
        if self.fanin.all_connected():
            return True
        self._report_state(WorkerState.WAITING_FOR_SOURCES)
        log.info(
            "waiting_for_sources", pipeline=self.name, expected=self.config.source_pipeline_count
        )
        next_warning = time.monotonic() + STALL_WARNING_S
        while not self.fanin.all_connected():
            if self.stopping:
                return False
            self._wait(POLL_MS)
            if time.monotonic() > next_warning:
                next_warning += STALL_WARNING_S
                log.warning(
                    "still_waiting_for_sources",
                    pipeline=self.name,
                    expected=self.config.source_pipeline_count,
                    connected=self.fanin.sources,
                )
        return True

    def _iterate(self, inputs: Any) -> None:
        try:
            value = self.host.step(inputs)
        except Stop:
            self.ended = True
            return
        self.counters.iterations += 1
        if value is not SKIP:
            self._emit(value)
        if stop_requested():
            clear_stop_request()
            self.ended = True

    def _source_loop(self) -> None:
        limit = self.options.iterations
        while not self.stopping and not self.ended:
            self._iterate(None)
            if limit is not None and self.counters.iterations >= limit:
                self.ended = True
            self._tick()

    def _sink_loop(self) -> None:
        fanin = self.fanin
        while not self.ended:
            if self.stopping and time.monotonic() > self._drain_deadline:
                return  # a live upstream keeps sending: the drain is bounded in time
            if fanin.ready():
                self._iterate(fanin.pop())
                self._tick()
            elif fanin.exhausted():
                return
            elif self.stopping and self._upstream_quiet():
                return  # everything that was sent has been processed
            else:
                self._wait(POLL_MS)

    def _upstream_quiet(self) -> bool:
        """Whether every source has ended its stream or said it stopped."""
        return all(s in self._departed or self.fanin.has_ended(s) for s in self.fanin.sources)

    def _run_scripts(self) -> WorkerState:
        if not self._wait_for_sources():
            return WorkerState.STOPPED
        self.host.load()
        self._report_state(WorkerState.RUNNING)
        if self.inputs is None:
            self._source_loop()
        else:
            self._sink_loop()
        return WorkerState.STOPPED if self.stopping and not self.ended else WorkerState.FINISHED

    def _fail(self, exc: PorchError) -> WorkerState:
        self._last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, ScriptError) and exc.user_traceback:
            sys.stderr.write(exc.user_traceback)
        sys.stderr.write(f"{self._last_error}\n")
        sys.stderr.flush()
        return WorkerState.FAILED

    def run(self) -> int:
        """Run the pipeline to its end; the exit code is 0 unless it failed."""
        endpoint = self.inputs.endpoint if self.inputs is not None else None
        self.control.send(
            MessageType.HELLO, pid=os.getpid(), endpoint=endpoint, instance=self.instance
        )
        self._report_state(WorkerState.STARTING)
        try:
            outcome = self._run_scripts()
        except PorchError as exc:
            outcome = self._fail(exc)
        self._report_state(WorkerState.STOPPING, self._last_error)
        self._finish(outcome)
        return 1 if self.state is WorkerState.FAILED else 0

    def _finish(self, outcome: WorkerState) -> None:
        try:
            self._close_outputs(FrameKind.EOS if outcome is WorkerState.FINISHED else FrameKind.BYE)
        except PorchError as exc:
            outcome = self._fail(exc)
        for error in self.host.end():
            outcome = self._fail(error)
        if self.fanin.depth():
            log.info("input_not_processed", pipeline=self.name, messages=self.fanin.depth())
        self._heartbeat()
        self._report_state(outcome, self._last_error)
        log.info(
            "worker_exit",
            pipeline=self.name,
            state=outcome.value,
            iterations=self.counters.iterations,
        )
        if self.inputs is not None:
            self.inputs.close()
        self.control.close()
        self.ctx.term()
