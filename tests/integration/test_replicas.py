"""Replicated pipelines on one host (issue 13), real processes: kill -9 of replicas in a stream
of 20,000 values loses nothing, `ordered` keeps input order across a replica kill, `partition_by`
sends each key to one replica, `porchctl scale` up and down while streaming loses nothing, and
the end of the stream through a replicated stage ends `porch run` with exit 0.

The porchd tests share one daemon (one graph each, held back by a go-file until its test starts:
a daemon's start-up is paid once). Each replica appends its pid to a file when it starts and
tags its output with it, so a test knows the replica processes (and their restarts) without
reading status. Kill moments are random but seeded (PORCH_TEST_SEED replays a run).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NETWORK_VARIABLES, free_udp_port
from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_reliability import gone, wait_for, write_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("replicas")]

StartPorch = Callable[..., PorchRun]

STEP_S = 30.0  # one wait: a restart, some progress, a scale
DRAIN_S = 60.0  # the rest of a stream after the last kill or scale
QUEUE_LIMIT = 200

# Sends 1..N once its test created the go-file GO; with N = 0 until STOP exists (then it writes
# the last value it sent to STOP + ".sent").
GATED_SOURCE = """
    import os
    import time
    import porch

    N = {n}
    GO = {go!r}
    STOP = {stop!r}
    n = 0

    def step():
        global n
        if n == 0 and not os.path.exists(GO):
            time.sleep(0.02)
            return porch.SKIP
        n += 1
        if {pace_every} and n % {pace_every} == 0:
            time.sleep(0.01)
        if n == N or (not N and os.path.exists(STOP)):
            with open(STOP + ".sent", "w", encoding="utf-8") as f:
                f.write(str(n))
            porch.stop()
        return n
"""

# Every instance of every replica appends its pid to PIDS when it starts; its output is the
# value and that pid. It sleeps 2 ms every 10th value: busy, with values in flight, at a kill.
TAGGING_STAGE = """
    import os
    import time

    with open({pids!r}, "a", encoding="utf-8") as f:
        f.write(f"{{os.getpid()}}\\n")

    def step(input_data):
        value = input_data[{source!r}]
        if value % 10 == 0:
            time.sleep(0.002)
        return (value, os.getpid())
"""

# One line per step() that ran to its end: "VALUE PID".
TALLY_SINK = """
    out = open({path!r}, "a", encoding="utf-8")

    def step(input_data):
        value, pid = input_data[{source!r}]
        out.write(f"{{value}} {{pid}}\\n")
        out.flush()
"""


class Tally:
    """The file a TALLY_SINK appends to, read incrementally: which values, how often, from which
    replica process, in which order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.order: list[int] = []
        self.counts: Counter[int] = Counter()
        self.pids: set[int] = set()
        self._offset = 0
        self._tail = b""

    def refresh(self) -> int:
        """Read what was appended since the last call; return how many distinct values."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        *complete, self._tail = (self._tail + data).split(b"\n")
        for line in complete:
            value, pid = map(int, line.split())
            self.order.append(value)
            self.counts[value] += 1
            self.pids.add(pid)
        return len(self.counts)

    def missing(self, n: int) -> list[int]:
        """Values of 1..n never processed."""
        return [v for v in range(1, n + 1) if v not in self.counts]

    @property
    def duplicates(self) -> int:
        """Lines beyond the first of each value."""
        return len(self.order) - len(self.counts)

    def first_seen(self) -> list[int]:
        """The values in the order of their first arrival (a redelivered duplicate comes late)."""
        seen: set[int] = set()
        firsts = []
        for value in self.order:
            if value not in seen:
                seen.add(value)
                firsts.append(value)
        return firsts


class Graph:
    """source -> stage (replicated) -> sink under the shared porchd, with its files."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self._daemon: Porchd | None = None
        self.source, self.stage, self.sink = f"{prefix}_src", f"{prefix}_work", f"{prefix}_rec"
        self.go = folder / f"{prefix}.go"
        self.stop = folder / f"{prefix}.stop"
        self.pids_file = folder / f"{prefix}.pids"
        self.tally = Tally(folder / f"{prefix}.tally")

    @property
    def daemon(self) -> Porchd:
        """The porchd that runs this graph."""
        assert self._daemon is not None, "the graph's porchd is not started yet"
        return self._daemon

    @daemon.setter
    def daemon(self, daemon: Porchd) -> None:
        self._daemon = daemon

    def configs(self, folder: Path, n: int, pace_every: int, **stage: object) -> list[Path]:
        """Write the three pipelines' files; `stage`: the replicated stage's extra fields."""
        source = GATED_SOURCE.format(
            n=n, go=str(self.go), stop=str(self.stop), pace_every=pace_every
        )
        tagging = TAGGING_STAGE.format(pids=str(self.pids_file), source=self.source)
        sink = TALLY_SINK.format(path=str(self.tally.path), source=self.stage)
        limits = {"queue_limit": QUEUE_LIMIT, "restart_backoff_s": 0}
        return [
            write_pipeline(folder, self.source, source, targets=(self.stage,), **limits),
            write_pipeline(folder, self.stage, tagging, 1, (self.sink,), **limits, **stage),
            write_pipeline(folder, self.sink, sink, 1, **limits),
        ]

    def started_pids(self) -> list[int]:
        """Every replica instance's pid, in the order they started."""
        try:
            text = self.pids_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [int(line) for line in text.split()]

    def live_pids(self) -> list[int]:
        """The replica processes alive now, oldest first."""
        return [pid for pid in self.started_pids() if not gone(pid)]

    def wait(self, predicate: Callable[[], object], what: str, timeout_s: float = STEP_S) -> None:
        """daemon.wait_until, with this graph's tally in the failure message."""

        def check() -> object:
            self.tally.refresh()
            return predicate()

        try:
            self.daemon.wait_until(check, timeout_s, what)
        except AssertionError as exc:
            got = (f"{len(self.tally.counts)} values from replica pids {sorted(self.tally.pids)}; "
                   f"replicas started {self.started_pids()}, alive {self.live_pids()}")  # fmt: skip
            raise AssertionError(f"{self.stage}: {got}\n{exc}") from None

    def wait_finished(self) -> None:
        """Wait until the sink's stream ended (every replica ended) and it finished."""
        self.wait(
            lambda: self.daemon.pipeline(self.sink)["state"] == "finished",
            f"{self.sink} finished",
            DRAIN_S,
        )
        self.tally.refresh()

    def kill_replica(self, pid: int) -> None:
        """kill -9 one replica process; wait until porchd started a new instance."""
        started = len(self.started_pids())
        print(f"kill -9 {self.stage} replica pid {pid} after {len(self.tally.counts)} values")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gone(pid), STEP_S, f"pid {pid} dead")
        self.wait(lambda: len(self.started_pids()) > started, f"{self.stage} replica restarted")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Graph]]:
    """One porchd running every graph of this module (each waits for its go-file)."""
    home = tmp_path_factory.mktemp("replicas")
    folder = home / "cfg"
    files = home / "files"
    files.mkdir()
    specs: dict[str, tuple[int, int, dict[str, object]]] = {
        # the default memory outbox: a replica acknowledges an input only once its outputs were
        # acknowledged, so what a killed one had not delivered yet is replayed, not lost
        "kill": (20_000, 0, {"replicas": 2}),
        "ordered": (4_000, 0, {"replicas": 2, "ordered": True}),
        "scale": (0, 10, {"replicas": 1}),  # about 1,000 values/s until told to stop
    }
    configs: list[Path] = []
    graphs = {prefix: Graph(files, prefix) for prefix in specs}
    for prefix, (n, pace_every, stage) in specs.items():
        configs += graphs[prefix].configs(folder, n, pace_every, **stage)
    # the autouse private_discovery fixture is per test, set up after this one: the same here
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PORCH_DISCOVERY_PORT", str(free_udp_port()))
        env.setenv("PORCH_PREFS", str(home / "no-prefs.toml"))
        env.setenv("PORCH_STATE_DIR", str(home / "state-base"))
        for name in NETWORK_VARIABLES:
            env.delenv(name, raising=False)
        daemon = Porchd(home, [str(c) for c in configs], stop_timeout_s=5.0)
    try:
        for graph in graphs.values():
            graph.daemon = daemon
        daemon.wait_running(*(name for g in graphs.values() for name in (g.source, g.sink)))
        yield graphs
    finally:
        daemon.kill()


@pytest.fixture
def seed() -> int:
    """The seed of this test's random kill moments (PORCH_TEST_SEED replays one)."""
    value = int(os.environ.get("PORCH_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"PORCH_TEST_SEED={value}")
    return value


@pytest.mark.timeout(150)
def test_replicas_killed_twice_in_20000_values_lose_nothing(
    shared: dict[str, Graph], seed: int
) -> None:
    graph, n, kills = shared["kill"], 20_000, 2
    graph.wait(lambda: len(graph.live_pids()) == 2, "2 replicas running")
    graph.go.touch()

    # the two replicas that started first, each killed once, at random moments
    for mark in sorted(random.Random(seed).sample(range(1_000, n // 2), kills)):
        graph.wait(lambda m=mark: len(graph.tally.counts) >= m, f"{mark} values")
        graph.kill_replica(graph.live_pids()[0])
        at_kill = len(graph.tally.counts)
        graph.wait(lambda a=at_kill: len(graph.tally.counts) > a + 100, "progress after a kill")

    graph.wait_finished()
    missing = graph.tally.missing(n)
    print(f"{graph.sink}: {len(graph.tally.order)} lines, {graph.tally.duplicates} duplicates "
          f"after {kills} kills, from replica pids {sorted(graph.tally.pids)}")  # fmt: skip
    assert not missing, f"{len(missing)} values never processed, first {missing[:20]}"
    assert set(graph.tally.counts) == set(range(1, n + 1))
    # what a killed replica processed but had not acknowledged is processed again (once more)
    assert graph.tally.duplicates <= kills * QUEUE_LIMIT
    assert len(graph.tally.pids) >= 3, "both replicas and a restarted one did work"


@pytest.mark.timeout(120)
def test_ordered_replicas_keep_input_order_across_a_replica_kill(
    shared: dict[str, Graph], seed: int
) -> None:
    graph, n = shared["ordered"], 4_000
    graph.wait(lambda: len(graph.live_pids()) == 2, "2 replicas running")
    graph.go.touch()

    mark = random.Random(seed).randrange(500, n // 2)
    graph.wait(lambda: len(graph.tally.counts) >= mark, f"{mark} values")
    graph.kill_replica(graph.live_pids()[0])
    graph.wait_finished()

    missing = graph.tally.missing(n)
    assert not missing, f"{len(missing)} values never processed, first {missing[:20]}"
    firsts = graph.tally.first_seen()
    # a value the killed replica processed and the sink already has, processed again by the
    # other, arrives late: a duplicate, delivered at once; every first arrival is in order
    out_of_order = [(a, b) for a, b in itertools.pairwise(firsts) if b < a]
    assert not out_of_order, f"{len(out_of_order)} values out of order, first {out_of_order[:10]}"
    assert firsts == list(range(1, n + 1))
    assert len(graph.tally.pids) >= 2
    print(f"{graph.sink}: in order, {graph.tally.duplicates} duplicates after the kill")


@pytest.mark.timeout(150)
def test_scale_up_to_3_and_down_to_1_while_streaming_loses_nothing(
    shared: dict[str, Graph],
) -> None:
    graph = shared["scale"]
    daemon = graph.daemon
    graph.wait(lambda: len(graph.live_pids()) == 1, "1 replica running")
    graph.go.touch()
    graph.wait(lambda: len(graph.tally.counts) >= 500, "500 values")

    done = daemon.ctl("scale", graph.stage, "3")
    assert done.returncode == 0, f"porchctl scale {graph.stage} 3: {done.stdout}{done.stderr}"
    graph.wait(lambda: len(graph.live_pids()) == 3, "3 replicas running")
    three = set(graph.live_pids())
    graph.wait(lambda: three <= graph.tally.pids, "values from each of the 3 replicas")

    done = daemon.ctl("scale", graph.stage, "1")
    assert done.returncode == 0, f"porchctl scale {graph.stage} 1: {done.stdout}{done.stderr}"
    graph.wait(lambda: len(graph.live_pids()) == 1, "2 replicas stopped")
    at_one = len(graph.tally.counts)
    graph.wait(lambda: len(graph.tally.counts) > at_one + 300, "progress with 1 replica")

    graph.stop.touch()
    sent_file = Path(f"{graph.stop}.sent")
    wait_for(sent_file.exists, STEP_S, "the source to stop")
    graph.wait_finished()
    n = int(sent_file.read_text(encoding="utf-8"))
    missing = graph.tally.missing(n)
    print(f"{graph.sink}: {n} values, {graph.tally.duplicates} duplicates, "
          f"replica pids {graph.started_pids()}")  # fmt: skip
    assert not missing, f"{len(missing)} of {n} values never processed, first {missing[:20]}"
    assert set(graph.tally.counts) == set(range(1, n + 1))
    # a replica scaled away stops gracefully: it acknowledges what it processed first
    assert graph.tally.duplicates == 0


# ---- porch run: partition_by and the end of the stream --------------------------------------

KEYS = 12

KEYED_SOURCE = """
    import porch

    n = 0

    def step():
        global n
        n += 1
        if n == {n}:
            porch.stop()
        return {{"key": f"k{{n % {keys}}}", "n": n}}
"""

KEYED_STAGE = """
    import os

    def step(input_data):
        value = input_data["keyed_src"]
        return {**value, "pid": os.getpid()}
"""

KEYED_SINK = """
    def step(input_data):
        value = input_data["keyed_work"]
        print(value["n"], value["key"], value["pid"])
"""


@pytest.mark.timeout(90)
def test_partition_by_sends_each_key_to_one_replica_and_eos_ends_the_run(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    n = 600
    folder = tmp_path / "cfg"
    configs = [
        write_pipeline(folder, "keyed_src", KEYED_SOURCE.format(n=n, keys=KEYS),
                       targets=("keyed_work",)),
        write_pipeline(folder, "keyed_work", KEYED_STAGE, 1, ("keyed_sink",), replicas=3,
                       partition_by="key"),
        write_pipeline(folder, "keyed_sink", KEYED_SINK, 1),
    ]  # fmt: skip
    run = run_porch("run", *map(str, configs))

    assert run.wait_exit(60.0) == 0, run.report()
    rows = [line.split() for line in run.lines_of("keyed_sink")]
    assert sorted(int(row[0]) for row in rows) == list(range(1, n + 1)), run.report()
    replicas_of: dict[str, set[str]] = {}
    for _, key, pid in rows:
        replicas_of.setdefault(key, set()).add(pid)
    split = {key: pids for key, pids in replicas_of.items() if len(pids) > 1}
    assert not split, f"keys processed by several replicas: {split}"
    assert len(replicas_of) == KEYS
    # 12 keys over 3 replicas: all on one has a chance of 3 in 177,147
    assert len({pid for _, _, pid in rows}) >= 2, run.report()
