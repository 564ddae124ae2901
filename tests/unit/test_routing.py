"""partition_by routing of values held before the replicas were known (workers/routing.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from workers.links import OutputLink
from workers.routing import Router

pytestmark = pytest.mark.timeout(10)


def _broken_loads(payload: Sequence[Any]) -> Any:
    raise ValueError("truncated pickle")


def test_a_held_value_that_cannot_be_decoded_again_is_counted_and_said_not_silently_misrouted() -> (
    None
):
    router = Router(_broken_loads)
    member = cast(OutputLink, object())
    router.update([], [], "sensor")
    router.members = [member]  # one replica known (no real link needed: the key fails first)
    assert router.by_payload([b"\x80"]) is None  # credit decides ...
    assert router.keyless == 1  # ... counted
    assert "cannot be decoded or keyed again" in router.keyless_error  # ... and said once
    assert "truncated pickle" in router.keyless_error
    assert router.by_payload([b"\x80"]) is None
    assert router.keyless == 2
