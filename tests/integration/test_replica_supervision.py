"""Replicas under the supervisor with real processes: `porch run` starts one worker process per
replica, each under its own process name NAME#TAG-K, and ends when every one of them ended.
(The delivery tests through replicated stages are tests/integration/test_replicas.py.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_porchd import ticker
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
    config = pipeline(tmp_path, "replicated_gen", COUNTER, replicas=2)
    run = run_porch("run", config)
    assert run.wait_exit(30) == 0, run.report()
    prefixes = {line.split(" | ")[0] for line in run.stdout if " | " in line}
    assert len(prefixes) == 2, run.report()
    assert all(re.fullmatch(r"replicated_gen#[0-9a-f]{6}-[01]", p) for p in prefixes), prefixes
    tags = {p.split("#")[1].split("-")[0] for p in prefixes}
    assert len(tags) == 1  # one supervisor: one TAG
    pids = {run.lines_of(p)[0].split()[1] for p in prefixes}
    assert len(pids) == 2  # two processes
    for prefix in prefixes:
        assert [line.split()[-1] for line in run.lines_of(prefix)] == ["1", "2", "3"]
    stderr = "\n".join(run.stderr)
    assert "source pipeline" in stderr  # each replica of a source runs its own stream
    assert stderr.count("finished") >= 2, run.report()


def replicas(daemon: Porchd, name: str) -> dict[str, tuple[str, int | None]]:
    """The replicas porchd lists under pipeline `name`: process name -> (state, pid)."""
    [pipeline] = [p for p in daemon.status()["pipelines"] if p["name"] == name]
    return {r["name"]: (r["state"], r.get("pid")) for r in pipeline.get("replicas", [])}


def running(daemon: Porchd, name: str, indexes: set[int]) -> dict[str, int | None] | None:
    """The replicas' pids once exactly `indexes` are listed and all running, else None."""
    listed = replicas(daemon, name)
    if {int(n.rsplit("-", 1)[1]) for n in listed} != indexes:
        return None
    if any(state != "running" for state, _ in listed.values()):
        return None
    return {n: pid for n, (_, pid) in listed.items()}


def test_porchctl_scales_stops_starts_and_reloads_every_replica_of_a_pipeline(
    tmp_path: Path, porchd: Callable[..., Porchd]
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    name = "scaled_work"  # names no other test uses: porchd's discovery sees other runs
    config = ticker(folder, name, replicas=2, restart_backoff_s=0)
    ticker(folder, "scaled_plain")
    daemon = porchd(folder)
    daemon.wait_running("scaled_plain")  # porchd answers

    def up(*indexes: int) -> dict[str, int | None]:
        found = daemon.wait_until(lambda: running(daemon, name, set(indexes)), 30, f"{indexes}")
        return dict(found)

    first = min(up(0, 1))
    tag = first.split("#")[1].split("-")[0]

    def proc(k: int) -> str:
        return f"{name}#{tag}-{k}"

    done = daemon.ctl("scale", name, "3")
    assert done.returncode == 0 and f"started: {proc(2)}" in done.stdout, done.stderr
    pids = up(0, 1, 2)

    done = daemon.ctl("scale", name, "1")  # the highest stop gracefully, then leave
    assert done.returncode == 0 and f"stopping: {proc(2)}, {proc(1)}" in done.stdout
    assert up(0) == {proc(0): pids[proc(0)]}  # never restarted
    assert f"{name} end ran" in daemon.output(proc(2))  # stopped gracefully; its own log

    assert daemon.ctl("stop", name).returncode == 0  # every replica
    daemon.wait_until(lambda: {s for s, _ in replicas(daemon, name).values()} == {"stopped"},
                      30, "stopped")  # fmt: skip
    assert daemon.ctl("start", name).returncode == 0
    before = up(0)

    assert "unchanged: scaled_plain, scaled_work" in daemon.ctl("reload").stdout  # count stays
    config.write_text(json.dumps({**json.loads(config.read_text()), "replicas": 3}))
    done = daemon.ctl("reload")
    assert done.returncode == 0 and f"scaled: {name}" in done.stdout, done.stdout + done.stderr
    assert up(0, 1, 2)[proc(0)] == before[proc(0)]  # the replica that stays keeps running

    refused = daemon.ctl("scale", "scaled_plain", "2")
    assert refused.returncode == 1 and '"replicas"' in refused.stderr
    logs = daemon.ctl("logs", name)
    assert logs.returncode == 1 and proc(1) in logs.stderr
    assert daemon.ctl("logs", proc(1)).returncode == 0
