"""Delivery at the edges of a stream's life: graceful stops, restarts, a stream that ends while
its target is away, and the durable outbox's rows (issue 11 items 4 and 5, issue 20 item 1, the
graceful-restart rule of issue 19). Real processes, real signals.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_reliability import (
    CHECKPOINTED_SOURCE,
    COUNTER_SOURCE,
    Record,
    recording_sink,
    write_pipeline,
)

pytestmark = [pytest.mark.integration]

StartDaemon = Callable[..., Porchd]
StartPorch = Callable[..., PorchRun]

RUN_S = 60.0

# Big values (4 KB): a target that reads nothing (SIGSTOP) leaves most of them in the sender's
# ZeroMQ queue, past what the kernel's socket buffers hold.
BIG_SOURCE = """
    import os
    import porch

    N = {n}
    n = 0
    AGAIN = os.path.exists({marker!r})  # a later start sends nothing new (only its outbox)
    open({marker!r}, "w").close()

    def step():
        global n
        if AGAIN:
            raise porch.Stop
        n += 1
        if n == N:
            porch.stop()
        return (n, "x" * 4000)
"""

BIG_SINK = """
    import time

    out = open({path!r}, "a", encoding="utf-8")

    def step(input_data):
        time.sleep(0.002)  # the stream lasts seconds: it is still going when the sink is paused
        out.write(f"{{input_data[{source!r}][0]}}\\n")
        out.flush()
"""

PASS_THROUGH = """
    def step(input_data):
        return input_data[{source!r}]
"""


@pytest.fixture
def state_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PORCH_STATE_DIR for this test (porch run keeps its outboxes under <it>/run)."""
    path = tmp_path / "state-base"
    monkeypatch.setenv("PORCH_STATE_DIR", str(path))
    return path


@pytest.fixture
def run_porch(state_base: Path, porch_cli: StartPorch) -> StartPorch:
    """porch_cli, started after PORCH_STATE_DIR is set."""
    return porch_cli


def outbox_rows(path: Path) -> int:
    """How many rows a durable outbox file holds."""
    db = sqlite3.connect(str(path))
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def checkpoint_of(path: Path) -> int:
    """The next value a CHECKPOINTED_SOURCE would return: every value below it was returned."""
    return int(path.read_text(encoding="utf-8"))


# ---- 11.4: durable outbox rows leave with their message -----------------------------------


@pytest.mark.timeout(120)
def test_durable_outbox_keeps_no_row_of_dropped_or_retired_messages(
    tmp_path: Path, run_porch: StartPorch, state_base: Path
) -> None:
    # drop_oldest with a small limit in front of a slow sink drops thousands of held values
    # (most were already written out: only the link's copy goes), and a second target finishes
    # at once (retired): none of their rows may stay on disk
    n = 4000
    cfg = tmp_path / "cfg"
    configs = [
        write_pipeline(cfg, "numbers", COUNTER_SOURCE.format(n=n, pace_every=n + 1, pace_s=0),
                       targets=("recorder", "quitter"), outbox="durable",
                       overflow="drop_oldest", queue_limit=100),
        write_pipeline(cfg, "recorder",
                       recording_sink(str(tmp_path / "got.txt"), "numbers", "True", 0.002),
                       sources=1),
        write_pipeline(cfg, "quitter", "import porch\ndef step(x):\n    raise porch.Stop\n",
                       sources=1),
    ]  # fmt: skip
    run = run_porch("run", *map(str, configs))
    assert run.wait_exit(RUN_S) == 0, run.report()

    rows = outbox_rows(state_base / "run" / "outbox" / "numbers.sqlite")
    assert rows == 0, f"{rows} rows left in the outbox after a clean run\n{run.report()}"


# ---- 11.5: a graceful stop loses nothing a slow sink has not processed yet ----------------


def slow_chain(tmp_path: Path, n: int, sink_pace_s: float, **source: object) -> list[Path]:
    """A checkpointed source (0.5 ms a value) and a sink slower than it."""
    cfg = tmp_path / "cfg"
    return [
        write_pipeline(cfg, "numbers",
                       CHECKPOINTED_SOURCE.format(n=n, checkpoint=str(tmp_path / "ckpt"),
                                                  pace_every=1, pace_s=0.0005),
                       targets=("recorder",), **source),
        write_pipeline(cfg, "recorder",
                       recording_sink(str(tmp_path / "got.txt"), "numbers", "True", sink_pace_s),
                       sources=1),
    ]  # fmt: skip


@pytest.mark.timeout(90)
def test_ctrl_c_with_a_slow_sink_loses_nothing_the_source_returned(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    configs = slow_chain(tmp_path, 100_000, 0.005)
    record = Record(tmp_path / "got.txt")
    run = run_porch("run", *map(str, configs))
    run.wait_until(lambda: record.refresh() >= 300, RUN_S, "300 values recorded")
    run.interrupt()

    assert run.wait_exit(RUN_S) == 0, run.report()
    sent = checkpoint_of(tmp_path / "ckpt") - 1
    record.refresh()
    missing = record.missing(sent)
    assert sent > len(missing) >= 0
    assert not missing, f"{len(missing)} of {sent} lost: {missing[:5]}\n{run.report()}"
    assert record.duplicates == 0


@pytest.mark.timeout(150)
def test_porchctl_stop_and_start_cycles_lose_nothing_and_duplicate_nothing(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    n = 2500
    record = Record(tmp_path / "got.txt")
    daemon = porchd(*slow_chain(tmp_path, n, 0.005), stop_timeout_s=10.0)
    daemon.wait_running("numbers", "recorder")
    for mark in (300, 700):
        daemon.wait_until(lambda m=mark: record.refresh() >= m, RUN_S, f"{mark} values")
        done = daemon.ctl("stop", "numbers", "recorder")
        assert done.returncode == 0, done.stderr
        daemon.wait_until(
            lambda: {p["state"] for p in daemon.status()["pipelines"]} == {"stopped"},
            30.0,
            "both stopped",
        )
        held = checkpoint_of(tmp_path / "ckpt") - 1 - record.refresh()
        assert held == 0, f"{held} values returned by numbers never recorded\n{daemon.report()}"
        assert daemon.ctl("start", "numbers", "recorder").returncode == 0
    daemon.wait_until(lambda: record.refresh() >= n, RUN_S, "every value")
    assert not record.missing(n)
    assert record.duplicates == 0, f"{record.duplicates} duplicates\n{daemon.report()}"


@pytest.mark.timeout(60)
def test_stop_that_cannot_drain_in_time_is_a_reported_loss(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    configs = slow_chain(tmp_path, 100_000, 0.05)
    record = Record(tmp_path / "got.txt")
    run = run_porch("run", "--stop-timeout", "2", *map(str, configs))
    run.wait_until(lambda: record.refresh() >= 20, RUN_S, "20 values recorded")
    run.interrupt()

    assert run.wait_exit(RUN_S) == 1, run.report()
    errors = "\n".join(run.stderr)
    assert "pipeline numbers failed" in errors, run.report()
    assert "for recorder were not acknowledged before the stop deadline" in errors
    assert ": lost" in errors


# ---- 19: a graceful restart acknowledges everything processed: no duplicate ---------------


@pytest.mark.timeout(150)
def test_restarting_a_middle_stage_never_duplicates_a_value(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    n = 4000  # 5 ms a value: the stream outlasts the restarts (each one drains for 2 s)
    cfg = tmp_path / "cfg"
    record = Record(tmp_path / "got.txt")
    configs = [
        write_pipeline(cfg, "numbers", COUNTER_SOURCE.format(n=n, pace_every=1, pace_s=0.005),
                       targets=("middle",)),
        write_pipeline(cfg, "middle", PASS_THROUGH.format(source="numbers"), sources=1,
                       targets=("recorder",)),
        write_pipeline(cfg, "recorder", recording_sink(str(record.path), "middle"), sources=1),
    ]  # fmt: skip
    daemon = porchd(*configs)
    pid = daemon.pipeline("middle", daemon.wait_running("numbers", "middle", "recorder"))["pid"]
    for restart in range(5):
        mark = 300 * (restart + 1)
        daemon.wait_until(lambda m=mark: record.refresh() >= m, RUN_S, f"{mark} values")
        assert daemon.ctl("restart", "middle").returncode == 0
        entry = daemon.wait_until(
            lambda p=pid: (
                (e := daemon.pipeline("middle"))["state"] == "running"
                and e["pid"] not in (None, p)
                and e
            ),
            30.0,
            "middle restarted",
        )
        pid = entry["pid"]
    daemon.wait_until(lambda: record.refresh() >= n, RUN_S, "every value")
    assert not record.missing(n)
    assert record.duplicates == 0, f"{record.duplicates} duplicates\n{daemon.report()}"


# ---- 20.1: a stream that ends while its target is away keeps its tail ----------------------


def big_chain(tmp_path: Path, n: int, **source: object) -> list[Path]:
    """A fast source of 4 KB values, ending after `n`, and a sink recording their numbers."""
    cfg = tmp_path / "cfg"
    return [
        write_pipeline(cfg, "numbers", BIG_SOURCE.format(n=n, marker=str(tmp_path / "started")),
                       targets=("recorder",),
                       queue_limit=n + 100, **source),
        write_pipeline(cfg, "recorder",
                       BIG_SINK.format(path=str(tmp_path / "got.txt"), source="numbers"),
                       sources=1),
    ]  # fmt: skip


def state_of(daemon: Porchd, name: str) -> str:
    """The state porchd reports for `name`."""
    state: str = daemon.pipeline(name)["state"]
    return state


def hold_stopped(pid: int, seconds: float) -> None:
    """Keep `pid` SIGSTOPped for `seconds` (the fault being injected), then SIGCONT it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.timeout(120)
def test_stream_that_ends_while_its_target_is_away_delivers_its_tail(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    n = 4000  # 16 MB: far more than the sockets' kernel buffers hold
    record = Record(tmp_path / "got.txt")
    daemon = porchd(*big_chain(tmp_path, n))
    pid = daemon.pipeline("recorder", daemon.wait_running("recorder"))["pid"]
    os.kill(pid, signal.SIGSTOP)  # away before numbers ends its stream
    try:
        daemon.wait_until(lambda: state_of(daemon, "numbers") == "stopping", RUN_S,
                          "numbers to end its stream")  # fmt: skip
        time.sleep(8.0)  # away for longer than the old 5 s flush timeout
    finally:
        os.kill(pid, signal.SIGCONT)

    daemon.wait_until(lambda: state_of(daemon, "numbers") == "finished", RUN_S, "numbers done")
    record.refresh()
    assert not record.missing(n)


@pytest.mark.timeout(120)
def test_undelivered_tail_fails_loudly_and_the_durable_outbox_replays_it(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    n = 4000
    record = Record(tmp_path / "got.txt")
    configs = big_chain(tmp_path, n, outbox="durable", finish_timeout_s=2, restart="never")
    daemon = porchd(*configs)
    pid = daemon.pipeline("recorder", daemon.wait_running("recorder"))["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        entry: dict[str, Any] = daemon.wait_until(
            lambda: (e := daemon.pipeline("numbers"))["state"] == "failed" and e, RUN_S,
            "numbers to fail after finish_timeout_s",
        )  # fmt: skip
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "were not delivered within finish_timeout_s 2 s" in entry["last_error"], entry
    assert "kept in the durable outbox for the next start" in entry["last_error"], entry

    assert daemon.ctl("start", "numbers").returncode == 0  # replays its outbox, sends nothing new
    daemon.wait_until(lambda: record.refresh() >= n, RUN_S, "every value")
    assert not record.missing(n)
