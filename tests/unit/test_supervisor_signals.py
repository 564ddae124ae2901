"""porch run's and porchd's SIGINT/SIGTERM (porch/supervisor.py): the handler only notes the
signal; the loop stops the pipelines (and logs) after it. A handler runs between any two
bytecodes of the main thread, also inside a log call holding the logger's lock: logging or
stopping workers there could deadlock."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import pytest

from porch.supervisor import Supervisor

pytestmark = pytest.mark.timeout(10)


class Stub(SimpleNamespace):
    """The parts of a Supervisor its signal handling uses."""

    def __init__(self) -> None:
        super().__init__(stopping=False, forced=False, signalled=None, stops=[])

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)
        self.stopping = True


def on_signal(sup: Any, signum: int) -> None:
    Supervisor._on_signal(sup, signum)


def take_signal(sup: Any) -> None:
    Supervisor._take_signal(sup)


def test_the_handler_only_notes_the_signal_and_the_loop_stops() -> None:
    sup = Stub()
    on_signal(sup, signal.SIGINT)
    assert sup.stops == [] and not sup.forced  # nothing that logs or sends, in the handler
    take_signal(sup)
    take_signal(sup)
    assert sup.stops == ["SIGINT"]


def test_a_second_signal_forces_even_before_the_loop_took_the_first() -> None:
    sup = Stub()
    on_signal(sup, signal.SIGTERM)
    on_signal(sup, signal.SIGTERM)
    assert sup.forced
