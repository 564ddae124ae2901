"""The aligned gate on its own: values of the same source iteration pair, in any order."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import pytest

from porch.stream import SKIP
from workers.scheduler import Aligner, PairRun, Span

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


def lazy_aligner(*sources: str) -> tuple[Aligner, set[str]]:
    made, ended = aligner(*sources)
    assert made.lazy  # two plain sources aligned on one pipeline
    return made, ended


def test_runs_queued_unaligned_pair_on_drain_as_the_values_would_one_by_one() -> None:
    gate, _ = lazy_aligner("b", "c")
    for source in ("b", "c"):
        push = gate.appender(source)
        for seq in range(1, 6):
            push(item(f"{source}{seq}", seq))
    assert gate.log and not gate.sets
    run = gate.pairs()  # (the caller drains first: FanIn does)
    assert run is None
    gate.drain()
    run = gate.pairs()
    assert run is not None and run.names == ("b", "c")
    assert [values(gate.pop()) for _ in range(5)] == [
        {"b": f"b{seq}", "c": f"c{seq}"} for seq in range(1, 6)
    ]
    assert not gate.sets and gate.counts == {"b": 0, "c": 0}


def random_runs(rng: random.Random, source: str) -> list[list[tuple[Any, ...]]]:
    """A source's values in runs, as a link would bring them: ids in order within an epoch
    of `pipeline_a` (gaps: filtered out for good), a restart's new epoch, markers, now and
    then a value of two origin pipelines or of none of the aligned one."""
    runs: list[list[tuple[Any, ...]]] = []
    epoch, seq = 7, 0
    for _ in range(rng.randrange(3, 12)):
        run: list[tuple[Any, ...]] = []
        for _ in range(rng.randrange(1, 9)):
            roll = rng.random()
            if roll < 0.03:
                epoch, seq = epoch + 1, 0  # the origin pipeline restarted
            seq += 1 if rng.random() < 0.95 else rng.randrange(2, 4)
            value = SKIP if rng.random() < 0.1 else f"{source}{epoch}.{seq}"
            origin: tuple[Any, ...] = (("pipeline_a", epoch), seq)
            if roll > 0.97:
                origin += (("pipeline_x", 1), seq)
            elif 0.95 < roll <= 0.97:
                origin = (("pipeline_x", 1), seq)
            run.append((seq, value, origin, 0))
        runs.append(run)
    return runs


def consecutive(run: list[tuple[Any, ...]]) -> bool:
    """Whether a run's values have consecutive ids of one stream (and link seqs)."""
    origins = [value[2] for value in run]
    return all(len(o) == 2 and o[0] == origins[0][0] for o in origins) and [
        o[1] for o in origins
    ] == list(range(origins[0][1], origins[0][1] + len(run)))


def random_events(rng: random.Random) -> list[tuple[str, Any]]:
    """Runs of b and c in a random interleaving, looks at the gate, now and then an end."""
    plan = {name: random_runs(rng, name) for name in ("b", "c")}
    events: list[tuple[str, Any]] = []
    while plan["b"] or plan["c"]:
        name = rng.choice([n for n in ("b", "c") if plan[n]])
        events.append(("run", (name, plan[name].pop(0))))
        if rng.random() < 0.3:
            events.append(("look", None))
        if rng.random() < 0.05:  # a source ends its stream: what it sent is still aligned
            events.append(("end", name))
            plan[name] = []
    events.append(("look", None))
    return events


def queue_lazily(gate: Aligner, name: str, run: list[tuple[Any, ...]], spans: bool) -> None:
    """Queue a run as the inbox does: a batch of new values as one Span, else item by item."""
    if spans and consecutive(run):
        stream = run[0][2][0]
        values = [value[1] for value in run]
        gate.push_span(name, Span(run[0][0], values, stream, run[0][2][1], 0))
    else:
        push = gate.appender(name)
        for value in run:
            push(value)


@pytest.mark.parametrize("spans", [False, True])
def test_lazy_runs_release_the_same_sets_as_aligning_each_value(spans: bool) -> None:
    for seed in range(300):  # one test, not 300: each case takes microseconds
        lazy_matches_eager(seed, spans)


def lazy_matches_eager(seed: int, spans: bool) -> None:
    eager, eager_ended = aligner("b", "c")
    lazy, lazy_ended = lazy_aligner("b", "c")
    got: dict[str, list[Any]] = {"eager": [], "lazy": []}
    for kind, what in random_events(random.Random(seed)):
        if kind == "run":
            name, run = what
            for value in run:
                eager.align(name, value)
            queue_lazily(lazy, name, run, spans)
        elif kind == "end" and what not in eager_ended:
            lazy.drain()
            for gate, ended in ((eager, eager_ended), (lazy, lazy_ended)):
                ended.add(what)
                gate.sweep(what)
        lazy.drain()
        for label, gate in (("eager", eager), ("lazy", lazy)):
            while gate.sets:
                head = gate.sets[0]
                if isinstance(head, PairRun) and not head.marked:  # (a join burst's tight loop)
                    assert not any(v is SKIP for v in head.ones + head.twos), f"seed {seed}"
                got[label].append(gate.pop())
        assert got["lazy"] == got["eager"], f"seed {seed}"
        assert lazy.unpaired == eager.unpaired and lazy.counts == eager.counts, f"seed {seed}"
        assert lazy.exhausted() == eager.exhausted(), f"seed {seed}"
