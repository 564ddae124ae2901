"""Replicas under the supervisor with real processes: `porch run` starts one worker process per
replica, each under its own process name NAME#TAG-K, and ends when every one of them ended.
(The delivery tests through replicated stages are tests/integration/test_replicas.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import PorchRun
from tests.integration.test_run import pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Start = Callable[..., PorchRun]

COUNTER = """
    import os
    import porch
    n = 0
    def step():
        global n
        n += 1
        print("pid", os.getpid(), "value", n)
        if n == 3:
            porch.stop()
        return n
"""


def test_porch_run_starts_one_process_per_replica_and_ends_when_all_ended(
    tmp_path: Path, run_porch: Start
) -> None:
    config = pipeline(tmp_path, "gen", COUNTER, replicas=2)
    run = run_porch("run", config)
    assert run.wait_exit(30) == 0, run.report()
    prefixes = {line.split(" | ")[0] for line in run.stdout if " | " in line}
    assert len(prefixes) == 2, run.report()
    assert all(re.fullmatch(r"gen#[0-9a-f]{6}-[01]", p) for p in prefixes), prefixes
    tags = {p.split("#")[1].split("-")[0] for p in prefixes}
    assert len(tags) == 1  # one supervisor: one TAG
    pids = {run.lines_of(p)[0].split()[1] for p in prefixes}
    assert len(pids) == 2  # two processes
    for prefix in prefixes:
        assert [line.split()[-1] for line in run.lines_of(prefix)] == ["1", "2", "3"]
    stderr = "\n".join(run.stderr)
    assert "source pipeline" in stderr  # each replica of a source runs its own stream
    assert stderr.count("finished") >= 2, run.report()
