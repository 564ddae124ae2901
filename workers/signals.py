"""A worker's stop: asked for by a signal, by the supervisor or by the supervisor's death.

One path for every stop (circus's sighandler): SIGTERM/SIGINT, the supervisor's STOP message and
the parent-death signal all call `StopSignals.request`. The first one starts a graceful stop
with two deadlines: how long the worker keeps taking input from live sources (`drain_deadline`)
and by when the stop must be done (`stop_deadline`, a little under the supervisor's
--stop-timeout). A second SIGTERM/SIGINT exits at once (exit code 130).

Signal handlers only set state; they wake the loop through a socketpair registered with
`signal.set_wakeup_fd`, whose read end the loop polls (`wake`). They log nothing: a handler
runs between any two bytecodes of the main thread, also inside a log call holding the
logger's lock, so a log there deadlocks; the loop's housekeeping says the stop (`say`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from porch import logs

log = logs.get("porch.worker")

# a finished source's last messages: how long after they stop arriving its stream is ended
DRAIN_TIMEOUT_S = 2.0
# After a stop, how long a pipeline keeps taking input from sources that still run. What it
# does not take stays unacknowledged upstream and is replayed to its next start, so a longer
# drain only saves a few replays; every restart (porchctl restart, reload, a scale-down) waits
# for it, so it is kept short. Input from sources that stopped too is drained until the stop
# deadline (MessageLoop.draining).
LIVE_DRAIN_S = 0.5
# Linux sends this when the supervisor dies (prctl PR_SET_PDEATHSIG): a signal of our own,
# so it can't be mistaken for a user's SIGTERM or a second Ctrl+C.
PARENT_DEATH_SIGNAL = signal.SIGRTMIN + 1


def silence_output() -> None:
    """Send our stdout/stderr to /dev/null: the supervisor's end of those pipes is gone, and
    writing there would raise BrokenPipeError (in our code and in the scripts')."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


class StopSignals:
    """Whether (and until when) a worker is stopping, and the signals that ask it to."""

    def __init__(
        self,
        pipeline: str,
        stop_budget_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        exit_now: Callable[[int], object] = os._exit,
        orphaned: Callable[[], None] = silence_output,
    ) -> None:
        self.pipeline = pipeline
        self.stop_budget_s = stop_budget_s
        self.requested = False
        self.drain_deadline = 0.0  # monotonic s; meaningful once requested
        self.stop_deadline = 0.0
        self.orphaned = False
        self.unsaid: str | None = None  # a signal's stop reason, logged by say()
        self.wake_r, self.wake_w = socket.socketpair()
        self._clock = clock
        self._exit_now = exit_now
        self._on_orphaned = orphaned

    def request(self, reason: str) -> None:
        """Begin a graceful stop: sources stop now, the rest drain what was sent for a while."""
        if self.requested:
            return
        log.info("stop_requested", pipeline=self.pipeline, reason=reason)
        self._begin()

    def say(self) -> None:
        """Log the stop a signal asked for (outside the handler: module doc), once."""
        reason, self.unsaid = self.unsaid, None
        if reason is not None:
            log.info("stop_requested", pipeline=self.pipeline, reason=reason)

    def _signalled(self, reason: str) -> None:
        """request() from a signal handler: the state now, the log by say()."""
        if not self.requested:
            self.unsaid = reason
            self._begin()

    def _begin(self) -> None:
        self.requested = True
        now = self._clock()
        self.stop_deadline = now + self.stop_budget_s
        self.drain_deadline = min(now + LIVE_DRAIN_S, self.stop_deadline)

    def install(self) -> None:
        """First SIGTERM/SIGINT: graceful stop; second: exit at once."""
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(PARENT_DEATH_SIGNAL, self.on_parent_death)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGINT: a graceful stop, or (the second time) exit now."""
        if self.requested:
            self._exit_now(130)
            return
        self._signalled(signal.Signals(signum).name)

    def on_parent_death(self, signum: int, frame: FrameType | None) -> None:
        """The supervisor died (Linux parent-death signal; it may arrive more than once)."""
        if self.orphaned:
            return
        self.orphaned = True
        self._on_orphaned()
        self._signalled("supervisor_gone")

    def check_parent(self, parent_pid: int | None) -> None:
        """Notice a dead supervisor where no parent-death signal came (we were reparented)."""
        if parent_pid is not None and os.getppid() != parent_pid:
            self.on_parent_death(PARENT_DEATH_SIGNAL, None)
