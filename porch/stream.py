"""End-of-stream and skip markers that user scripts use to steer their pipeline."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final


class _Skip:
    """Marker type: a `step()` that returns SKIP sends nothing this iteration."""

    _instance: _Skip | None = None

    def __new__(cls) -> _Skip:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "porch.SKIP"

    def __reduce__(self) -> str:
        return "SKIP"


SKIP: Final = _Skip()


class Stop(Exception):
    """Raised from `step()` to end this pipeline's stream now; this iteration sends nothing."""


class _StopRequest:
    """Per-process flag set by `stop()`; the worker reads and clears it after each iteration."""

    requested: bool = False


STOP_REQUEST: Final = _StopRequest  # its flag, for a worker's tight loop (no call per value)


# Which iteration called stop(): with concurrency > 1 each in-flight iteration is an asyncio
# task with its own context, so the stream ends after the one that asked, not another.
_stop_here: ContextVar[bool] = ContextVar("porch_stop_here", default=False)


def stop() -> None:
    """End this pipeline's stream after the current iteration's output has been sent."""
    _StopRequest.requested = True
    _stop_here.set(True)


def begin_iteration() -> None:
    """Start an iteration's context: stop() in it is seen by stop_requested_here()."""
    _stop_here.set(False)


def stop_requested_here() -> bool:
    """Whether stop() was called in this context (the current async iteration)."""
    return _stop_here.get()


def stop_requested() -> bool:
    """Whether a script called `stop()` (used by the worker loop)."""
    return _StopRequest.requested


def clear_stop_request() -> None:
    """Forget an earlier `stop()` (used by tests and by a restarted loop)."""
    _StopRequest.requested = False
