"""Async steps with `concurrency` > 1, with real processes: outputs leave in input order (and
keep their origins, so a join downstream stays aligned), a failing async step goes through each
on_error policy, and a kill -9 of an async stage mid-stream loses nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_origins import SOURCE, finish, lines, progress
from tests.integration.test_reliability import write_pipeline

pytestmark = [pytest.mark.integration]

StartPorch = Callable[..., PorchRun]
StartDaemon = Callable[..., Porchd]
EXIT_S = 60.0
STEP_S = 30.0

COUNT_SOURCE = """
    import porch

    x = 0

    def step():
        global x
        x += 1
        if x > {n}:
            raise porch.Stop
        return x
"""

# An async branch with random delays (0 to 20 ms): later inputs often finish first. Every fifth
# value is filtered out (its partner in the join must be dropped, not paired with another).
ASYNC_BRANCH = """
    import asyncio
    import random

    import porch

    async def step(input_data):
        x = input_data["src"]
        await asyncio.sleep(random.random() * 0.02)
        if x % 5 == 0:
            return porch.SKIP
        return x
"""

# A sync script after the async one in the same pipeline: runs when that item's await is over.
TAG = """
    def step(x):
        return ["b", x]
"""

SYNC_BRANCH = """
    def step(input_data):
        return ["c", input_data["src"]]
"""

JOIN = """
    seen = []

    def step(input_data):
        seen.append((input_data["b_async"][1], input_data["c_sync"][1]))

    def end():
        print("joined", seen)
"""


@pytest.mark.timeout(90)
def test_async_outputs_leave_in_input_order_and_keep_their_origins(
    tmp_path: Path, porch_cli: StartPorch
) -> None:
    """src -> b (async, random delays, concurrency 16, then a sync script) and src -> c (sync)
    -> a join: b's outputs come back in input order, so the join pairs the same source value
    in order; b's filtered values drop their partners."""
    n = 150
    b_async = write_pipeline(tmp_path, "b_async", ASYNC_BRANCH, sources=1, targets=("join",),
                             concurrency=16)  # fmt: skip
    (tmp_path / "tag.py").write_text(textwrap.dedent(TAG), encoding="utf-8")
    config = json.loads(b_async.read_text())
    config["scripts"].append("tag.py")
    b_async.write_text(json.dumps(config))
    configs = [
        write_pipeline(tmp_path, "src", COUNT_SOURCE.format(n=n), targets=("b_async", "c_sync")),
        b_async,
        write_pipeline(tmp_path, "c_sync", SYNC_BRANCH, sources=1, targets=("join",)),
        write_pipeline(tmp_path, "join", JOIN, sources=2),
    ]
    run = porch_cli("run", *map(str, configs))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    [joined] = [line for line in run.lines_of("join") if line.startswith("joined")]
    expected = [(x, x) for x in range(1, n + 1) if x % 5]
    assert joined == f"joined {expected}", run.report()


FAILING = """
    import asyncio
    import random

    got = 0

    async def step(input_data):
        x = input_data["src"]
        await asyncio.sleep(random.random() * 0.01)
        if x % 7 == 0:
            raise ValueError(f"cannot handle {{x}}")
        return x
"""

RECORDING_SINK = """
    seen = []

    def step(input_data):
        seen.append(input_data["mid"])

    def end():
        print("seen", seen)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("on_error", ["stop", "skip", "dead-letter"])
def test_failing_async_step_under_each_on_error_policy(
    tmp_path: Path,
    run_porch: StartPorch,
    state_base: Path,
    on_error: str,
) -> None:
    """src (1..30) -> mid (async, concurrency 8, raises on multiples of 7) -> sink."""
    configs = [
        write_pipeline(tmp_path, "src", COUNT_SOURCE.format(n=30), targets=("mid",)),
        write_pipeline(
            tmp_path,
            "mid",
            FAILING.format(),
            sources=1,
            targets=("sink",),
            concurrency=8,
            on_error=on_error,
        ),
        write_pipeline(tmp_path, "sink", RECORDING_SINK, sources=1),
    ]
    run = run_porch("run", *map(str, configs))
    code = run.wait_exit(EXIT_S)
    [seen] = [line for line in run.lines_of("sink") if line.startswith("seen")]

    if on_error == "stop":
        assert code == 1, run.report()
        # the outputs before the failing input still leave, in order; none after it
        assert seen == f"seen {list(range(1, 7))}", run.report()
        assert any(
            line.startswith("porch: pipeline mid failed:") and "ValueError: cannot handle 7" in line
            for line in run.stderr
        ), run.report()
        assert any(re.search(r'mid \| .*mid\.py", line \d+, in step', ln) for ln in run.stderr)
        return
    assert code == 0, run.report()
    assert seen == f"seen {[x for x in range(1, 31) if x % 7]}", run.report()
    if on_error == "skip":
        skipped = [line for line in run.stderr if "input_skipped" in line]
        assert len(skipped) == 4 and "cannot handle 28" in skipped[-1], run.report()
    else:
        letters = (state_base / "run" / "dead-letter" / "mid.jsonl").read_text().splitlines()
        inputs = [json.loads(letter)["input"] for letter in letters]
        assert inputs == [f"{{'src': {x}}}" for x in (7, 14, 21, 28)], letters
        assert "ValueError: cannot handle 7" in json.loads(letters[0])["traceback"]


# The middle stage: async, 16 at once, each 0.1 to 0.3 s (longer than the source's pauses
# between bursts), so iterations are always in flight when it is killed.
ASYNC_MIDDLE = """
    import asyncio
    import random

    async def step(input_data):
        x = input_data["src"]
        await asyncio.sleep(random.uniform(0.1, 0.3))
        return ["mid", x]
"""

CHAIN_SINK = """
    out = open({path!r}, "a", encoding="utf-8")

    def step(input_data):
        out.write(f"{{input_data['mid'][1]}}\\n")
        out.flush()
"""


@pytest.mark.timeout(150)
def test_async_stage_killed_mid_stream_loses_nothing(tmp_path: Path, porchd: StartDaemon) -> None:
    """src -> mid (async, concurrency 16, durable outbox) -> sink under porchd; mid is killed
    (kill -9) three times with iterations in flight: every source value reaches the sink."""
    record = tmp_path / "received.txt"
    stop, sent = str(tmp_path / "stop"), str(tmp_path / "sent")
    configs = [
        write_pipeline(tmp_path, "src", SOURCE.format(stop=stop, sent=sent), targets=("mid",)),
        write_pipeline(
            tmp_path,
            "mid",
            ASYNC_MIDDLE,
            sources=1,
            targets=("sink",),
            concurrency=16,
            outbox="durable",
            queue_limit=12,
        ),
        write_pipeline(tmp_path, "sink", CHAIN_SINK.format(path=str(record)), sources=1),
    ]
    daemon = porchd(*configs)
    pid = daemon.pipeline("mid", daemon.wait_running("src", "mid", "sink"))["pid"]

    for _ in range(3):
        daemon.wait_until(lambda: len(lines(record)) > 8, STEP_S, "some values")
        os.kill(pid, signal.SIGKILL)
        pid = progress(daemon, record, "mid", pid)

    sent_n = finish(daemon, tmp_path, record, "sink", lambda n: n)
    got = [line[0] for line in lines(record)]
    missing = [x for x in range(1, sent_n + 1) if x not in set(got)]
    assert not missing, f"{len(missing)} values never reached the sink: {missing[:20]}"
    # each run of mid hands its outputs on in input order
    assert got == sorted(got), "the sink saw values out of order"


PACED_SOURCE = """
    import time

    x = 0

    def step():
        global x
        x += 1
        time.sleep(0.02)
        print(f"sent {x}", flush=True)
        return x
"""

SLOW_ASYNC = """
    import asyncio

    async def step(input_data):
        await asyncio.sleep(0.3)  # about 15 in flight when the stop comes
        return input_data["src"]
"""

PRINTING_SINK = """
    def step(input_data):
        print(f"got {input_data['mid']}", flush=True)
"""


@pytest.mark.timeout(90)
def test_ctrl_c_with_async_iterations_in_flight_delivers_what_was_sent(
    tmp_path: Path, porch_cli: StartPorch
) -> None:
    """Ctrl+C while mid (async, concurrency 30) has iterations in flight: they finish and are
    sent, so the sink gets every value the source sent, in order."""
    configs = [
        write_pipeline(tmp_path, "src", PACED_SOURCE, targets=("mid",)),
        write_pipeline(tmp_path, "mid", SLOW_ASYNC, sources=1, targets=("sink",), concurrency=30),
        write_pipeline(tmp_path, "sink", PRINTING_SINK, sources=1),
    ]
    run = porch_cli("run", *map(str, configs))
    run.wait_until(lambda: len(run.lines_of("sink")) >= 10, EXIT_S, "the sink's first values")
    run.interrupt()

    assert run.wait_exit(EXIT_S) == 0, run.report()
    sent = run.lines_of("src")
    assert sent == [f"sent {x}" for x in range(1, len(sent) + 1)], run.report()
    assert run.lines_of("sink") == [f"got {x}" for x in range(1, len(sent) + 1)], run.report()
