"""How the message loop waits: idle until something arrives, the housekeeping between
iterations, and a producer blocked on a full output link.

An idle loop first sends what its links have batched and acknowledges what it has processed,
then blocks on its sockets (control channel, input, the signal pipe) for at most POLL_MS;
whatever woke it is read at once. A busy loop reads the control channel and the
acknowledgements at most every TICK_S (workers/housekeeping.py). A value that a full link does
not take waits here, serving control and acks, until the link has room; once a stop's drain
deadline has passed it is forced in (its input is processed and will be acknowledged: the
stop sequence waits for the target to take it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from porch import logs
from porch.wire import FrameKind, Origin
from workers.housekeeping import Housekeeping
from workers.links import OutputLink
from workers.replicas import Keep, Output, TargetGroup, links_of
from workers.signals import StopSignals
from workers.sockets import WorkerSockets
from workers.targets import STALL_WARNING_S, LinkStatus, link_status

log = logs.get("porch.worker")

POLL_MS = 1000  # idle wake-ups (signals, messages and acks wake the loop at once)
ACK_DELAY_MS = 1  # a loop fed back to back acknowledges once its input pauses this long
TICK_S = 0.05  # how often a busy loop looks at the control channel and acknowledgements
POLL_BOTH = zmq.POLLIN | zmq.POLLOUT


class Waiter:
    """The message loop's waits (module doc); `flush` sends what the links have batched."""

    def __init__(
        self,
        pipeline: str,
        sockets: WorkerSockets,
        stops: StopSignals,
        house: Housekeeping,
        flush: Callable[[], None],
        read_acks: Callable[[], None],
        *,
        keep: Keep | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.control = sockets.control
        self.inbox = sockets.inbox
        self.outputs = sockets.outputs
        self.keep = keep  # a durable outbox's row for a value whose link became a group
        self.stops = stops
        self.house = house
        self._flush = flush
        self._read_acks = read_acks
        self._poller = sockets.poller(stops.wake_r)
        self._next_tick = 0.0
        # a replica holding inputs until their outputs are acknowledged (workers/deferred.py)
        # also wakes on its targets' acks
        self.deferred: Callable[[], bool] | None = None
        self._streaming = False  # the last wait had input within ACK_DELAY_MS
        self._blocked: tuple[tuple[Any, list[tuple[Any, Any]]], zmq.Poller] | None = None

    def tick(self, control: bool = True, monitor: bool = True) -> None:
        """Housekeeping between iterations, at most every TICK_S: control, acks, heartbeat
        (`control`, `monitor`: see Housekeeping.tick)."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        self.house.tick(now, control, monitor)

    def wait(
        self,
        timeout_ms: int,
        poller: zmq.Poller | None = None,
        ready: Callable[[], bool] | None = None,
        lone: Callable[[], None] | None = None,
    ) -> None:
        """Block until input, a control message, an ack or a signal arrives, or the timeout.

        `ready`: whether the input received makes an input set; then the caller runs it at
        once and does the housekeeping after it (the acks and the tick wait, the value not).
        `lone`: receives input that woke the loop alone, and runs a value that came alone at
        once (workers/lone.py), before the housekeeping."""
        self._flush()  # about to idle: nothing may wait in a batch
        inbox = self.inbox
        if poller is None and self.deferred is not None and self.deferred():
            poller = self.acks_poller()
        poller = poller or self._poller
        events: dict[Any, int] = {}
        if inbox is not None:
            if self._streaming and timeout_ms > ACK_DELAY_MS:
                # input came back to back: more is on its way, and acks go every ack_every
                # inputs (an ack per wait cost the receiving side ~15% of its time)
                events = dict(poller.poll(ACK_DELAY_MS))
            if not events:
                inbox.flush_acks()  # about to idle: tell our sources what we have done
        if not events:
            started = time.monotonic()
            events = dict(poller.poll(timeout_ms))
            self._streaming = time.monotonic() - started < ACK_DELAY_MS / 1000
        input_socket = inbox.link.socket if inbox is not None else None
        only_input = len(events) == 1 and input_socket in events
        if only_input and lone is not None:
            lone()  # the idle path: a value that came alone has run
        else:
            if events and not only_input:
                self._serve(events)
            if inbox is not None and input_socket in events:
                inbox.receive()
        if only_input and ready is not None and ready():
            return
        self._read_acks()
        # (_serve read the control channel, and the input's monitor, if they woke the wait;
        # the idle poller holds that monitor, the others do not)
        self.tick(control=False, monitor=poller is not self._poller)

    def _serve(self, events: dict[Any, int]) -> None:
        """What woke the wait besides input: a signal, the control channel, the input's socket
        monitor."""
        wake = self.stops.wake_r
        if wake in events or wake.fileno() in events:
            with contextlib.suppress(BlockingIOError):
                wake.recv(4096)
            self.stops.say()  # a signal: its stop is logged here, not in its handler
        if self.control.socket in events:
            self.house.on_control()
        if self.inbox is not None and self.inbox.link.monitor in events:
            self.inbox.link.check_events(self.pipeline)

    def hand_over(
        self, link: Output, kind: FrameKind, payload: list[Any], origin: Origin | int = ()
    ) -> None:
        """Give one message to a link, waiting (while serving control) as long as it is full."""
        next_warning = time.monotonic() + STALL_WARNING_S
        while not link.offer(kind, payload, origin):
            now = time.monotonic()
            if self.stops.requested and now > self.stops.drain_deadline:
                # the input is processed (and will be acknowledged): its output must not be
                # dropped; the stop sequence waits for the target to take it
                link.force(kind, payload, origin)
                return
            if now > next_warning:
                next_warning = now + STALL_WARNING_S
                self._blocked_warning(link)
            self.wait(POLL_MS, self.blocked_poller(link))
            link = self._current(link, payload, origin)

    def wait_for_room(self, outputs: Sequence[Output]) -> bool:
        """A source's burst (workers/hotloop.py) found an output full: wait here, serving
        control and acks, until every output has room, before its next step() (no value waits
        half made, and those after the wait leave together, not the first on its own). False
        when a full output decides value by value (drop_oldest, a replicated target): then
        hand_over waits. A stop ends the wait: no value was made, so none is lost."""
        next_warning = time.monotonic() + STALL_WARNING_S
        while not self.stops.requested:
            full = next((output for output in outputs if output.room() <= 0), None)
            if full is None:
                return True
            if type(full) is not OutputLink or full.settings.drop_oldest:
                return False
            if not full.settings.acked:  # at-most-once: ZeroMQ may take the batch at once
                full.flush()
                if full.room() > 0:
                    continue
            now = time.monotonic()
            if now > next_warning:
                next_warning = now + STALL_WARNING_S
                self._blocked_warning(full)
            self.wait(POLL_MS, self.blocked_poller(full))
        return True

    def _blocked_warning(self, link: Output) -> None:
        status = blocked_status(link)
        log.warning("output_blocked", pipeline=self.pipeline, target=link.target,
                    reason=status["state"].blocked_reason, held=status["held"],
                    since=status["since"])  # fmt: skip

    def _current(self, link: Output, payload: list[Any], origin: Origin | int) -> Output:
        """The directory may have shown the target as replicas while we waited: its group
        took the link's values and takes this one after them (with a durable outbox, its row
        goes under the replica the group picks now: the link let go of the one it had)."""
        current = next((o for o in self.outputs if o.target == link.target), link)
        if current is not link and isinstance(current, TargetGroup) and self.keep is not None:
            member = current.pick(payload)
            if member is not None:
                stored = (current.stream, origin) if isinstance(origin, int) else origin
                self.keep(member, payload, stored)
        return current

    def acks_poller(self) -> zmq.Poller:
        """What an idle worker waits on (control, input, signals) and every output link's
        acks."""
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(self.stops.wake_r, zmq.POLLIN)
        if self.inbox is not None:
            poller.register(self.inbox.link.socket, zmq.POLLIN)
        for output in self.outputs:
            for link in links_of(output):
                if link.socket is not None:
                    poller.register(link.socket, zmq.POLLIN)
        return poller

    def blocked_poller(self, output: Output) -> zmq.Poller:
        """What a producer blocked on `output` waits for: acks (the outbox is full) and, only
        while ZeroMQ itself holds unsent entries, room in its queue; never a busy loop (a
        replicated target: any replica's). The last one is kept: a producer blocked on the
        same link again, with the same sockets and the same events, waits on it again (a
        new one cost ~8 us of each wake-up)."""
        control = self.control.socket
        wanted = [(link.socket, POLL_BOTH if link.unsent else zmq.POLLIN)
                  for link in links_of(output) if link.socket is not None]  # fmt: skip
        key = (control, wanted)
        if self._blocked is not None and self._blocked[0] == key:
            return self._blocked[1]
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        poller.register(self.stops.wake_r, zmq.POLLIN)
        for sock, events in wanted:
            poller.register(sock, events)
        self._blocked = (key, poller)
        return poller


def blocked_status(output: Output) -> LinkStatus:
    """What a producer blocked on `output` says of it: a link's status; a replicated target's
    busiest live replica's, or, with none live, its first replica's."""
    if not isinstance(output, TargetGroup):
        return link_status(output)
    links = output.router.live or list(output.links.values())
    status = link_status(max(links, key=lambda link: link.data_held()))
    status["name"] = output.target
    status["held"] = output.data_held()
    return status
