"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from porch.testing import _isolated


@pytest.fixture
def clean_process_state() -> Iterator[None]:
    """For tests that run a worker in this process: ScriptHost.load() puts script folders on
    sys.path and porch.stop() leaves a request; both are put back afterwards."""
    with _isolated():
        yield
