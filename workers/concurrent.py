"""The worker's loop for async steps and `concurrency` > 1: iterations in flight on one event loop.

Only pipelines with an `async def step()` run here (sync steps cannot overlap, whatever
`concurrency` says); the others keep the plain loop in workers/loop.py (its hot path is
benchmarked).

Up to `concurrency` iterations run at once as asyncio tasks on the script host's event loop.
They complete in any order but leave in input order: an entry waits at the head of the
in-flight queue until its task is done, then its output is handed to the links (or its skip
marker, or on_error's verdict), and only then is its input acknowledged to its sender, so a
kill -9 loses nothing that was in flight (at-least-once: the sender replays it). A slow
iteration holds back the ones after it; at most `concurrency` are in flight.

Waiting: while nothing is in flight the loop idles like the plain one (zmq poll). With
iterations in flight it runs the event loop until the head completes (at the bound), or until
any task completes or the input socket, the control socket or a signal wakes it (below the
bound), at most TICK_S, then polls the sockets without blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from porch.errors import ScriptError
from porch.stream import SKIP, Stop, clear_stop_request, stop_requested_here
from porch.wire import Origin
from workers.inbox import Inbox, Undecodable
from workers.loop import MessageLoop
from workers.scheduler import Inputs, Taken, UserValue

WAIT_S = 0.05  # longest the event loop runs before the sockets and the control channel are read
IDLE_MS = 1000  # nothing in flight: how long the loop may block on its sockets (waiting.POLL_MS)


class Outcome:
    """What an in-flight entry that runs no step() does when it leaves: pass a skip marker."""


MARKER = Outcome()


@dataclass
class InFlight:
    """One iteration in flight: its task (None: a marker to pass on), input and origin."""

    task: asyncio.Task[tuple[UserValue, bool, float]] | None
    inputs: Inputs | None  # None: a source's iteration
    origin: Origin
    taken: Taken | None  # the inbox items to acknowledge once it has left


class ConcurrentLoop:
    """Runs one worker's iterations concurrently, outputs in input order (see module doc):
    `plain` is the worker's message loop, whose parts (output, on_error, waits) it uses."""

    def __init__(self, plain: MessageLoop, concurrency: int) -> None:
        self.plain = plain
        self.host = plain.host
        self.loop = plain.host.loop
        self.bound = concurrency
        self.inflight: deque[InFlight] = deque()
        self._waker: asyncio.Future[None] | None = None
        self._fds: list[int] = []

    # ---- running -------------------------------------------------------------------------

    def run(self, inbox: Inbox | None, limit: int | None = None) -> None:
        """The source (at most `limit` iterations) or sink loop; returns when the stream
        ended, or the stop is done."""
        self._watch(inbox)
        try:
            if inbox is None:
                self._source(limit)
            else:
                self._sink(inbox)
        finally:
            self._cancel_all()
            for fd in self._fds:
                self.loop.remove_reader(fd)

    def _source(self, limit: int | None) -> None:
        plain = self.plain
        while True:
            while len(self.inflight) < self.bound and not (plain.stopping or plain.ended):
                if limit is not None and plain.counters.iterations + len(self.inflight) >= limit:
                    break
                self._start(None, (), None)
            self._leave_done()
            if plain.ended or (limit is not None and plain.counters.iterations >= limit):
                plain.ended = True
                return
            if not self.inflight:
                if plain.stopping:
                    return
                continue
            if plain.stopping and time.monotonic() >= plain.stops.stop_deadline:
                return  # what is still in flight is cancelled: a source has no sender to owe
            self._wait()

    def _sink(self, inbox: Inbox) -> None:
        plain = self.plain
        fanin = inbox.fanin
        if fanin.any_input:  # a feedback loop needs one member to go first
            self._start(dict.fromkeys(fanin.sources), (), None)
        while True:
            self._leave_done()  # first: the slots it frees are filled before any wait
            if plain.ended:
                return
            self._take(inbox)
            if not self.inflight:
                if fanin.exhausted():
                    return
                if plain.stopping and (not plain.draining(inbox) or inbox.quiet()):
                    return  # a live upstream replays what we did not acknowledge
                if not fanin.ready():
                    plain.waiter.wait(IDLE_MS)
                continue
            if plain.stopping and time.monotonic() >= plain.stops.stop_deadline:
                return  # not acknowledged: the sources keep it and replay it
            self._wait()

    def _take(self, inbox: Inbox) -> None:
        """Start iterations for the input sets that are ready, up to the bound."""
        plain = self.plain
        fanin = inbox.fanin
        while len(self.inflight) < self.bound and not plain.ended and fanin.ready():
            if plain.stopping and not plain.draining(inbox):
                return
            values, taken, origin, marked = inbox.take()
            if marked:
                if inbox.undecodable:
                    bad = [v for v in values.values() if isinstance(v, Undecodable)]
                    inbox.undecodable -= len(bad)
                self.inflight.append(InFlight(None, values, origin, taken))
            elif not inbox.undecodable or plain.errors.decoded(inbox, values):
                self._start(values, origin, taken)
            else:
                self.inflight.append(InFlight(None, values, origin, taken))

    def _start(self, inputs: Inputs | None, origin: Origin, taken: Taken | None) -> None:
        task = self.loop.create_task(self._iteration(inputs))
        self.inflight.append(InFlight(task, inputs, origin, taken))

    async def _iteration(self, inputs: Inputs | None) -> tuple[UserValue, bool, float]:
        """One iteration: its value, whether it called porch.stop(), how long it took."""
        started = time.perf_counter()
        value = await self.host.astep(inputs)
        return value, stop_requested_here(), time.perf_counter() - started

    # ---- leaving in order ----------------------------------------------------------------

    def _leave_done(self) -> None:
        """Hand on the outputs of the completed iterations at the head, in input order."""
        plain = self.plain
        inflight = self.inflight
        left = False
        while inflight and not plain.ended:
            head = inflight[0]
            if head.task is not None and not head.task.done():
                break
            inflight.popleft()
            self._leave(head)
            left = True
            if plain.inbox is not None and head.taken is not None:
                plain.inbox.commit(head.taken)
        if left:
            plain.after_iteration()
        if plain.ended:
            self._cancel_all()

    def _leave(self, entry: InFlight) -> None:
        """What `MessageLoop.iterate` does once step() has returned or raised."""
        plain = self.plain
        emitter = plain.emitter
        if entry.task is None:
            emitter.pass_marker(entry.origin)
            return
        try:
            value, stop_here, seconds = entry.task.result()
        except Stop:
            plain.ended = True
            return
        except ScriptError as exc:
            if plain.errors.fails:
                raise
            plain.errors.poison(exc, entry.inputs)
            emitter.pass_marker(entry.origin)
            return
        plain.step_time(seconds)  # the step_seconds histogram: each iteration's own time
        if value is SKIP:
            emitter.pass_marker(entry.origin)
        elif not emitter.emit(value, entry.inputs, entry.origin):
            emitter.pass_marker(entry.origin)
            return
        plain.counters.iterations += 1
        if stop_here:
            clear_stop_request()
            plain.ended = True

    def _cancel_all(self) -> None:
        """Cancel what is still in flight (its inputs stay unacknowledged) and let it unwind."""
        tasks = [e.task for e in self.inflight if e.task is not None and not e.task.done()]
        self.inflight.clear()
        for task in tasks:
            task.cancel()
        if tasks and not self.loop.is_running():
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    # ---- waiting -------------------------------------------------------------------------

    def _watch(self, inbox: Inbox | None) -> None:
        """Wake the event loop on input, control messages and signals."""
        plain = self.plain
        sockets: list[zmq.Socket[bytes]] = [plain.waiter.control.socket]
        if inbox is not None:
            sockets.append(inbox.link.socket)
        for sock in sockets:
            fd = sock.fileno()  # ZMQ_FD: readable when the socket's events may have changed
            self._fds.append(fd)
            self.loop.add_reader(fd, self._wake_zmq, sock)
        fd = plain.stops.wake_r.fileno()
        self._fds.append(fd)
        self.loop.add_reader(fd, self._wake_signal)

    def _wake_zmq(self, sock: zmq.Socket[bytes]) -> None:
        """A zmq socket's FD woke: reading ZMQ_EVENTS lets zmq clear it (else the event loop,
        level-triggered, would call us again and again); what arrived is read after the wait."""
        sock.getsockopt(zmq.EVENTS)
        self._wake()

    def _wake_signal(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.plain.stops.wake_r.recv(4096)  # the handler has run: the byte only woke us
        self._wake()

    def _wake(self) -> None:
        if self._waker is not None and not self._waker.done():
            self._waker.set_result(None)

    def _readable(self) -> bool:
        """Whether input or a control message waits (checking ZMQ_EVENTS also re-arms the
        edge-triggered zmq FD the event loop watches)."""
        plain = self.plain
        sockets: list[zmq.Socket[bytes]] = [plain.waiter.control.socket]
        if plain.inbox is not None:
            sockets.append(plain.inbox.link.socket)
        return any(int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN for sock in sockets)

    def _wait(self) -> None:
        """Run the event loop until the head completes (or, below the bound, any iteration
        completes or input arrives), at most WAIT_S. Below the bound the sockets are read and
        acknowledgements sent at once (more input is wanted); at the bound only the
        housekeeping runs (at most every TICK_S): acks go out every ack_every inputs, as in
        the plain loop, not one per output."""
        plain = self.plain
        plain.flush_outputs()  # about to wait: nothing may wait in a batch
        head = self.inflight[0].task
        room = len(self.inflight) < self.bound and plain.inbox is not None
        if head is not None and not head.done():
            if not room:
                self._run_until([head])
            elif not self._readable():
                self._waker = self.loop.create_future()
                waits = [e.task for e in self.inflight if e.task is not None]
                self._run_until([*waits, self._waker])
                self._waker = None
        if room:
            plain.waiter.wait(0)
        else:
            plain.waiter.tick()

    def _run_until(self, futures: list[asyncio.Future[Any]]) -> None:
        """Run the event loop until one of `futures` is done, at most WAIT_S (cheaper than
        asyncio.wait: no task, no set per call; this runs once per output at concurrency 1)."""
        loop = self.loop
        timer = loop.call_later(WAIT_S, loop.stop)
        for future in futures:
            future.add_done_callback(self._stop_loop)
        try:
            loop.run_forever()
        finally:
            timer.cancel()
            for future in futures:
                future.remove_done_callback(self._stop_loop)

    def _stop_loop(self, future: asyncio.Future[Any]) -> None:
        self.loop.stop()
