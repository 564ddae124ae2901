"""Fan-in: per-source FIFO queues behind a wait-for-all gate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.scheduler import FanIn, TooManySources

pytestmark = pytest.mark.timeout(30)


def connected(*sources: str, expected: int | None = None) -> FanIn:
    fan_in = FanIn(len(sources) if expected is None else expected)
    for source in sources:
        fan_in.connect(source)
    return fan_in


def test_gate_waits_for_every_expected_source_to_connect() -> None:
    fan_in = FanIn(2)
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
    fan_in = FanIn(1)
    fan_in.connect("pipeline_a")
    fan_in.push("pipeline_a", 1)
    fan_in.connect("pipeline_a")

    assert fan_in.sources == ["pipeline_a"]
    assert "pipeline_a" in fan_in
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
