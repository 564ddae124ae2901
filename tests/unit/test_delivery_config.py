"""Config fields of delivery: which outbox x delivery x overflow combinations validate, and
finish_timeout_s (what `porch validate` says about them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from porch.config import load_config
from tests.unit.test_config import dporch, only_problem, write_config, write_script

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_script(tmp_path, "step.py")
    return tmp_path


def test_durable_outbox_with_at_most_once_is_rejected_naming_both_fixes(folder: Path) -> None:
    path = write_config(folder, dporch(outbox="durable", delivery="at-most-once"))

    line = only_problem(path)

    assert line.startswith(f"{path}: outbox: ")
    assert 'outbox "memory"' in line and 'delivery "at-least-once"' in line


@pytest.mark.parametrize("overflow", ["block", "drop_oldest"])
@pytest.mark.parametrize(
    ("outbox", "delivery"),
    [("memory", "at-least-once"), ("memory", "at-most-once"), ("durable", "at-least-once")],
)
def test_every_other_delivery_combination_is_accepted(
    folder: Path, outbox: str, delivery: str, overflow: str
) -> None:
    path = write_config(folder, dporch(outbox=outbox, delivery=delivery, overflow=overflow))

    config = load_config(path)

    assert (config.outbox, config.delivery, config.overflow) == (outbox, delivery, overflow)


def test_finish_timeout_defaults_to_ten_minutes_and_must_be_positive(folder: Path) -> None:
    assert load_config(write_config(folder, dporch())).finish_timeout_s == 600.0
    assert load_config(write_config(folder, dporch(finish_timeout_s=2))).finish_timeout_s == 2.0

    line = only_problem(write_config(folder, dporch(finish_timeout_s=0)))

    assert "finish_timeout_s: must be from 0.1 to " in line


def test_restart_backoff_defaults_to_half_a_second_from_zero_to_thirty(folder: Path) -> None:
    assert load_config(write_config(folder, dporch())).restart_backoff_s == 0.5
    assert load_config(write_config(folder, dporch(restart_backoff_s=0))).restart_backoff_s == 0.0

    line = only_problem(write_config(folder, dporch(restart_backoff_s=31)))

    assert "restart_backoff_s: must be from 0 to 30" in line
