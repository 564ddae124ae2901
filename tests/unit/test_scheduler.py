"""Fan-in: per-source queues behind a wait-for-all gate, FIFO or aligned by origin."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch.stream import SKIP
from workers.scheduler import FanIn, Pairing, TooManySources

pytestmark = pytest.mark.timeout(30)

A = ("pipeline_a", 7)  # an origin stream: pipeline a's values, epoch 7


class Gate:
    """A FanIn fed plain values (as items without an origin) and read back as values."""

    def __init__(self, fan_in: FanIn) -> None:
        self.fan_in = fan_in

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fan_in, name)

    def push(self, source: str, value: Any, origin: tuple[Any, ...] = ()) -> None:
        self.fan_in.push(source, (0, value, origin, 0))

    def pop(self) -> dict[str, Any]:
        return {name: item[1] for name, item in self.fan_in.pop().items()}


def connected(*sources: str, expected: int | None = None) -> Gate:
    fan_in = FanIn(len(sources) if expected is None else expected)
    for source in sources:
        fan_in.connect(source)
    return Gate(fan_in)


def test_gate_waits_for_every_expected_source_to_connect() -> None:
    fan_in = Gate(FanIn(2))
    fan_in.connect("pipeline_a")
    fan_in.push("pipeline_a", 1)

    assert not fan_in.all_connected()
    assert not fan_in.ready()

    fan_in.connect("pipeline_b")
    assert fan_in.all_connected()
    assert not fan_in.ready()

    fan_in.push("pipeline_b", 2)
    assert fan_in.ready()


def test_gate_waits_for_a_value_from_every_source() -> None:
    fan_in = connected("pipeline_a", "pipeline_b", "pipeline_c")
    fan_in.push("pipeline_a", 1)
    fan_in.push("pipeline_a", 2)
    fan_in.push("pipeline_b", 3)

    assert not fan_in.ready()
    fan_in.push("pipeline_c", 4)
    assert fan_in.ready()


def test_pop_returns_one_value_per_source_keyed_by_name() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    fan_in.push("pipeline_b", "from b")
    fan_in.push("pipeline_a", "from a")

    assert fan_in.pop() == {"pipeline_a": "from a", "pipeline_b": "from b"}
    assert not fan_in.ready()


def test_single_source_still_pops_a_dict() -> None:
    fan_in = connected("pipeline_a")
    fan_in.push("pipeline_a", None)

    assert fan_in.pop() == {"pipeline_a": None}


def test_values_are_fifo_per_source() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    for i in range(3):
        fan_in.push("pipeline_a", f"a{i}")
    for i in range(3):
        fan_in.push("pipeline_b", f"b{i}")

    sets = [fan_in.pop() for _ in range(3)]

    assert sets == [{"pipeline_a": f"a{i}", "pipeline_b": f"b{i}"} for i in range(3)]
    assert not fan_in.ready()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["src_a", "src_b"]), st.integers()), max_size=30))
def test_fifo_order_holds_for_any_interleaving(pushes: list[tuple[str, int]]) -> None:
    fan_in = connected("src_a", "src_b")
    for source, value in pushes:
        fan_in.push(source, value)

    popped = []
    while fan_in.ready():
        popped.append(fan_in.pop())

    a_values = [v for s, v in pushes if s == "src_a"]
    b_values = [v for s, v in pushes if s == "src_b"]
    n = min(len(a_values), len(b_values))
    assert popped == [{"src_a": a_values[i], "src_b": b_values[i]} for i in range(n)]
    assert fan_in.depth() == len(pushes) - 2 * n


def test_more_sources_than_expected_raise_too_many_sources() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")

    with pytest.raises(TooManySources, match="pipeline_c"):
        fan_in.connect("pipeline_c")

    assert fan_in.sources == ["pipeline_a", "pipeline_b"]


def test_connect_is_idempotent() -> None:
    fan_in = Gate(FanIn(1))
    fan_in.connect("pipeline_a")
    fan_in.push("pipeline_a", 1)
    fan_in.connect("pipeline_a")

    assert fan_in.sources == ["pipeline_a"]
    assert "pipeline_a" in fan_in.fan_in
    assert fan_in.pop() == {"pipeline_a": 1}


def test_depth_counts_queued_values_across_sources() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    assert fan_in.depth() == 0

    fan_in.push("pipeline_a", 1)
    fan_in.push("pipeline_a", 2)
    fan_in.push("pipeline_b", 3)
    assert fan_in.depth() == 3

    fan_in.pop()
    assert fan_in.depth() == 1


def test_not_exhausted_while_an_ended_source_still_has_queued_values() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    fan_in.push("pipeline_a", "a0")
    fan_in.push("pipeline_a", "a1")
    fan_in.end("pipeline_a")

    assert not fan_in.exhausted()

    fan_in.push("pipeline_b", "b0")
    assert fan_in.pop() == {"pipeline_a": "a0", "pipeline_b": "b0"}
    assert not fan_in.exhausted()

    fan_in.push("pipeline_b", "b1")
    assert fan_in.pop() == {"pipeline_a": "a1", "pipeline_b": "b1"}
    assert fan_in.exhausted()


def test_ended_source_with_empty_queue_is_exhausted_even_if_others_have_data() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    fan_in.push("pipeline_b", 1)
    fan_in.end("pipeline_a")

    assert fan_in.exhausted()
    assert not fan_in.ready()


def test_not_exhausted_without_any_ended_source() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    assert not fan_in.exhausted()


def test_end_of_unknown_source_is_ignored() -> None:
    fan_in = connected("pipeline_a")
    fan_in.end("stranger")
    assert not fan_in.exhausted()


def test_restarted_source_connecting_again_clears_its_end() -> None:
    fan_in = connected("pipeline_a", "pipeline_b")
    fan_in.end("pipeline_a")
    assert fan_in.exhausted()

    fan_in.connect("pipeline_a")

    assert not fan_in.exhausted()
    fan_in.push("pipeline_a", 1)
    fan_in.push("pipeline_b", 2)
    assert fan_in.pop() == {"pipeline_a": 1, "pipeline_b": 2}


# ---- aligned by origin (a diamond) -----------------------------------------------------------


def diamond() -> Gate:
    return connected("b", "c")


def test_values_of_the_same_source_iteration_pair_whatever_order_they_arrive_in() -> None:
    gate = diamond()
    for k in (1, 2, 3):
        gate.push("b", f"b{k}", (A, k))
    gate.push("c", "c2", (A, 2))  # c lost its first value (e.g. a restart)

    assert gate.pairing is Pairing.ALIGNED
    assert gate.pop() == {"b": "b1", "c": SKIP}  # c passed 1: b1 can never pair
    assert gate.pop() == {"b": "b2", "c": "c2"}
    assert not gate.ready()
    gate.push("c", "c3", (A, 3))
    assert gate.pop() == {"b": "b3", "c": "c3"}
    assert gate.unpaired == 1  # b1


def test_a_duplicate_on_one_side_never_shifts_the_pairs() -> None:
    gate = diamond()
    gate.push("b", "b1", (A, 1))
    gate.push("c", "c1", (A, 1))
    gate.push("c", "c2", (A, 2))
    gate.push("c", "c2 again", (A, 2))  # a replayed value that got past dedup: alone
    gate.push("b", "b2", (A, 2))
    sets = [gate.pop() for _ in range(3)]

    assert {"b": "b1", "c": "c1"} in sets
    assert {"b": "b2", "c": "c2"} in sets
    assert {"b": SKIP, "c": "c2 again"} in sets


def test_a_skip_marker_drops_its_partner_at_once() -> None:
    gate = diamond()
    gate.push("b", "b1", (A, 1))
    gate.push("c", "c1", (A, 1))
    gate.pop()
    gate.push("c", "c2", (A, 2))
    assert not gate.ready()
    gate.push("b", SKIP, (A, 2))  # b filtered out iteration 2

    assert gate.pop() == {"b": SKIP, "c": "c2"}
    assert not gate.ready()


def test_a_later_epoch_passes_every_value_of_the_earlier_one() -> None:
    gate = diamond()
    gate.push("b", "b1", (A, 1))
    gate.push("c", "c1", (A, 1))
    gate.pop()
    gate.push("c", "c2", (A, 2))
    restarted = ("pipeline_a", 8)  # a restarted with a memory outbox: a new epoch
    gate.push("b", "b new 1", (restarted, 1))

    assert gate.pop() == {"b": SKIP, "c": "c2"}
    gate.push("c", "c new 1", (restarted, 1))
    assert gate.pop() == {"b": "b new 1", "c": "c new 1"}


def test_an_ended_source_releases_the_values_waiting_for_it() -> None:
    gate = diamond()
    gate.push("b", "b1", (A, 1))
    gate.push("c", "c1", (A, 1))
    gate.pop()
    gate.push("c", "c2", (A, 2))
    gate.end("b")

    assert gate.pop() == {"b": SKIP, "c": "c2"}
    assert gate.exhausted()


def test_a_source_that_ended_before_the_gate_decided_still_pairs_its_first_value() -> None:
    """c sends everything and ends before b's first value arrives (b is slower): when the
    gate decides, c's queued values are its partners, not values c has passed."""
    gate = diamond()
    for k in (1, 2, 3):
        gate.push("c", f"c{k}", (A, k))
    gate.end("c")
    gate.push("b", "b1", (A, 1))

    assert gate.pairing is Pairing.ALIGNED
    assert gate.pop() == {"b": "b1", "c": "c1"}
    gate.push("b", "b2", (A, 2))
    gate.push("b", "b3", (A, 3))
    assert [gate.pop() for _ in range(2)] == [{"b": "b2", "c": "c2"}, {"b": "b3", "c": "c3"}]
    assert gate.unpaired == 0


def test_sources_without_a_common_origin_pair_fifo() -> None:
    gate = diamond()
    gate.push("b", "x1", (("x", 1), 5))
    gate.push("c", "y1", (("y", 1), 9))

    assert gate.pairing is Pairing.FIFO
    assert gate.pop() == {"b": "x1", "c": "y1"}


def test_fifo_marker_leaves_alone() -> None:
    gate = diamond()
    gate.push("b", "x1", (("x", 1), 5))
    gate.push("c", "y1", (("y", 1), 9))
    gate.pop()
    gate.push("b", SKIP, (("x", 1), 6))

    assert gate.ready()
    assert gate.pop() == {"b": SKIP}


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False), st.sets(st.integers(1, 40)), st.sets(st.integers(1, 40)))
def test_aligned_sets_pair_one_iteration_for_any_interleaving(
    rng: random.Random, b_has: set[int], c_has: set[int]
) -> None:
    """b and c each send some of 1..40 in order (the rest filtered: a marker, or lost: nothing),
    interleaved at random: every set holds one iteration, and each value leaves exactly once."""
    b_sends = [(k, f"b{k}" if k in b_has else SKIP) for k in range(1, 41) if k % 7]
    c_sends = [(k, f"c{k}" if k in c_has else SKIP) for k in range(1, 41) if k % 5]
    order = ["b"] * len(b_sends) + ["c"] * len(c_sends)
    rng.shuffle(order)
    gate = diamond()
    queues = {"b": list(b_sends), "c": list(c_sends)}
    sets = []
    for name in order:
        k, value = queues[name].pop(0)
        gate.push(name, value, (A, k))
        while gate.ready():
            sets.append(gate.pop())
    gate.end("b")
    gate.end("c")
    while gate.ready():
        sets.append(gate.pop())

    left = {"b": [], "c": []}  # type: dict[str, list[str]]
    for found in sets:
        values = [v for v in found.values() if v is not SKIP]
        assert len({v[1:] for v in values}) <= 1, found  # never two iterations in one set
        for name, value in found.items():
            if value is not SKIP:
                left[name].append(value)
        if all(v is not SKIP for v in found.values()):
            assert found == {"b": found["b"], "c": "c" + found["b"][1:]}
    assert sorted(left["b"]) == sorted(v for _, v in b_sends if v is not SKIP)
    assert sorted(left["c"]) == sorted(v for _, v in c_sends if v is not SKIP)
    assert gate.depth() == 0


def test_unpaired_counts_the_values_dropped_for_want_of_a_partner() -> None:
    gate = diamond()
    gate.push("b", SKIP, (A, 1))  # b filtered out iteration 1: c1 goes
    gate.push("c", "c1", (A, 1))
    gate.push("b", SKIP, (A, 2))  # both filtered out iteration 2: nothing goes
    gate.push("c", SKIP, (A, 2))
    gate.push("b", "b3", (A, 3))
    gate.push("c", "c3", (A, 3))

    assert [gate.pop() for _ in range(3)] == [
        {"b": SKIP, "c": "c1"},
        {"b": SKIP, "c": SKIP},
        {"b": "b3", "c": "c3"},
    ]
    assert gate.unpaired == 1
