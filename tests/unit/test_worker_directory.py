"""What a worker reads from the directory about its sources and targets (no sockets)."""

from __future__ import annotations

import pytest

from porch.directory import decode_directory
from workers.worker import missing_target, named_sources

pytestmark = pytest.mark.timeout(10)


def test_named_sources_are_the_entries_that_target_us() -> None:
    pipelines = decode_directory({"pipelines": {
        "a": {"state": "finished", "targets": ["sink", "other"]},
        "b": {"state": "running", "targets": ["other"]},
        "remote": {"state": "running"},  # remote entries carry no targets
        "odd": "not an entry",
        "c": {"state": "failed", "targets": ["sink"]},
    }}).pipelines  # fmt: skip

    assert named_sources(pipelines, "sink") == ["a", "c"]
    assert named_sources(pipelines, "nobody") == []


def test_a_misspelled_target_gets_the_closest_known_name_and_what_is_held() -> None:
    text, close = missing_target("snik", 20, 20, {"sink": "running", "source": "running"})

    assert close == "sink"
    assert text == "target 'snik' not found; 20 held (queue_limit 20); did you mean 'sink'?"


def test_a_target_far_from_every_known_name_gets_no_suggestion() -> None:
    text, close = missing_target("zzz", 0, 1000, {"sink": "running"})

    assert close == ""
    assert text == "target 'zzz' not found; 0 held (queue_limit 1000)"


def test_a_listed_target_without_an_endpoint_is_not_a_misspelling_of_itself() -> None:
    text, close = missing_target("sink", 5, 5, {"sink": "stopped", "sinks": "running"})

    assert close == ""
    assert text == "target 'sink' is stopped, no endpoint yet; 5 held (queue_limit 5)"
