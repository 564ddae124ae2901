"""What a worker reads from the directory about its sources and targets (no sockets)."""

from __future__ import annotations

import pytest

from porch.directory import decode_directory
from workers.worker import named_sources

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
