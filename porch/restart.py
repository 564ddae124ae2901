"""Restart policy and backoff for supervised workers: pure logic, the caller passes the time.

A worker's exits feed `RestartTracker.on_exit`, which says whether to restart it and after how
long. Failures are counted in a sliding window; too many of them and the tracker gives up until
`reset()` (what `porchctl restart NAME` does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RestartPolicy(enum.StrEnum):
    """When a worker that exited is started again (config field `restart`)."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class Action(enum.Enum):
    """What the supervisor does about an exit."""

    RESTART = "restart"
    GIVE_UP = "give up"  # too many failures in the window: the worker is `failed`
    NONE = "none"  # leave it ended (finished or failed under `never`)


@dataclass(frozen=True)
class BackoffSettings:
    """Backoff before restart n (1-based in the window) is min(base_s * 2**(n-1), max_s)."""

    base_s: float = 0.5
    max_s: float = 30.0
    max_failures: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < self.base_s:
            raise ValueError(f"backoff: need 0 <= base_s <= max_s, got {self.base_s}, {self.max_s}")
        if self.max_failures < 0 or self.window_s <= 0:
            raise ValueError("backoff: max_failures must be >= 0 and window_s > 0")

    def delay_s(self, n: int) -> float:
        """The wait before restart number `n` (1-based) within the window."""
        # Capping the exponent first keeps 2**(n-1) from growing without bound.
        return min(self.base_s * 2.0 ** min(max(n - 1, 0), 64), self.max_s)


@dataclass(frozen=True)
class Decision:
    """The tracker's answer to one exit."""

    action: Action
    delay_s: float = 0.0


NO_ACTION = Decision(Action.NONE)


class RestartTracker:
    """Decides, exit by exit, whether one worker is restarted and after what delay."""

    def __init__(self, policy: RestartPolicy, settings: BackoffSettings | None = None) -> None:
        self.policy = policy
        self.settings = settings if settings is not None else BackoffSettings()
        self._failures: list[float] = []
        self._restarts = 0

    @property
    def restarts(self) -> int:
        """How many restarts this tracker has decided in total (survives `reset`)."""
        return self._restarts

    @property
    def failures(self) -> int:
        """Failures in the window as of the last exit seen."""
        return len(self._failures)

    def reset(self) -> None:
        """Forget the failures (a commanded restart gives the worker a clean slate)."""
        self._failures.clear()

    def on_exit(self, now_s: float, failed: bool) -> Decision:
        """Decide what to do about an exit at `now_s`; `failed` is False only for exit 0."""
        if self.policy is RestartPolicy.NEVER:
            return NO_ACTION
        if not failed:
            return self._on_clean_exit()
        return self._on_failure(now_s)

    def _on_clean_exit(self) -> Decision:
        if self.policy is not RestartPolicy.ALWAYS:
            return NO_ACTION
        # A clean exit is not a failure: it neither counts toward giving up nor grows the delay.
        return self._restart(self.settings.base_s)

    def _on_failure(self, now_s: float) -> Decision:
        self._failures.append(now_s)
        self._forget_before(now_s - self.settings.window_s)
        n = len(self._failures)
        if n > self.settings.max_failures:
            return Decision(Action.GIVE_UP)
        return self._restart(self.settings.delay_s(n))

    def _forget_before(self, cutoff_s: float) -> None:
        # Strictly older than the window is forgotten; a failure exactly window_s ago still counts.
        # A filter, not a pop from the front, so a clock that steps back cannot strand old entries.
        self._failures = [t for t in self._failures if t >= cutoff_s]

    def _restart(self, delay_s: float) -> Decision:
        self._restarts += 1
        return Decision(Action.RESTART, delay_s)
