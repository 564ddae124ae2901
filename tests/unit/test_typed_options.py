"""Config options and directory states as enums: what the runtime compares are members."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from porch.config import (
    CHOICE_TYPES,
    CHOICES,
    Delivery,
    FanIn,
    OnError,
    Outbox,
    Overflow,
    PipelineConfig,
    SerializerName,
    check_config,
)
from porch.control import WorkerState, directory_state
from porch.discovery import ENDED_STATES, STATES
from porch.restart import RestartPolicy

pytestmark = pytest.mark.timeout(10)


def test_a_loaded_config_holds_members(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("def step(x):\n    return x\n")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "name": "pipe", "scripts": ["s.py"], "on_error": "dead-letter", "fan_in": "any",
        "overflow": "drop_oldest", "delivery": "at-most-once", "serializer": "json",
        "restart": "never",
    }))  # fmt: skip
    config, problems = check_config(path)
    assert config is not None, problems
    assert config.on_error is OnError.DEAD_LETTER
    assert config.fan_in is FanIn.ANY
    assert config.overflow is Overflow.DROP_OLDEST
    assert config.delivery is Delivery.AT_MOST_ONCE
    assert config.outbox is Outbox.MEMORY
    assert config.serializer is SerializerName.JSON
    assert config.restart is RestartPolicy.NEVER


def test_a_config_built_with_words_gets_members_and_stays_equal() -> None:
    config = PipelineConfig(name="pipe", scripts=(), on_error="skip", fan_in="any")  # type: ignore[arg-type]
    assert config.on_error is OnError.SKIP and config.fan_in is FanIn.ANY
    assert config == PipelineConfig(
        name="pipe", scripts=(), on_error=OnError.SKIP, fan_in=FanIn.ANY
    )
    assert str(config.on_error) == "skip"  # a StrEnum: still the word in text and JSON
    assert json.dumps(config.on_error) == '"skip"'


def test_a_word_outside_the_enum_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        PipelineConfig(name="pipe", scripts=(), outbox="disk")  # type: ignore[arg-type]


def test_the_allowed_words_are_the_enums_values_in_order() -> None:
    assert CHOICES["on_error"] == ("stop", "skip", "dead-letter")
    assert CHOICES["delivery"] == ("at-least-once", "at-most-once")
    assert set(CHOICES) == set(CHOICE_TYPES)


def test_directory_states_read_as_worker_states() -> None:
    assert directory_state("finished") is WorkerState.FINISHED
    assert directory_state("waiting for sources") is WorkerState.WAITING_FOR_SOURCES
    assert directory_state("withdrawn") is None
    assert directory_state(None) is None
    assert directory_state(["running"]) is None
    assert {state.value for state in WorkerState} == STATES
    assert {"finished", "stopped", "failed"} == ENDED_STATES
