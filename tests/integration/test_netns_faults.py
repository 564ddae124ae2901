"""Faults between hosts (issue 20): link cuts, key rotation, cloned hosts, several networks.

One cluster of four namespace hosts serves every test of this module (netns-cluster up is
slow): h1, h2, h3 share the first network; h4 reaches only h1, over a second one (eth1).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from porch.security import KeyRing, new_key, write_keyring
from tests.integration.netns import Cluster, Host, NetnsPorchd, StartIn, porchd_in, require_netns
from tests.integration.test_discovery import counter, events, printer
from tests.integration.test_netns_cluster import numbers

__all__ = ["porchd_in"]  # a fixture, imported so that pytest finds it here

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("netns_faults"),
    pytest.mark.timeout(150),
]

WAIT_S = 30.0
BEACON_S = 1.0  # porchd's default beacon interval
CUT_S = 7.0  # TCP retransmits at ~6.2 s and ~12.6 s into a cut: without heartbeats, ~6 s late
RESUME_MARGIN_S = 1.5  # start-up of a fresh connection on a loaded machine


@dataclass(frozen=True)
class Hosts:
    net: Cluster
    h1: Host
    h2: Host
    h3: Host
    h1b: Host  # h1 on the second network
    h4: Host  # only on the second network


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    require_netns()
    net = Cluster(f"pf{uuid.uuid4().hex[:6]}", 4)
    try:
        h1, h2, h3, h4 = net.hosts
        h1b, h4b = net.second_network(h1, h4)
        yield Hosts(net, h1, h2, h3, h1b, h4b)
    finally:
        net.down()


def target_of(daemon: NetnsPorchd, pipeline: str, target: str) -> dict[str, object] | None:
    """The status of one output link of a pipeline (None while porchd has no report yet)."""
    found = [t for t in daemon.pipeline(pipeline).get("targets", []) if t["name"] == target]
    return found[0] if found else None


def test_cut_link_resumes_within_two_beacon_intervals_and_status_says_why(
    tmp_path: Path, hosts: Hosts, porchd_in: StartIn
) -> None:
    """20.2 and 20.7: during a cut the source shows its target unreachable (since when, how
    many messages held) and the remote table shows it withdrawn; after the link returns the
    flow resumes within two beacon intervals, not on TCP's retransmit backoff."""
    d1 = porchd_in(hosts.h1, counter(tmp_path / "h1", "src_k", "sink_k"))
    d2 = porchd_in(hosts.h2, printer(tmp_path / "h2", "sink_k", "src_k"))
    d2.wait_until(lambda: len(d2.output("sink_k")) >= 5, WAIT_S, "first output")
    hosts.net.cut(hosts.h2)
    cut_at = time.monotonic()
    try:

        def unreachable() -> dict[str, object] | None:
            link = target_of(d1, "src_k", "sink_k")
            held = link["held"] if link is not None else 0
            return link if link and link["state"] == "unreachable" and held else None

        link = d1.wait_until(unreachable, WAIT_S, "src_k -> sink_k unreachable")
        assert abs(float(link["since"]) - time.time()) < CUT_S, link
        status = d1.status()
        remote = {r["name"]: r for r in status["remote"]}
        assert remote["sink_k"]["state"] == "withdrawn", remote
        warning = d1.pipeline("src_k", status)["warning"]  # porch run's footer shows it too
        assert "target 'sink_k' unreachable since" in warning, warning
        assert remote["sink_k"]["withdrawn_since"] is not None, remote
        table = d1.ctl("status").stdout
        assert "running, target unreachable" in table, table
        assert "src_k -> sink_k: unreachable since" in table and "messages held" in table, table
        time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))  # the scenario: a long cut
        before = len(d2.output("sink_k"))
    finally:
        hosts.net.restore(hosts.h2)
    restored = time.monotonic()
    d2.wait_until(lambda: len(d2.output("sink_k")) > before, WAIT_S, "output resumed")
    resumed_s = time.monotonic() - restored
    print(f"\nflow resumed {resumed_s:.2f} s after a {CUT_S:g} s cut (beacon interval 1 s)")
    assert resumed_s < 2 * BEACON_S + RESUME_MARGIN_S, resumed_s
    d2.wait_until(lambda: len(d2.output("sink_k")) >= before + 10, WAIT_S, "10 more")
    got = numbers(d2.output("sink_k"))
    assert got == list(range(1, len(got) + 1)), got  # nothing lost, nothing twice
    link = d1.wait_until(
        lambda: (t := target_of(d1, "src_k", "sink_k")) and t["state"] == "connected" and t,
        WAIT_S, "connected again",
    )  # fmt: skip
    assert link["since"] is None, link
    assert not any(r["state"] == "withdrawn" for r in d1.status()["remote"])


def restarted(daemon: NetnsPorchd, name: str) -> None:
    """`porchctl restart NAME`, and wait until its new worker runs (the old one has exited)."""
    before = daemon.pipeline(name)["pid"]
    assert daemon.ctl("restart", name).returncode == 0
    daemon.wait_until(lambda: daemon.pipeline(name)["pid"] not in (None, before), WAIT_S,
                      f"{name} restarted")  # fmt: skip


def test_key_rotation_worker_serves_the_key_its_porchd_announces(
    tmp_path: Path, hosts: Hosts, porchd_in: StartIn
) -> None:
    """20.4: a worker restarted after its key file was promoted (porchd not restarted) is
    still reachable; a handshake that cannot succeed is logged and counted on both ends."""
    old = KeyRing((new_key(),)).add()  # rotation step 1 on every host: [current, next]
    promoted = old.promote()  # step 2, copied to h2 only (its porchd keeps running)
    k1, k2 = tmp_path / "h1.key", tmp_path / "h2.key"
    write_keyring(k1, old, replace=True)
    write_keyring(k2, old, replace=True)
    d1 = porchd_in(hosts.h1, counter(tmp_path / "h1", "src_r", "sink_r"),
                   extra=("--key-file", str(k1)))  # fmt: skip
    d2 = porchd_in(hosts.h2, printer(tmp_path / "h2", "sink_r", "src_r"),
                   extra=("--key-file", str(k2)))  # fmt: skip
    d2.wait_until(lambda: len(d2.output("sink_r")) >= 5, WAIT_S, "first output")
    write_keyring(k2, promoted, replace=True)
    restarted(d2, "sink_r")
    count = len(d2.output("sink_r"))
    d2.wait_until(lambda: len(d2.output("sink_r")) >= count + 10, WAIT_S,
                  "output after the restart with the promoted key")  # fmt: skip
    # A key h1 does not have at all: the handshake fails, and both ends say so.
    write_keyring(k2, promoted.add().promote(), replace=True)
    restarted(d2, "sink_r")
    d1.wait_until(lambda: d1.pipeline("src_r")["handshakes_failed"] > 0, WAIT_S,
                  "handshakes_failed counted by the source")  # fmt: skip
    d2.wait_until(lambda: d2.pipeline("sink_r")["handshakes_rejected"] > 0, WAIT_S,
                  "handshakes_rejected counted by the target")  # fmt: skip
    logged = d1.wait_until(lambda: [line for line in d1.log_path("src_r").read_text().splitlines()
                                    if '"handshake_failed"' in line], WAIT_S,
                           "handshake_failed logged by the source")  # fmt: skip
    assert "copy the newest key file" in logged[0], logged
    d2.wait_until(lambda: '"handshake_rejected"' in d2.log_path("sink_r").read_text(),
                  WAIT_S, "handshake_rejected logged by the target")  # fmt: skip
    link = target_of(d1, "src_r", "sink_r")
    assert link is not None and link["state"] == "handshake failing", link


def test_cloned_hosts_same_hostname_and_control_path(
    tmp_path: Path, hosts: Hosts, porchd_in: StartIn
) -> None:
    """20.5: two hosts with one host name and one control socket path (cloned images) are two
    daemons to a third host: it shows both pipelines, steadily, without flapping."""
    same = tmp_path / "same"  # the one control socket folder both "images" use
    d1 = porchd_in(hosts.h1, printer(tmp_path / "h1", "clone_a", "nobody_a"), control_at=same)
    d2 = porchd_in(hosts.h2, printer(tmp_path / "h2", "clone_b", "nobody_b"), control_at=same)
    d3 = porchd_in(hosts.h3, printer(tmp_path / "h3", "watch_c", "nobody_c"))

    def both() -> dict[str, dict[str, object]] | None:
        if not d3.control.exists() or d3.ctl("status", "--json").returncode != 0:
            return None
        remote = {r["name"]: r for r in d3.status()["remote"]}
        return remote if {"clone_a", "clone_b"} <= set(remote) else None

    d3.wait_until(both, WAIT_S, "both cloned hosts' pipelines")
    deadline = time.monotonic() + 4 * BEACON_S  # several beacons of each: no flapping
    while time.monotonic() < deadline:
        remote = both()
        assert remote is not None, d3.report()
        assert remote["clone_a"]["state"] != "withdrawn" and remote["clone_b"]["state"] != (
            "withdrawn"
        ), remote
        time.sleep(0.2)
    assert not [e for e in events(d3.stderr, "remote_pipeline_withdrawn")
                if str(e["pipeline"]).startswith("clone_")], d3.report()  # fmt: skip
    ids = [(d.state_dir / "daemon-id").read_text().strip() for d in (d1, d2)]
    remote = both()
    assert remote is not None
    assert ids[0] != ids[1] and [remote["clone_a"]["origin"], remote["clone_b"]["origin"]] == ids


def test_several_interfaces_each_peer_uses_the_one_it_reaches(
    tmp_path: Path, hosts: Hosts, porchd_in: StartIn
) -> None:
    """20.6: h1 is on two networks (--interface twice); h4 reaches it only on the second, h2
    only on the first: each gets the endpoint on its own network and its data arrives."""
    d1 = porchd_in(hosts.h1, printer(tmp_path / "h1", "sink_m", "src_m"),
                   printer(tmp_path / "h1", "sink_n", "src_n"),
                   extra=("--interface", "eth0", "--interface", "eth1"))  # fmt: skip
    d4 = porchd_in(hosts.h4, counter(tmp_path / "h4", "src_m", "sink_m"))
    porchd_in(hosts.h2, counter(tmp_path / "h2", "src_n", "sink_n"))
    d1.wait_until(lambda: len(d1.output("sink_m")) >= 5, WAIT_S, "output from the 2nd network")
    d1.wait_until(lambda: len(d1.output("sink_n")) >= 5, WAIT_S, "output from the 1st network")
    remote = {r["name"]: r for r in d4.status()["remote"]}
    assert str(remote["sink_m"]["endpoint"]).startswith(f"tcp://{hosts.h1b.address}:"), remote
    assert remote["sink_m"]["host"] == hosts.h1b.address and remote["sink_m"]["used"], remote
    discovery = d1.status()["daemon"]["discovery"]
    assert discovery["data_hosts"] == [hosts.h1.address, hosts.h1b.address], discovery
