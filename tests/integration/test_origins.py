"""Origin ids end to end, with real processes under porchd: joins stay aligned and every source
value is processed once downstream of a stage that restarts or is killed (kill -9).

A restarted middle stage re-processes what its source had not seen acknowledged and re-emits
it; the next stage drops those values by origin, and a `fan_in: all` join pairs the values of
the same source iteration whatever came before. The kills land mid-burst, when the middle stage
has processed values it has not acknowledged yet, so every kill makes duplicates to drop.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Porchd
from tests.integration.test_reliability import KILLED_BACKOFF_S, replaced, write_pipeline

pytestmark = [pytest.mark.integration]

StartDaemon = Callable[..., Porchd]
STEP_S = 30.0  # one restart or one kill to recover from, generously
DRAIN_S = 60.0
BRANCHES = ("b_branch", "c_branch", "f_branch")

# Bursts of 8 values, 4 bursts a second, until the test creates the stop file.
SOURCE = """
    import os
    import time
    import porch

    x = 0

    def step():
        global x
        x += 1
        if x % 8 == 0:
            time.sleep(0.25)
        if os.path.exists({stop!r}):
            with open({sent!r} + ".tmp", "w") as f:
                f.write(str(x))
            os.replace({sent!r} + ".tmp", {sent!r})
            porch.stop()
        return x
"""

# A branch: a little slower than a burst, so it works through a backlog (acks every few values).
BRANCH = """
    import time
    import porch

    def step(input_data):
        x = input_data["src"]
        time.sleep(0.004)
        if {skip_if}:
            return porch.SKIP
        return ["{name}", x]
"""

JOIN = """
    out = open({path!r}, "a", encoding="utf-8")

    def step(input_data):
        out.write(f"{{input_data['{left}'][1]}} {{input_data['c_branch'][1]}}\\n")
        out.flush()
"""

CHAIN_SINK = """
    out = open({path!r}, "a", encoding="utf-8")

    def step(input_data):
        out.write(f"{{input_data['mid'][1]}}\\n")
        out.flush()
"""


def lines(path: Path) -> list[list[int]]:
    """The whole lines a sink wrote so far, as ints."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [[int(v) for v in line.split()] for line in text.split("\n")[:-1]]


def branch(name: str, skip_if: str = "False") -> str:
    return BRANCH.format(name=name, skip_if=skip_if)


def middle(folder: Path, name: str, script: str, targets: tuple[str, ...]) -> Path:
    # durable: a killed branch replays what it sent but had not seen acknowledged (no loss);
    # a small queue_limit: acknowledgements every few values, so a kill leaves some unsent
    # restart_backoff_s: each is killed again and again, and the kills are what is tested
    return write_pipeline(folder, name, script, sources=1, targets=targets, outbox="durable",
                          queue_limit=12, restart_backoff_s=KILLED_BACKOFF_S)  # fmt: skip


def progress(daemon: Porchd, record: Path, name: str, old_pid: int) -> int:
    """Wait until `name` runs as a new process and the sink has moved on; return the new pid."""
    entry = daemon.wait_until(lambda: replaced(daemon, name, old_pid), STEP_S, f"{name} back")
    seen = len(lines(record))
    daemon.wait_until(lambda: len(lines(record)) > seen + 8, STEP_S, f"progress after {name}")
    pid: int = entry["pid"]
    return pid


def finish(
    daemon: Porchd, folder: Path, record: Path, sink: str, expect: Callable[[int], int]
) -> int:
    """Stop the source; wait until the sink has everything it should get; return how many sent."""
    (folder / "stop").touch()
    sent_file = folder / "sent"
    daemon.wait_until(sent_file.exists, STEP_S, "the source to stop")
    sent = int(sent_file.read_text())
    daemon.wait_until(
        lambda: len(lines(record)) >= expect(sent) or daemon.pipeline(sink)["state"] == "finished",
        DRAIN_S,
        "the sink to drain",
    )
    return sent


def diamonds(folder: Path) -> list[Path]:
    """src -> b, c, f; b + c -> joiner, f + c -> fjoiner, where f filters out every third value."""
    stop, sent = str(folder / "stop"), str(folder / "sent")
    return [
        write_pipeline(folder, "src", SOURCE.format(stop=stop, sent=sent), targets=BRANCHES),
        middle(folder, "b_branch", branch("b"), ("joiner",)),
        middle(folder, "c_branch", branch("c"), ("joiner", "fjoiner")),
        middle(folder, "f_branch", branch("f", "x % 3 == 0"), ("fjoiner",)),
        write_pipeline(folder, "joiner", JOIN.format(path=str(folder / "joined.txt"),
                                                     left="b_branch"), sources=2),
        write_pipeline(folder, "fjoiner", JOIN.format(path=str(folder / "fjoined.txt"),
                                                      left="f_branch"), sources=2),
    ]  # fmt: skip


def check_joins(daemon: Porchd, record: Path, sink: str, expected: list[int]) -> None:
    """Every join paired one source iteration; each expected value exactly once, no other."""
    joined = lines(record)
    wrong = [pair for pair in joined if pair[0] != pair[1]]
    counts = Counter(pair[1] for pair in joined)
    entry = daemon.pipeline(sink)
    print(f"{sink}: {len(joined)} joins, dropped {entry.get('duplicates')} duplicates, "
          f"{entry.get('unpaired')} unpaired")  # fmt: skip
    assert not wrong, f"{sink}: {len(wrong)} of {len(joined)} joins paired different values: "\
        f"{wrong[:10]}"  # fmt: skip
    assert not [x for x, n in counts.items() if n > 1], f"a source value reached {sink} twice"
    assert not [x for x in counts if x not in expected], f"a filtered value reached {sink}"
    missing = [x for x in expected if x not in counts]
    assert not missing, f"{len(missing)} source values never reached {sink}: {missing[:20]}"


@pytest.mark.timeout(240)
def test_diamond_joins_stay_aligned_through_restarts_and_kills(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    """Two diamonds on one source (one branch of the second filters out every third value):
    12 restarts of every branch at once (as a reload), and a kill -9 of each branch."""
    daemon = porchd(*diamonds(tmp_path))
    status = daemon.wait_running("src", *BRANCHES, "joiner", "fjoiner")
    pids = {name: daemon.pipeline(name, status)["pid"] for name in BRANCHES}
    records = {"b_branch": tmp_path / "joined.txt", "c_branch": tmp_path / "joined.txt",
               "f_branch": tmp_path / "fjoined.txt"}  # fmt: skip
    started = time.monotonic()

    for round_ in range(12):
        done = daemon.ctl("restart", *BRANCHES, timeout_s=STEP_S)
        assert done.returncode == 0, done.stderr
        for name in BRANCHES:
            pids[name] = daemon.wait_until(lambda n=name: replaced(daemon, n, pids[n]), STEP_S,
                                           f"{name} restarted ({round_})")["pid"]  # fmt: skip
        if round_ == 6:  # and kill -9 each of them, mid-burst (once: each kill costs a backoff)
            for name in BRANCHES:
                record = records[name]
                daemon.wait_until(lambda r=record: len(lines(r)) > 8, STEP_S, "some joins")
                os.kill(pids[name], signal.SIGKILL)
                pids[name] = progress(daemon, record, name, pids[name])
    print(f"12 restarts and 3 kills took {time.monotonic() - started:.1f} s")

    sent = finish(daemon, tmp_path, records["b_branch"], "joiner", lambda n: n)
    filtered = [x for x in range(1, sent + 1) if x % 3]
    daemon.wait_until(lambda: len(lines(records["f_branch"])) >= len(filtered), DRAIN_S,
                      "fjoiner to drain")  # fmt: skip
    check_joins(daemon, records["b_branch"], "joiner", list(range(1, sent + 1)))
    check_joins(daemon, records["f_branch"], "fjoiner", filtered)
    # c's value of each filtered iteration was dropped by f's skip marker, none by a guess
    daemon.wait_until(lambda: daemon.pipeline("fjoiner")["unpaired"] == sent - len(filtered),
                      STEP_S, "fjoiner to count what it dropped")  # fmt: skip


@pytest.mark.timeout(180)
def test_chain_stage_killed_five_times_each_value_processed_once_downstream(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    record = tmp_path / "received.txt"
    stop, sent = str(tmp_path / "stop"), str(tmp_path / "sent")
    configs = [
        write_pipeline(tmp_path, "src", SOURCE.format(stop=stop, sent=sent), targets=("mid",)),
        middle(tmp_path, "mid", branch("mid"), ("sink",)),
        write_pipeline(tmp_path, "sink", CHAIN_SINK.format(path=str(record)), sources=1),
    ]
    daemon = porchd(*configs)
    pid = daemon.pipeline("mid", daemon.wait_running("src", "mid", "sink"))["pid"]

    for _ in range(5):
        daemon.wait_until(lambda: len(lines(record)) > 8, STEP_S, "some values")
        os.kill(pid, signal.SIGKILL)
        pid = progress(daemon, record, "mid", pid)

    sent_n = finish(daemon, tmp_path, record, "sink", lambda n: n)
    counts = Counter(line[0] for line in lines(record))
    print(f"sent {sent_n}, c dropped {daemon.pipeline('sink').get('duplicates')} duplicates")
    assert not [x for x, n in counts.items() if n > 1], "c processed a value twice"
    missing = [x for x in range(1, sent_n + 1) if x not in counts]
    assert not missing, f"{len(missing)} values never reached c: {missing[:20]}"
