"""Per-second rates from monotonically growing counters, over a short sliding window.

The supervisor's counters (iterations, messages in and out) only grow while a worker lives and
start again at 0 when it is restarted; a rate is the growth over the window, and a counter that
went down (a restart) starts the window afresh instead of showing a negative rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

WINDOW_S = 3.0  # rates look this far back: steady, yet a stall shows within seconds
MIN_SPAN_S = 0.2  # below this the two samples are too close to divide by


@dataclass
class CounterRate:
    """The rate of one counter: samples of (time, value) within the window."""

    window_s: float = WINDOW_S
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, now_s: float, value: float) -> None:
        """Record the counter's value at `now_s` (monotonic seconds; a repeat is ignored)."""
        if self.samples and now_s <= self.samples[-1][0]:
            return
        if self.samples and value < self.samples[-1][1]:
            self.samples.clear()  # the counter restarted with its worker
        self.samples.append((now_s, value))
        while len(self.samples) > 2 and now_s - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def per_s(self, now_s: float | None = None) -> float:
        """Growth per second over the window (0.0 until two samples are far enough apart, and
        once the newest sample is older than the window at `now_s`: its source went quiet)."""
        if len(self.samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        if now_s is not None and now_s - t1 > self.window_s:
            return 0.0
        span = t1 - t0
        return (v1 - v0) / span if span >= MIN_SPAN_S else 0.0


class RateMeter:
    """Rates of named counters of named things (pipeline -> counter -> rate)."""

    def __init__(self, counters: Iterable[str], window_s: float = WINDOW_S) -> None:
        self.counters = tuple(counters)
        self.window_s = window_s
        self._rates: dict[tuple[str, str], CounterRate] = {}

    def add(self, now_s: float, name: str, values: Mapping[str, object]) -> None:
        """Record the counters of `name` (missing or non-numeric ones are skipped)."""
        for counter in self.counters:
            value = values.get(counter)
            if isinstance(value, int | float) and not isinstance(value, bool):
                key = (name, counter)
                rate = self._rates.setdefault(key, CounterRate(self.window_s))
                rate.add(now_s, float(value))

    def per_s(self, name: str, counter: str, now_s: float | None = None) -> float:
        """The rate of one counter of `name`; 0.0 when unknown or quiet at `now_s`."""
        rate = self._rates.get((name, counter))
        return rate.per_s(now_s) if rate is not None else 0.0

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the rates of every name not in `keep` (pipelines that were removed)."""
        wanted = set(keep)
        for key in [k for k in self._rates if k[0] not in wanted]:
            del self._rates[key]
