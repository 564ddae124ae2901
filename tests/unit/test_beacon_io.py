"""The broker's beacon socket parts in this process: the gate that lets beacons in, the
sender's schedule and counters, the static peers' watch (loopback UDP only, no subprocess)."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from porch.beacon_io import (
    MIN_GAP_S,
    SILENT_INTERVALS,
    BeaconGate,
    BeaconSender,
    StaticPeers,
    read_datagrams,
)
from porch.directory import Entry
from porch.discovery import Beacon, encode
from porch.security import KeyRing, new_key, sign

pytestmark = pytest.mark.timeout(10)

RING = KeyRing((new_key(),))
BEACON = Beacon("d1", "o1", "10.0.0.1", "alpha", 1000.0, "n1", 1,
                (Entry("pipeline_a", "tcp://10.0.0.1:4000", "running"),))  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def test_the_gate_lets_a_signed_beacon_in_with_its_key_and_source() -> None:
    gate = BeaconGate(loopback_only=True, keys=RING)

    taken = gate.admit(sign(encode(BEACON), RING), "127.0.0.1")

    assert taken is not None and taken.entries == BEACON.entries
    assert (taken.key_id, taken.source) == (RING.current.id, "127.0.0.1")
    assert gate.rejected_total == 0


def test_the_gate_counts_each_rejection_by_reason_and_warns_once_per_source() -> None:
    gate = BeaconGate(loopback_only=True, keys=RING)
    with capture_logs() as events:
        for _ in range(3):
            assert gate.admit(encode(BEACON), "127.0.0.2") is None  # unsigned
        assert gate.admit(b"PRCH\x01\x00{", "127.0.0.3") is None  # not a signed envelope
        assert gate.admit(sign(encode(BEACON), RING), "10.0.0.9") is None  # not loopback

    assert gate.rejected["unsigned"] == 4 and gate.rejected["not_loopback"] == 1
    assert gate.rejected_total == 5
    warned = [(e["source"], e["reason"]) for e in events if e["log_level"] == "warning"]
    assert warned == [("127.0.0.2", "unsigned"), ("127.0.0.3", "unsigned")]  # not_loopback: quiet


def test_without_keys_the_gate_takes_plain_beacons_and_refuses_garbage() -> None:
    gate = BeaconGate(loopback_only=False, keys=None)

    assert gate.admit(encode(BEACON), "10.0.0.9") is not None
    assert gate.admit(b"garbage", "10.0.0.9") is None
    assert gate.rejected["malformed"] == 1


def test_the_sender_reaches_each_destination_and_keeps_its_schedule(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        sender = BeaconSender(out, port, ("127.0.0.1",), (("localhost", port),), 1.0, RING)
        sender.send(BEACON, now=100.0)
        assert sender.sent == 2 and sender.errors == 0  # broadcast address, then the peer
        assert sender.next_s == 101.0
        sender.soon()  # a change: the next one goes MIN_GAP_S after the last, not an interval
        assert sender.next_s == 100.0 + MIN_GAP_S
        assert sender.known_address("localhost") == "127.0.0.1"
        assert sender.known_address("elsewhere") == "elsewhere"  # never resolved

    got: list[tuple[bytes, str]] = []
    while len(got) < 2 and select.select([udp], [], [], 5)[0]:
        got += read_datagrams(udp)
    gate = BeaconGate(loopback_only=True, keys=RING)
    taken = [gate.admit(data, source) for data, source in got]
    assert [(b.daemon_id, b.source) for b in taken if b is not None] == [("d1", "127.0.0.1")] * 2


def test_a_send_that_fails_is_counted_not_raised() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        sender = BeaconSender(out, 9, ("203.0.113.255",), (), 1.0, None)
        out.close()  # every sendto fails now
        sender.send(BEACON, now=0.0)

    assert (sender.sent, sender.errors) == (0, 1)


def test_a_static_peer_silent_too_long_is_reported_once_and_cleared_when_heard() -> None:
    peers = StaticPeers((("peer", 5557),), 1.0, {"peer": "10.0.0.2"}.get, now=0.0)  # type: ignore[arg-type]
    limit = SILENT_INTERVALS * 1.0
    with capture_logs() as events:
        peers.check(limit - 0.1)
        assert peers.silent == set()
        peers.check(limit + 0.1)
        peers.check(limit + 0.2)  # once
        assert peers.silent == {"peer:5557"}
        peers.heard("10.0.0.2", limit + 1)
        peers.check(limit + 1.5)
    assert peers.silent == set()
    assert [e["event"] for e in events] == ["static_peer_silent", "static_peer_heard"]


def test_without_static_peers_nothing_is_remembered_of_sources() -> None:
    peers = StaticPeers((), 1.0, str, now=0.0)
    peers.heard("10.0.0.2", 1.0)
    peers.check(1000.0)
    assert peers.silent == set()


def test_a_peer_on_another_beacon_version_is_refused_and_said_once() -> None:
    """The version decision (README, Run on several hosts): refused, never guessed at."""
    gate = BeaconGate(loopback_only=False, keys=None)
    newer = b"PRCH\x02" + encode(BEACON)[5:]
    with capture_logs() as events:
        assert gate.admit(newer, "10.0.0.7") is None
        assert gate.admit(newer, "10.0.0.7") is None

    assert gate.rejected["malformed"] == 2
    warned = [e for e in events if e["log_level"] == "warning"]
    assert len(warned) == 1 and "unsupported beacon version 2" in warned[0]["detail"]
