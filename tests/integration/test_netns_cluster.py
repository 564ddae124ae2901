"""Several hosts, as network namespaces joined by a bridge (scripts/netns-cluster): one porchd
per host on its eth0, discovery by broadcast or static peers, links across hosts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.netns import Cluster, NetnsPorchd, StartIn, cluster, porchd_in
from tests.integration.test_discovery import counter, events, pipeline, printer, timestamp

__all__ = ["cluster", "porchd_in"]  # fixtures, imported so that pytest finds them here

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MakeCluster = Callable[[int], Cluster]
WAIT_S = 30.0

STOPPING_SOURCE = """
    import time
    import porch
    n = 0
    def step():
        global n
        n += 1
        time.sleep(0.02)
        if n == {count}:
            porch.stop()
        return n
"""
MAP = """
    def step(input_data):
        return {expr}
"""
JOIN = """
    def step(input_data):
        print("sum", input_data["dia_dbl"] + input_data["dia_sq"])
"""


def numbers(lines: list[str]) -> list[int]:
    return [int(line.split()[-1]) for line in lines if line.startswith("got ")]


def iterations(daemon: NetnsPorchd, name: str) -> int:
    """A pipeline's iterations, 0 while porchd does not answer yet."""
    done = daemon.ctl("status", "--json")
    if done.returncode != 0:
        return 0
    return int(daemon.pipeline(name, json.loads(done.stdout))["iterations"])


def test_diamond_over_three_hosts(tmp_path: Path, cluster: MakeCluster, porchd_in: StartIn):
    h1, h2, h3 = cluster(3).hosts
    count = 20
    src = pipeline(tmp_path / "h1", "dia_src", STOPPING_SOURCE.format(count=count),
                   targets=("dia_dbl", "dia_sq"))  # fmt: skip
    join = pipeline(tmp_path / "h1", "dia_join", JOIN, sources=2)
    dbl = pipeline(tmp_path / "h2", "dia_dbl", MAP.format(expr='input_data["dia_src"] * 2'),
                   sources=1, targets=("dia_join",))  # fmt: skip
    sq = pipeline(tmp_path / "h3", "dia_sq", MAP.format(expr='input_data["dia_src"] ** 2'),
                  sources=1, targets=("dia_join",))  # fmt: skip
    d1 = porchd_in(h1, src, join)
    d2 = porchd_in(h2, dbl)
    porchd_in(h3, sq)
    d1.wait_until(lambda: len(d1.output("dia_join")) >= count, WAIT_S, "20 sums")
    assert d1.output("dia_join") == [f"sum {2 * n + n * n}" for n in range(1, count + 1)]
    assert d1.wait_until(lambda: d1.pipeline("dia_join")["state"] == "finished", WAIT_S, "end")
    remote = {r["name"]: r for r in d1.status()["remote"]}
    assert remote["dia_dbl"]["host"] == h2.address and remote["dia_sq"]["host"] == h3.address
    seen = [e for e in events(d1.stderr, "remote_pipeline")
            if e["pipeline"] == "dia_dbl" and e["endpoint"]]  # fmt: skip
    ready = [e for e in events(d2.stderr, "worker_endpoint") if e["pipeline"] == "dia_dbl"]
    convergence_ms = (timestamp(seen[0]) - timestamp(ready[0])) * 1000
    print(f"\nconvergence across hosts: {convergence_ms:.0f} ms (beacon interval 1 s)")
    assert convergence_ms < 2000


def test_porchd_killed_and_restarted_mid_stream(
    tmp_path: Path, cluster: MakeCluster, porchd_in: StartIn
) -> None:
    h1, h2 = cluster(2).hosts
    porchd_in(h1, counter(tmp_path / "h1", "src_r", "sink_r"))
    sink = printer(tmp_path / "h2", "sink_r", "src_r")
    d2 = porchd_in(h2, sink, name="h2")
    d2.wait_until(lambda: len(d2.output("sink_r")) >= 5, WAIT_S, "first output")
    d2.kill()  # SIGKILL porchd; its workers die with it
    before = numbers(d2.output("sink_r"))
    again = porchd_in(h2, sink, name="h2")  # same control socket: it replaces its old self
    again.wait_until(lambda: len(numbers(again.output("sink_r"))) >= len(before) + 5, WAIT_S,
                     "output resumed after the restart")  # fmt: skip
    after = numbers(again.output("sink_r"))[len(before) :]
    assert after == sorted(after) and after[0] > before[-1], (before, after)


def test_late_joining_host_gets_what_was_held(
    tmp_path: Path, cluster: MakeCluster, porchd_in: StartIn
) -> None:
    h1, h2, h3 = cluster(3).hosts
    porchd_in(h1, counter(tmp_path / "h1", "src_l", "mid_l"))
    mid = pipeline(tmp_path / "h2", "mid_l", MAP.format(expr='input_data["src_l"]'), sources=1,
                   targets=("sink_l",))  # fmt: skip
    d2 = porchd_in(h2, mid)
    d2.wait_until(lambda: iterations(d2, "mid_l") >= 10, WAIT_S, "mid_l running")
    time.sleep(3.0)  # the scenario: the third host joins seconds later
    d3 = porchd_in(h3, printer(tmp_path / "h3", "sink_l", "mid_l"))
    d3.wait_until(lambda: len(d3.output("sink_l")) >= 40, WAIT_S, "sink_l output")
    got = numbers(d3.output("sink_l"))
    assert got[:40] == list(range(1, 41)), got[:45]


def test_link_cut_and_restored(tmp_path: Path, cluster: MakeCluster, porchd_in: StartIn):
    net = cluster(2)
    h1, h2 = net.hosts
    d1 = porchd_in(h1, counter(tmp_path / "h1", "src_c", "sink_c"))
    d2 = porchd_in(h2, printer(tmp_path / "h2", "sink_c", "src_c"))
    d2.wait_until(lambda: len(d2.output("sink_c")) >= 5, WAIT_S, "first output")
    net.cut(h2)
    d1.wait_until(lambda: events(d1.stderr, "remote_pipeline_withdrawn"), WAIT_S, "withdrawn")
    cut_at = len(d2.output("sink_c"))
    net.restore(h2)
    d2.wait_until(lambda: len(d2.output("sink_c")) >= cut_at + 10, WAIT_S, "output resumed")
    got = numbers(d2.output("sink_c"))
    assert got == sorted(got), got


def test_static_peers_without_broadcast(
    tmp_path: Path, cluster: MakeCluster, porchd_in: StartIn
) -> None:
    h1, h2 = cluster(2).hosts
    port = os.environ["PORCH_DISCOVERY_PORT"]
    nobody = h1.address.rsplit(".", 1)[0] + ".250"  # inside the cluster's subnet, down
    d1 = porchd_in(h1, counter(tmp_path / "h1", "src_p", "sink_p"),
                   extra=("--no-broadcast", "--peer", f"{h2.address}:{port}",
                          "--peer", f"{nobody}:{port}"))  # fmt: skip
    d2 = porchd_in(h2, printer(tmp_path / "h2", "sink_p", "src_p"),
                   extra=("--no-broadcast", "--peer", f"{h1.address}:{port}"))  # fmt: skip
    d2.wait_until(lambda: len(d2.output("sink_p")) >= 5, WAIT_S, "output by peers only")
    discovery = d1.status()["daemon"]["discovery"]
    assert discovery["broadcasts"] == [] and len(discovery["peers"]) == 2
    assert numbers(d2.output("sink_p"))[:5] == [1, 2, 3, 4, 5]


def test_duplicate_name_across_hosts(tmp_path: Path, cluster: MakeCluster, porchd_in: StartIn):
    h1, h2, h3 = cluster(3).hosts
    d1 = porchd_in(h1, printer(tmp_path / "h1", "dupx", "dup_src"))
    d2 = porchd_in(h2, printer(tmp_path / "h2", "dupx", "dup_src"))
    for daemon in (d1, d2):
        record = daemon.wait_until(lambda d=daemon: events(d.stderr, "duplicate_pipeline"),
                                   WAIT_S, "duplicate_pipeline")[0]  # fmt: skip
        hosts = " ".join(map(str, record["hosts"]))
        assert h1.address in hosts and h2.address in hosts, record
    d3 = porchd_in(h3, counter(tmp_path / "h3", "dup_src", "dupx"))
    d3.wait_until(lambda: iterations(d3, "dup_src") >= 5, WAIT_S, "source running")
    conflicts = d3.status()["daemon"]["discovery"]["conflicts"]
    assert [c["name"] for c in conflicts] == ["dupx"]
    time.sleep(2.0)  # give a wrong link time to show
    assert d1.output("dupx") == [] and d2.output("dupx") == []
