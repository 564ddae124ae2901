"""Replica process names (porch/names.py) and the replica config fields (porch/config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from porch.config import check_config
from porch.names import (
    is_replica,
    name_problem,
    pipeline_of,
    process_name_problem,
    replica_index,
    replica_name,
    replica_tag,
)

pytestmark = pytest.mark.timeout(10)


def test_a_replica_name_carries_its_pipeline_tag_and_index() -> None:
    name = replica_name("hasher", "a1b2c3", 7)
    assert name == "hasher#a1b2c3-7"
    assert pipeline_of(name) == "hasher" and is_replica(name)
    assert replica_index(name) == 7 and replica_tag(name) == "a1b2c3"
    assert process_name_problem(name) is None
    assert pipeline_of("plain") == "plain" and not is_replica("plain")
    assert replica_index("plain") is None and replica_tag("plain") is None


def test_a_pipeline_name_may_not_use_the_replica_mark() -> None:
    why = name_problem("a#b")
    assert why is not None and "'#'" in why and "replica" in why
    assert process_name_problem("abc#zz-1") is not None  # not hex
    assert process_name_problem("abc#ab") is not None  # no index
    assert process_name_problem("ab#ab-1") is not None  # the pipeline part is too short


def _config(tmp_path: Path, **fields: object) -> Path:
    (tmp_path / "s.py").write_text("def step(x):\n    return x\n")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "stage", "scripts": ["s.py"], **fields}))
    return path


def test_replica_fields_are_read(tmp_path: Path) -> None:
    config, problems = check_config(_config(tmp_path, replicas=3, ordered=True,
                                            partition_by="user",
                                            target_pipeline_names=["next"]))  # fmt: skip
    assert problems == [] and config is not None
    assert (config.replicas, config.replicated, config.ordered, config.partition_by) == (
        3, True, True, "user"
    )  # fmt: skip
    assert config.pipeline == "stage" and config.replica_of is None
    plain, _ = check_config(_config(tmp_path))
    assert plain is not None and (plain.replicas, plain.replicated) == (1, False)


@pytest.mark.parametrize(
    ("fields", "fld", "words"),
    [
        ({"replicas": 0}, "replicas", "from 1 to 64"),
        ({"replicas": 65}, "replicas", "from 1 to 64"),
        ({"replicas": True}, "replicas", "whole number"),
        ({"ordered": "yes"}, "ordered", "true or false"),
        ({"replicas": 2, "partition_by": ""}, "partition_by", "empty"),
        ({"replicas": 2, "partition_by": 3}, "partition_by", "name of a field"),
        ({"replicas": 2, "ordered": True, "fan_in": "any"}, "ordered", "fan_in"),
    ],
)
def test_bad_replica_fields_name_the_field_and_the_fix(
    tmp_path: Path, fields: dict[str, object], fld: str, words: str
) -> None:
    config, problems = check_config(_config(tmp_path, **fields))
    assert config is None
    assert any(p.field == fld and words in p.message for p in problems), problems


def test_a_target_naming_one_replica_is_told_to_name_its_pipeline(tmp_path: Path) -> None:
    """Replicas' process names (NAME#TAG-K, as status lists them) are no targets: a value goes
    to the pipeline, and the senders pick the replica."""
    config, problems = check_config(_config(tmp_path, target_pipeline_names=["hasher#3f2a1c-0"]))
    assert config is None
    assert [(p.field, p.message) for p in problems] == [
        ("target_pipeline_names[0]", "'hasher#3f2a1c-0' is one replica of the pipeline "
         "'hasher': name the pipeline (its senders pick a replica for each value)"),
    ]  # fmt: skip


def test_ordered_without_targets_is_a_warning(tmp_path: Path) -> None:
    """`ordered` orders what the pipeline's targets receive: a last stage has none."""
    config, problems = check_config(_config(tmp_path, replicas=2, ordered=True))
    assert config is not None
    assert [p.field for p in problems] == ["ordered"] and "target" in problems[0].message


def test_ordered_without_replicas_is_a_warning(tmp_path: Path) -> None:
    config, problems = check_config(_config(tmp_path, ordered=True))
    assert config is not None
    assert [p.field for p in problems] == ["ordered"] and "replicas" in problems[0].message


def test_a_replicated_pipeline_counts_once_as_a_source_and_a_replicated_source_warns() -> None:
    from porch.config import PipelineConfig, check_graph
    from porch.names import supervisor_tag

    def make(name: str, targets: tuple[str, ...] = (), sources: int = 0, replicas: int = 1
             ) -> PipelineConfig:  # fmt: skip
        return PipelineConfig(name=name, scripts=(), target_pipeline_names=targets,
                              source_pipeline_count=sources, replicas=replicas,
                              replicated=replicas > 1, path=Path(f"/c/{name}.json"))  # fmt: skip

    graph = [make("src", ("hash",)), make("hash", ("sink",), 1, 4), make("sink", (), 1)]
    assert check_graph(graph) == []
    [problem] = check_graph([make("src", ("sink",), 0, 3), make("sink", (), 1)])
    assert (problem.field, problem.file) == ("replicas", "/c/src.json")
    assert "source pipeline" in problem.message and "3 times" in problem.message
    # the TAG of a supervisor's replicas: its origin's first hex digits
    assert supervisor_tag("run-0123456789abcdef") == "012345"
    assert supervisor_tag("fedcba9876543210fedcba9876543210") == "fedcba"
    made = supervisor_tag("")  # no origin: random, still a valid tag
    assert process_name_problem(replica_name("stage", made, 0)) is None
