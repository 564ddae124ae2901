"""The broker's UDP socket in this process: who may share the discovery port, and a static
peer that stays silent is reported (no subprocess; loopback only)."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from porch.broker import SILENT_INTERVALS, Broker, KeySource, NetworkPlan, open_socket
from porch.discovery import Beacon, Entry, encode
from porch.errors import UsageError
from porch.security import KeyRing, new_key, sign
from tests.conftest import free_udp_port

pytestmark = pytest.mark.timeout(30)

RING = KeyRing((new_key(),))
INTERVAL_S = 0.05


def keyed_plan(port: int, peer_port: int) -> NetworkPlan:
    return NetworkPlan("127.0.0.1", (), (("127.0.0.1", peer_port),), port, INTERVAL_S,
                       loopback_only=True, keys=RING, key_source=KeySource.CLUSTER)  # fmt: skip


@pytest.fixture
def brokers() -> Iterator[list[Broker]]:
    made: list[Broker] = []
    yield made
    for broker in made:
        broker.sock.close()


def test_discovery_port_is_shared_by_reuseport_only() -> None:
    """SO_REUSEADDR let another user bind the port too (or 127.0.0.1:PORT) and take beacons;
    SO_REUSEPORT is limited by Linux to one effective uid."""
    port = free_udp_port()
    with open_socket(port) as sock, open_socket(port):  # a second broker of this user: fine
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        for address in ("127.0.0.1", ""):  # a squatter that only knows SO_REUSEADDR
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError, match="in use"):
                    squatter.bind((address, port))


def test_a_silent_static_peer_is_a_warning_and_in_status(brokers: list[Broker]) -> None:
    port, peer_port = free_udp_port(), free_udp_port()
    broker = Broker(keyed_plan(port, peer_port), "o1", list, lambda: None)
    brokers.append(broker)
    start = time.monotonic()
    with capture_logs() as events:
        broker.tick(start + (SILENT_INTERVALS - 1) * INTERVAL_S)
        assert broker.status()["peers_silent"] == []
        broker.tick(start + (SILENT_INTERVALS + 1) * INTERVAL_S)
    assert broker.status()["peers_silent"] == [f"127.0.0.1:{peer_port}"]
    assert [e["peer"] for e in events if e["event"] == "static_peer_silent"] == [
        f"127.0.0.1:{peer_port}"
    ]
    # the peer starts: its first beacon clears the warning
    peer = Broker(keyed_plan(peer_port, port), "o2", list, lambda: None)
    brokers.append(peer)
    peer.send(time.monotonic())
    deadline = time.monotonic() + 5
    while broker.counters["received"] == 0 and time.monotonic() < deadline:
        select.select([broker.sock], [], [], 0.1)
        with capture_logs() as events:
            broker.on_readable()
            broker.tick(time.monotonic())
    assert broker.status()["peers_silent"] == []
    assert [e["event"] for e in events if e["event"].startswith("static_peer")] == [
        "static_peer_heard"
    ]


def test_a_port_another_program_holds_says_how_to_choose_another() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("", 0))  # no SO_REUSEPORT: like another user's broker
        port = holder.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot bind UDP port {port}.*--discovery-port"):
            open_socket(port)


def test_a_beacon_of_1200_pipelines_reaches_a_peer_in_signed_parts(brokers: list[Broker]) -> None:
    """Issue 18: one supervisor announces more pipelines than one datagram holds; its peer
    verifies each part and sees every pipeline (real UDP on loopback)."""
    entries = [Entry(f"pipeline_{i:04d}", f"tcp://127.0.0.1:{20000 + i}", "running", i)
               for i in range(1200)]  # fmt: skip
    port, peer_port = free_udp_port(), free_udp_port()
    sender = Broker(keyed_plan(port, peer_port), "o1", lambda: list(entries), lambda: None)
    receiver = Broker(keyed_plan(peer_port, port), "o2", list, lambda: None)
    brokers += [sender, receiver]
    sender.send(time.monotonic())
    assert sender.counters["sent"] >= 3  # one datagram per part
    deadline = time.monotonic() + 10
    while len(receiver.directory([])) < 1200 and time.monotonic() < deadline:
        select.select([receiver.sock], [], [], 0.1)
        receiver.on_readable()
        receiver.tick(time.monotonic())
    assert sorted(receiver.directory([])) == [e.name for e in entries]
    assert receiver.counters["rejected"] == 0


def test_insecure_on_loopback_is_loud_too(brokers: list[Broker]) -> None:
    """--insecure turns the local secret off: other local users could send pickles."""
    plain = NetworkPlan("127.0.0.1", (), (), free_udp_port(), INTERVAL_S, loopback_only=True,
                        insecure=True)  # fmt: skip
    with capture_logs() as events:
        brokers.append(Broker(plain, "o", list, lambda: None))
    warned = [e for e in events if e["event"] == "insecure_network"]
    assert warned and "other local users" in warned[0]["detail"]


def test_a_newcomer_is_answered_at_once_and_a_full_table_refuses_counted(
    brokers: list[Broker],
) -> None:
    """The Broker's parts wired together: gate, view, sender's schedule, counters."""
    network = replace(keyed_plan(free_udp_port(), free_udp_port()), interval_s=1.0)
    broker = Broker(network, "o1", list, lambda: None)
    brokers.append(broker)
    broker.send(time.monotonic())  # the next beacon is an interval (1 s) away now
    due_s = broker.sender.next_s
    other = Beacon("d2", "o2", "127.0.0.1", "beta", time.time(), "n1", 1,
                   (Entry("pipeline_b", "tcp://127.0.0.1:4000", "running"),))  # fmt: skip

    assert broker._take(sign(encode(other), RING), "127.0.0.1")
    assert broker.sender.next_s < due_s  # a newcomer learns about us at once
    assert broker.counters["received"] == 1 and [r.name for r in broker.remotes()] == ["pipeline_b"]

    broker.table.max_peers = 1
    third = replace(other, daemon_id="d3", origin="o3", nonce="n2")
    assert not broker._take(sign(encode(third), RING), "127.0.0.1")
    assert broker.counters["rejected"] == 1 and broker.status()["rejected"]["table_full"] == 1
