"""A replica acknowledges an input only once its outputs are acknowledged (workers/deferred.py),
real processes: src -> work (replicas 2) -> rec under `porch run`, with rec held by SIGSTOP so
that the replicas' outputs pile up in their memory outboxes; kill -9 of the replica that
processed the most, then SIGCONT: every value still reaches rec (its inputs were not
acknowledged, so src hands them on). Before, the killed replica's outboxed values were lost.

And a replica that crashes on one message every time still gets that message dead-lettered by
its sender, not one it processed before whose output was not acknowledged yet (a replica
starting up takes one input at a time, each once the one before is acknowledged).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_reliability import (
    COUNTER_SOURCE,
    Record,
    gone,
    wait_for,
    write_pipeline,
)

pytestmark = [pytest.mark.integration]

StartPorch = Callable[..., PorchRun]
StartDaemon = Callable[..., Porchd]

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


CRASHING_RELAY = """
    import os

    def step(input_data):
        value = input_data["dl_numbers"]
        if value == 13:
            os._exit(1)  # a crash, not an exception: no on_error policy can see it
        return value
"""

RECORDER = """
    out = open({path!r}, "a", encoding="utf-8")

    def step(input_data):
        out.write(f"{{input_data['dl_relay']}}\\n")
        out.flush()
"""


@pytest.mark.timeout(60)
def test_message_that_crashes_a_replica_every_time_is_the_one_dead_lettered(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    n = 60
    record = Record(tmp_path / "received.txt")
    folder = tmp_path / "cfg"
    configs = [
        write_pipeline(folder, "dl_numbers", COUNTER_SOURCE.format(n=10**9, pace_every=20,
                       pace_s=0.01), targets=("dl_relay",)),
        write_pipeline(folder, "dl_relay", CRASHING_RELAY, 1, ("dl_recorder",), replicas=1,
                       restart_backoff_s=0),
        write_pipeline(folder, "dl_recorder", RECORDER.format(path=str(record.path)), 1),
    ]  # fmt: skip
    daemon = porchd(*configs)
    daemon.wait_until(lambda: record.newest() >= n, STEP_S, f"the recorder to get past {n}")
    assert 13 not in record.counts
    others = set(range(1, n + 1)) - {13}
    assert others <= set(record.counts), f"missing {sorted(others - set(record.counts))}"
    letters = daemon.state_dir / "dead-letter" / "dl_numbers.jsonl"
    lines = letters.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1, lines
    letter = json.loads(lines[0])
    assert [pickle.loads(base64.b64decode(p)) for p in letter["payload_b64"]] == [13]
