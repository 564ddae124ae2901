"""A replica acknowledges an input only once its outputs are acknowledged (workers/deferred.py),
real processes: src -> work (replicas 2) -> rec under `porch run`, with rec held by SIGSTOP so
that the replicas' outputs pile up in their memory outboxes; kill -9 of the replica that
processed the most, then SIGCONT: every value still reaches rec (its inputs were not
acknowledged, so src hands them on). Before, the killed replica's outboxed values were lost.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import PorchRun
from tests.integration.test_reliability import gone, wait_for, write_pipeline

pytestmark = [pytest.mark.integration]

StartPorch = Callable[..., PorchRun]

N = 300
PAYLOAD = 16_000  # bytes a value carries: 300 of them are far more than a socket buffers
STEP_S = 20.0

GATED_SOURCE = """
    import os
    import time
    import porch

    n = 0

    def step():
        global n
        if not os.path.exists({go!r}):
            time.sleep(0.02)
            return porch.SKIP
        n += 1
        if n == {n}:
            porch.stop()
        return (n, b"x" * {payload})
"""

# Each replica says it started (its pid) and which value it processed ("VALUE PID").
STAGE = """
    import os

    with open({pids!r}, "a", encoding="utf-8") as f:
        f.write(f"{{os.getpid()}}\\n")
    done = open({done!r}, "a", encoding="utf-8")

    def step(input_data):
        value = input_data["acks_src"]
        done.write(f"{{value[0]}} {{os.getpid()}}\\n")
        done.flush()
        return value
"""

SINK = """
    import os

    with open({pid!r}, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))

    def step(input_data):
        print(input_data["acks_work"][0])
"""


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


@pytest.mark.timeout(60)
def test_kill_9_of_a_replica_holding_acknowledged_output_loses_nothing(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    folder = tmp_path / "cfg"
    go, pids, done, sink_pid = (tmp_path / name for name in ("go", "pids", "done", "sink.pid"))
    limits = {"restart_backoff_s": 0, "heartbeat_timeout_s": 60}
    configs = [
        write_pipeline(folder, "acks_src", GATED_SOURCE.format(go=str(go), n=N, payload=PAYLOAD),
                       targets=("acks_work",), **limits),
        write_pipeline(folder, "acks_work", STAGE.format(pids=str(pids), done=str(done)), 1,
                       ("acks_rec",), replicas=2, **limits),
        write_pipeline(folder, "acks_rec", SINK.format(pid=str(sink_pid)), 1, **limits),
    ]  # fmt: skip
    run = run_porch("run", *map(str, configs))
    run.wait_until(lambda: len(read_lines(pids)) == 2 and sink_pid.exists(), STEP_S, "started")
    receiver = int(sink_pid.read_text(encoding="utf-8"))
    os.kill(receiver, signal.SIGSTOP)  # rec takes nothing: the replicas' output stays with them
    try:
        go.touch()
        run.wait_until(lambda: len({ln.split()[0] for ln in read_lines(done)}) == N, STEP_S,
                       f"the replicas processed all {N} values")  # fmt: skip
        by_pid: dict[int, int] = {}
        for line in read_lines(done):
            pid = int(line.split()[1])
            by_pid[pid] = by_pid.get(pid, 0) + 1
        victim = max(by_pid, key=by_pid.__getitem__)
        print(f"values processed by replica pid: {by_pid}; kill -9 {victim}")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: gone(victim), STEP_S, f"pid {victim} dead")
    finally:
        os.kill(receiver, signal.SIGCONT)

    # the run ends (exit 1: porch run does not restart a replica killed with SIGKILL, it says
    # it failed); what it held went to the other replica
    assert run.wait_exit(40.0) == 1, run.report()
    got = {int(line) for line in run.lines_of("acks_rec")}
    missing = sorted(set(range(1, N + 1)) - got)
    assert not missing, f"{len(missing)} values lost, first {missing[:20]}\n{run.report()}"
    assert "killed by SIGKILL" in run.report()
