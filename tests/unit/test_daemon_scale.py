"""porchd's `scale` request (porch/daemon.py): what it says to a name that is not a
replicated pipeline's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from porch.config import PipelineConfig
from porch.daemon import Daemon
from porch.porchd_protocol import CommandError, ErrorCode

pytestmark = pytest.mark.timeout(10)


class Stub(SimpleNamespace):
    """The parts of a Daemon its scale request reads before it scales anything."""

    _unknown = Daemon._unknown


def scale(name: str, count: int = 2) -> CommandError:
    configs = {"hash": PipelineConfig(name="hash", scripts=(Path("h.py"),), replicas=2,
                                      replicated=True),
               "src": PipelineConfig(name="src", scripts=(Path("s.py"),))}  # fmt: skip
    daemon: Any = Stub(supervisor=SimpleNamespace(pipelines=configs))
    with pytest.raises(CommandError) as refused:
        Daemon._scale(daemon, {"name": name, "replicas": count})
    return refused.value


def test_a_replica_s_process_name_is_refused_naming_its_pipeline_and_the_command() -> None:
    refused = scale("hash#3f2a1c-0", 3)
    assert refused.code is ErrorCode.UNKNOWN_PIPELINE
    assert str(refused) == (
        "hash#3f2a1c-0 is one replica of the pipeline hash: scale the pipeline "
        "(`porchctl scale hash 3`)"
    )


def test_an_unknown_name_lists_the_known_ones() -> None:
    assert str(scale("nope")) == "no pipeline 'nope' (known: hash, src)"
