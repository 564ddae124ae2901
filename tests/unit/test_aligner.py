"""The aligned gate on its own: values of the same source iteration pair, in any order."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from porch.stream import SKIP
from workers.scheduler import Aligner

pytestmark = pytest.mark.timeout(30)

A = ("pipeline_a", 7)


def aligner(*sources: str) -> tuple[Aligner, set[str]]:
    queues: dict[str, deque[Any]] = {name: deque() for name in sources}
    ended: set[str] = set()
    made = Aligner(queues, ended)
    for name in sources:
        made.connect(name)
    made.start(("pipeline_a",))
    return made, ended


def item(value: Any, seq: int) -> tuple[Any, ...]:
    return (0, value, (A, seq), 0)


def values(taken: dict[str, Any]) -> dict[str, Any]:
    return {name: entry[1] for name, entry in taken.items()}


def test_two_sources_pair_by_iteration_however_they_interleave() -> None:
    gate, _ = aligner("b", "c")
    gate.align("b", item("b1", 1))
    gate.align("b", item("b2", 2))
    assert not gate.sets and gate.counts == {"b": 2, "c": 0}
    gate.align("c", item("c1", 1))
    gate.align("c", item("c2", 2))
    assert [values(gate.pop()), values(gate.pop())] == [
        {"b": "b1", "c": "c1"},
        {"b": "b2", "c": "c2"},
    ]
    assert gate.counts == {"b": 0, "c": 0} and gate.unpaired == 0


def test_a_value_whose_partner_was_passed_leaves_unpaired() -> None:
    gate, _ = aligner("b", "c")
    gate.align("b", item("b1", 1))
    gate.align("c", item("c2", 2))  # c skipped iteration 1 for good
    assert values(gate.pop()) == {"b": "b1", "c": SKIP}
    assert gate.unpaired == 1


def test_an_ended_source_releases_what_waits_for_it_and_exhausts_the_gate() -> None:
    gate, ended = aligner("b", "c")
    gate.align("b", item("b1", 1))
    ended.add("c")
    gate.sweep("c")
    assert values(gate.pop()) == {"b": "b1", "c": SKIP}
    assert gate.exhausted()
