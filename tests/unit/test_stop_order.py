"""The order of a graceful stop: a pipeline is told to stop once the stopping pipelines that
send to it have drained into it and exited (porch.supervisor.ready_to_stop)."""

from __future__ import annotations

import pytest

from porch.supervisor import ready_to_stop

pytestmark = pytest.mark.timeout(30)

CHAIN = {"src": ("mid",), "mid": ("sink",), "sink": ()}


def test_a_chain_stops_from_its_source_down_one_stage_at_a_time() -> None:
    everyone = ["src", "mid", "sink"]
    assert ready_to_stop(everyone, everyone, CHAIN) == ["src"]
    assert ready_to_stop(["mid", "sink"], ["mid", "sink"], CHAIN) == ["mid"]  # src exited
    assert ready_to_stop(["sink"], ["sink"], CHAIN) == ["sink"]


def test_a_target_whose_source_keeps_running_stops_at_once() -> None:
    # porchctl stop sink (or restart mid): its live source replays what it did not acknowledge
    assert ready_to_stop(["sink"], ["sink"], CHAIN) == ["sink"]
    assert ready_to_stop(["mid"], ["mid"], CHAIN) == ["mid"]


def test_a_target_waits_for_a_stopping_source_that_was_signalled_already() -> None:
    assert ready_to_stop(["sink"], ["mid", "sink"], CHAIN) == []


def test_a_cycle_of_waiting_pipelines_stops_all_at_once() -> None:
    loop = {"feed": ("a",), "a": ("b",), "b": ("a",)}
    assert ready_to_stop(["feed", "a", "b"], ["feed", "a", "b"], loop) == ["feed"]
    assert ready_to_stop(["a", "b"], ["a", "b"], loop) == ["a", "b"]  # feed exited


def test_replicas_stop_after_their_sources_and_before_their_targets_together() -> None:
    # process names: the replicas of mid are mid#abc123-K; targets name pipelines
    mids = ["mid#abc123-0", "mid#abc123-1"]
    targets = {"src": ("mid",), mids[0]: ("sink",), mids[1]: ("sink",), "sink": ()}
    everyone = ["src", *mids, "sink"]
    assert ready_to_stop(everyone, everyone, targets) == ["src"]
    assert ready_to_stop([*mids, "sink"], [*mids, "sink"], targets) == mids  # src exited
    assert ready_to_stop(["sink"], ["sink", mids[1]], targets) == []  # one replica drains
    assert ready_to_stop(["sink"], ["sink"], targets) == ["sink"]
