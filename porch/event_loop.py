"""The supervisor's event loop: one poll over every input it serves, signals included.

The worker channel, the output pipes, the fork server's socket, discovery and porchd's control
socket each register a handler; signals wake the poll through their wakeup fd (SIGINT/SIGTERM
become a stop request on the same path as porchctl's; SIGCHLD marks that children changed).
Tickers run after every poll (porchd's snapshots, `porch run`'s progress).
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import zmq

from porch import reaper

Key = zmq.Socket[bytes] | int


class EventLoop:
    """Polls what is registered and calls its handler."""

    def __init__(self) -> None:
        self.poller = zmq.Poller()
        self._handlers: dict[Key, Callable[[], None]] = {}
        self._tickers: list[Callable[[float], None]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self.add(self._wake_r.fileno(), self._drain_wakeups)
        self._signals_installed = False
        self.children_changed = False  # SIGCHLD came: a worker or an adopted process ended

    def add(self, key: Key, on_readable: Callable[[], None]) -> None:
        """Poll `key` (a ZeroMQ socket or a file descriptor); call `on_readable` on input."""
        self.poller.register(key, zmq.POLLIN)
        self._handlers[key] = on_readable

    def remove(self, key: Key) -> None:
        """Stop polling `key` (nothing when it is not polled)."""
        if self._handlers.pop(key, None) is not None:
            self.poller.unregister(key)

    def add_ticker(self, on_tick: Callable[[float], None]) -> None:
        """Call `on_tick(now)` after every poll."""
        self._tickers.append(on_tick)

    def poll(self, timeout_ms: int) -> list[Key]:
        """Wait up to `timeout_ms` for input; return what had some (not yet handled)."""
        return [key for key, _ in self.poller.poll(timeout_ms)]

    def dispatch(self, keys: list[Key]) -> None:
        """Call the handler of each key that still has one."""
        for key in keys:
            handler = self._handlers.get(key)
            if handler is not None:
                handler()

    def tick(self, now: float) -> None:
        """Run the tickers."""
        for on_tick in self._tickers:
            on_tick(now)

    def is_wakeup(self, key: Key) -> bool:
        """Whether `key` is the signals' wakeup socket."""
        return key == self._wake_r.fileno()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def install_signals(self, on_stop: Callable[[int], None]) -> None:
        """SIGINT/SIGTERM call `on_stop(signum)`; as subreaper, SIGCHLD marks children_changed."""
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._signals_installed = True
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def stop(signum: int, frame: FrameType | None) -> None:
            on_stop(signum)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        # As subreaper we adopt what a dead worker leaves (its scripts' children in other
        # sessions); SIGCHLD tells us when to look.
        if reaper.become_subreaper():
            signal.signal(signal.SIGCHLD, self._on_child_exit)

    def _on_child_exit(self, signum: int, frame: FrameType | None) -> None:
        self.children_changed = True

    def close(self) -> None:
        """Restore the signals and close the wakeup pair."""
        if (
            self._signals_installed
        ):  # a signal now (the watchdog's SIGCHLD) must not hit a closed fd
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()


@dataclass
class SweepTimer:
    """When the supervisor looks at every worker's timers and exit: on any event but a
    worker's report, else at most every `interval_s` (at 1,000 workers, a sweep per heartbeat
    was most of porchd's idle CPU)."""

    interval_s: float
    next_s: float = 0.0
    held: bool = False  # a sweep was skipped: the next poll wakes by next_s for it

    def due(self, now: float, event: bool) -> bool:
        """Whether to sweep now (`event`: something other than a report woke the loop)."""
        self.held = not (event or now >= self.next_s)
        if not self.held:
            self.next_s = now + self.interval_s
        return not self.held


def timeout_ms(due_s: list[float], now: float, most_ms: int) -> int:
    """How long a poll may wait: until the earliest of `due_s` (monotonic s), at most
    `most_ms` (and rounded up, so the timer is due when it wakes)."""
    if not due_s:
        return most_ms
    due_ms = (min(due_s) - now) * 1000
    return max(0, min(most_ms, int(due_ms) + 1))
