"""Replicas across hosts (issue 13): the same replicated config under porchd on two network
namespace hosts is one pipeline whose replicas are all of theirs, and kill -9 of one host's
porchd mid-stream loses nothing (what its replicas had not acknowledged goes to the others).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from porch.names import is_replica, pipeline_of
from tests.integration.netns import Cluster, Host, NetnsPorchd, StartIn, porchd_in, require_netns
from tests.integration.test_discovery import events

__all__ = ["porchd_in"]  # a fixture, imported so that pytest finds it here

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("netns_replicas"),
    pytest.mark.timeout(90),
]

WAIT_S = 30.0
COUNT = 3000
BEACON = ("--beacon-interval", "0.5")  # silent hosts still expire after 3 s (MIN_EXPIRY_S)

# Starts once the test created the go-file (every replica known), then 1..COUNT and stops;
# with COUNT 0, until the stop-file exists (then it writes the last value it sent beside it).
SOURCE = """
import os
import time
import porch
n = 0
def step():
    global n
    if n == 0 and not os.path.exists({go!r}):
        time.sleep(0.02)
        return porch.SKIP
    n += 1
    time.sleep(0.001)  # a stream of a few seconds: the kill lands in the middle of it
    if n == {count} or ({count} == 0 and os.path.exists({stop!r})):
        with open({stop!r} + ".sent", "w") as f:
            f.write(str(n))
        porch.stop()
    return n
"""
# Each replica says which host (its config's folder) and which process it is.
STAGE = """
import os
where = os.path.basename(os.getcwd())
def step(input_data):
    return f"{{where}} {{os.getpid()}} {{input_data[{source!r}]}}"
"""
SINK = """
def step(input_data):
    print("got", input_data[{source!r}])
"""


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    """Two namespace hosts for every test of this module (each test uses its own names)."""
    require_netns()
    net = Cluster(f"pr{uuid.uuid4().hex[:6]}", 2)
    try:
        yield net.hosts
    finally:
        net.down()


def write(folder: Path, name: str, script: str, **config: object) -> str:
    """NAME.json and NAME.py in `folder`; the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(script)
    fields = {"name": name, "scripts": [f"{name}.py"], "source_pipeline_count": 0,
              "target_pipeline_names": [], "restart_backoff_s": 0, **config}  # fmt: skip
    (folder / f"{name}.json").write_text(json.dumps(fields))
    return str(folder / f"{name}.json")


class Graph:
    """PREFIX_src -> PREFIX_mid (replicas 2, the same config on both hosts) -> PREFIX_sink:
    the source and the sink on h1."""

    def __init__(self, folder: Path, prefix: str, count: int) -> None:
        self.folder = folder
        self.src, self.mid, self.sink = f"{prefix}_src", f"{prefix}_mid", f"{prefix}_sink"
        self.go, self.stop = folder / f"{prefix}.go", folder / f"{prefix}.stop"
        self.count = count

    def h1(self) -> list[str]:
        """The configs h1 runs: the source, the stage, the sink."""
        source = SOURCE.format(count=self.count, go=str(self.go), stop=str(self.stop))
        return [write(self.folder / "h1", self.src, source, target_pipeline_names=[self.mid],
                      queue_limit=200),  # a short backlog: a stop drains fast
                self.stage("h1"),
                write(self.folder / "h1", self.sink, SINK.format(source=self.mid),
                      source_pipeline_count=1)]  # fmt: skip

    def stage(self, host: str) -> str:
        """The one replicated config both hosts run (the same file content)."""
        return write(self.folder / host, self.mid, STAGE.format(source=self.src), replicas=2,
                     source_pipeline_count=1, target_pipeline_names=[self.sink])  # fmt: skip

    def received(self, daemon: NetnsPorchd) -> list[tuple[str, int, int]]:
        """What the sink printed: (host folder, replica pid, value) per line."""
        found = []
        for line in daemon.output(self.sink):
            if line.startswith("got "):
                where, pid, value = line.split()[1:]
                found.append((where, int(pid), int(value)))
        return found

    def replicas(self, report: dict[str, Any]) -> tuple[set[str], dict[str, str]]:
        """The local replica processes of the stage, and the remote ones with their states
        ("unused": known, but not handed to this host's workers)."""
        local = {p["name"] for p in local_processes(report)
                 if is_replica(p["name"]) and pipeline_of(p["name"]) == self.mid}  # fmt: skip
        remote = {r["name"]: r["state"] if r["state"] == "withdrawn" or r["used"] else "unused"
                  for r in report["remote"] if pipeline_of(r["name"]) == self.mid}  # fmt: skip
        return local, remote

    def four(self, daemon: NetnsPorchd) -> tuple[set[str], dict[str, str]]:
        """Wait until h1 lists its own 2 replicas and h2's 2, used; return them."""

        def listed() -> tuple[set[str], dict[str, str]] | None:
            report = status(daemon)
            if report is None:
                return None
            local, remote = self.replicas(report)
            used = [n for n, state in remote.items() if state not in ("withdrawn", "unused")]
            return (local, remote) if len(local) == 2 and len(used) == 2 else None

        found: tuple[set[str], dict[str, str]] = daemon.wait_until(
            listed, WAIT_S, f"2 local and 2 remote replicas of {self.mid}"
        )
        return found

    def finished(self, daemon: NetnsPorchd) -> None:
        """Wait until every pipeline process on h1 finished."""

        def done() -> bool:
            report = status(daemon)
            return report is not None and all(
                p["state"] == "finished" for p in local_processes(report) if p["name"] != self.mid
            )  # fmt: skip

        daemon.wait_until(done, WAIT_S, "every pipeline on h1 finished")


def logged(daemon: NetnsPorchd, pipeline: str, event: str) -> list[dict[str, Any]]:
    """The JSON records of one event in a pipeline's log file (`TIME stderr {...}` lines)."""
    found = []
    for line in daemon.log_path(pipeline).read_text().splitlines():
        if f'"{event}"' in line:
            record = json.loads(line[line.index("{") :])
            if record.get("event") == event:
                found.append(record)
    return found


def status(daemon: NetnsPorchd) -> dict[str, Any] | None:
    """`porchctl status --json`, None while porchd does not answer yet."""
    done = daemon.ctl("status", "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def local_processes(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every local pipeline process in a status (replicas listed flat or under their NAME)."""
    found = []
    for row in report["pipelines"]:
        found.append(row)
        found.extend(row.get("replicas") or [])
    return found


def test_replicas_on_two_hosts_kill_9_of_one(
    tmp_path: Path, hosts: list[Host], porchd_in: StartIn
) -> None:
    h1, h2 = hosts
    graph = Graph(tmp_path, "rx", COUNT)
    d1 = porchd_in(h1, *graph.h1(), name="d1", extra=BEACON)
    d2 = porchd_in(h2, graph.stage("h2"), name="d2", extra=BEACON)

    # One pipeline, 2 + 2 replicas: h1 lists its own two and h2's two, none in conflict.
    local, remote = graph.four(d1)
    assert local.isdisjoint(remote), (local, remote)
    assert d1.status()["daemon"]["discovery"]["conflicts"] == []
    graph.go.touch()

    # Values go through the replicas of both hosts; then h2's porchd dies mid-stream.
    def both_hosts() -> bool:
        got = graph.received(d1)
        pids = {(where, pid) for where, pid, _ in got}
        return {where for where, _ in pids} == {"h1", "h2"} and len(pids) == 4 and (
            len(got) >= COUNT // 10
        )  # fmt: skip

    d1.wait_until(both_hosts, WAIT_S, "output of all 4 replicas at the sink")
    d2.kill()  # SIGKILL porchd; its workers die with it
    at_kill = len(graph.received(d1))
    assert at_kill < COUNT * 0.8, f"the stream was over before the kill ({at_kill} values)"

    graph.finished(d1)
    got = Counter(value for _, _, value in graph.received(d1))
    missing = sorted(set(range(1, COUNT + 1)) - set(got))
    duplicates = sum(got.values()) - len(got)
    after = Counter(where for where, _, _ in graph.received(d1)[at_kill:])
    dropped = d1.pipeline(graph.sink).get("duplicates")  # re-sent ones its inbox knew by origin
    print(
        f"\n{COUNT} values, {at_kill} at the sink when h2 was killed; {duplicates} delivered "
        f"twice, {dropped} dropped as duplicates; after the kill by host: {dict(after)}"
    )
    _, remote = graph.replicas(d1.status())
    assert sorted(remote.values()) == ["withdrawn", "withdrawn"], remote
    assert missing == [], f"{len(missing)} values lost, first {missing[:20]}"
    # the path this is about: h2's replicas were withdrawn (h2 fell silent) and the source
    # handed what they had not acknowledged to h1's
    gone = [e for e in logged(d1, graph.src, "replica_gone") if e["state"] == "withdrawn"]
    assert gone and all(str(e["replica"]) in remote for e in gone), gone
    assert set(got) == set(range(1, COUNT + 1))


def test_a_host_that_comes_back_rejoins_the_pipeline(
    tmp_path: Path, hosts: list[Host], porchd_in: StartIn
) -> None:
    """h2's porchd killed, then started again (same daemon id, so the same replica names):
    its replicas are withdrawn, then used again, and the stream loses nothing. Killed right
    after h2's first output, while a replica's link to the sink may still connect: a replica
    acknowledges an input only once its output is acknowledged, so what died in a killed
    replica's memory outbox is still held by the source and handed on."""
    h1, h2 = hosts
    graph = Graph(tmp_path, "rj", 0)
    d1 = porchd_in(h1, *graph.h1(), name="j1", extra=BEACON)
    d2 = porchd_in(h2, graph.stage("h2"), name="j2", extra=BEACON)
    _, remote = graph.four(d1)
    graph.go.touch()
    d1.wait_until(lambda: any(w == "h2" for w, _, _ in graph.received(d1)), WAIT_S,
                  "output through h2")  # fmt: skip
    d2.kill()
    withdrawn = {name: "withdrawn" for name in remote}
    d1.wait_until(lambda: graph.replicas(d1.status())[1] == withdrawn, WAIT_S,
                  "h2's replicas withdrawn")  # fmt: skip
    before = {pid for where, pid, _ in graph.received(d1) if where == "h2"}
    d2 = porchd_in(h2, graph.stage("h2"), name="j2", extra=BEACON)  # same home: same daemon id
    _, back = graph.four(d1)
    assert set(back) == set(remote), (remote, back)
    d1.wait_until(lambda: {p for w, p, _ in graph.received(d1) if w == "h2"} - before, WAIT_S,
                  "output through h2's new replicas")  # fmt: skip
    graph.stop.touch()
    graph.finished(d1)
    sent = int(Path(f"{graph.stop}.sent").read_text())
    got = {value for _, _, value in graph.received(d1)}
    assert sorted(set(range(1, sent + 1)) - got) == [], f"lost of {sent}"
    assert got <= set(range(1, sent + 1))


def test_one_process_here_and_replicas_there_is_a_loud_conflict(
    tmp_path: Path, hosts: list[Host], porchd_in: StartIn
) -> None:
    """A pipeline without "replicas" keeps today's duplicate rule, also against replicas of
    its name on another host: both hosts say so, naming both, and status lists the conflict."""
    h1, h2 = hosts
    sink = SINK.format(source="rx_up")
    d1 = porchd_in(h1, write(tmp_path / "h1", "rx_dup", sink, replicas=2, source_pipeline_count=1),
                   name="c1", extra=BEACON)  # fmt: skip
    d2 = porchd_in(h2, write(tmp_path / "h2", "rx_dup", sink, source_pipeline_count=1),
                   name="c2", extra=BEACON)  # fmt: skip
    for daemon in (d1, d2):
        record = daemon.wait_until(lambda d=daemon: events(d.stderr, "duplicate_pipeline"),
                                   WAIT_S, "duplicate_pipeline")[0]  # fmt: skip
        assert record["pipeline"] == "rx_dup" and record["level"] == "error", record
        named = " ".join(map(str, record["hosts"]))
        assert h1.address in named and h2.address in named, record
        assert [h1.address in str(h) for h in record["replicas_on"]] == [True], record
        assert "runs as replicas on" in str(record["detail"]), record
    conflicts = d1.status()["daemon"]["discovery"]["conflicts"]
    assert [c["name"] for c in conflicts] == ["rx_dup"], conflicts
    assert not [r for r in d1.status()["remote"] if r["used"]]  # neither kind is used


def test_scaling_down_on_one_host_leaves_the_others_one_replica_fewer(
    tmp_path: Path, hosts: list[Host], porchd_in: StartIn
) -> None:
    """`porchctl scale` on h2 while streaming: h1 drops the replica h2 let go (gone, not
    withdrawn: h2 is still heard), the stream goes on through the rest, nothing is lost."""
    h1, h2 = hosts
    graph = Graph(tmp_path, "sd", 0)
    d1 = porchd_in(h1, *graph.h1(), name="s1", extra=BEACON)
    d2 = porchd_in(h2, graph.stage("h2"), name="s2", extra=BEACON)
    _, remote = graph.four(d1)
    graph.go.touch()
    d1.wait_until(lambda: len({p for w, p, _ in graph.received(d1) if w == "h2"}) == 2,
                  WAIT_S, "output through both h2 replicas")  # fmt: skip
    done = d2.ctl("scale", graph.mid, "1")
    assert done.returncode == 0, done.stderr
    kept = {name: "running" for name in remote if name.endswith("-0")}
    d1.wait_until(lambda: graph.replicas(d1.status())[1] == kept, WAIT_S,
                  f"h1 lists only {sorted(kept)} of h2's")  # fmt: skip
    count = len(graph.received(d1))
    d1.wait_until(lambda: len(graph.received(d1)) > count + 100, WAIT_S, "the stream goes on")
    graph.stop.touch()
    graph.finished(d1)
    sent = int(Path(f"{graph.stop}.sent").read_text())
    got = {value for _, _, value in graph.received(d1)}
    assert sorted(set(range(1, sent + 1)) - got) == [], f"lost of {sent}"
    assert not [e for e in logged(d1, graph.src, "replica_gone") if e["state"] == "withdrawn"]
