"""Hostile input against a keyed cluster: forged, replayed, stale, truncated, oversized and
random beacons; random bytes, half-open connections, partial ZMTP greetings, plain and
wrong-key CURVE peers on every data port; and an intruder host without the key (netns).

Nothing may crash, nothing may be unpickled (the payloads would create a file), the discovery
table and the pipelines' data must not change."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from porch.discovery import Beacon, Entry, encode
from porch.security import (
    HEADER_BYTES,
    KeyRing,
    LinkSecurity,
    new_key,
    read_keyring,
    server_pair,
    sign,
    write_keyring,
)
from porch.wire import FrameKind, encode_header
from tests.integration.conftest import REPO_ROOT, Porchd
from tests.integration.netns import Cluster, StartIn, cluster, porchd_in
from tests.integration.test_discovery import counter, events, printer

__all__ = ["cluster", "porchd_in"]  # fixtures, imported so that pytest finds them here

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

StartDaemon = Callable[..., Porchd]
WAIT_S = 20.0
HANDSHAKE_FAILED = {"HANDSHAKE_FAILED_AUTH", "HANDSHAKE_FAILED_PROTOCOL",
                    "HANDSHAKE_FAILED_NO_DETAIL"}  # fmt: skip
PARTIAL_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03"  # ZMTP 3 signature, then silence


class Exploit:
    """Unpickling this creates a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


# ---- the attacker (also run inside a namespace: python -m tests.integration.test_hostile) --


def _events(monitor: zmq.Socket[bytes], wait_s: float) -> set[str]:
    names = set()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if monitor.poll(100):
            event = recv_monitor_message(monitor)["event"]
            try:
                names.add(str(zmq.Event(event).name))
            except ValueError:
                names.add(str(event))
    return names


def attack(host: str, port: int, exploit: str, server_key: bytes, sender: str) -> dict[str, object]:
    """Everything an attacker without the key can throw at one data port; what it saw."""
    held = []
    for size in (1, 64, 4096, 65536):
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(os.urandom(size))
    for data in (b"", PARTIAL_GREETING):  # half-open: connect, maybe start, never finish
        raw = socket.create_connection((host, port), timeout=5)
        raw.sendall(data)
        held.append(raw)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    payload = [encode_header(FrameKind.HELLO, 1, 7, 0, sender)]
    data = [encode_header(FrameKind.DATA, 1, 7, 1, sender), pickle.dumps(Exploit(exploit))]
    seen: dict[str, object] = {}
    for mode in ("plain", "wrong_key"):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        monitor = sock.get_monitor_socket()
        if mode == "wrong_key":  # knows the server's public key (worst case), not the cluster key
            LinkSecurity(KeyRing((new_key(),))).client(sock)
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.connect(f"tcp://{host}:{port}")
        for frames in (payload, data):
            with contextlib.suppress(zmq.Again):  # queued until a handshake that never succeeds
                sock.send_multipart(frames, zmq.NOBLOCK)
        seen[mode] = sorted(_events(monitor, 2.0))
        seen[f"{mode}_replies"] = sock.poll(200)
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
    ctx.term()
    for raw in held:
        raw.close()
    return seen


def _listening_ports(daemon: Porchd) -> list[int]:
    ports = []
    for child in psutil.Process(daemon.proc.pid).children(recursive=True):
        with_ports = [c.laddr.port for c in child.net_connections("tcp") if c.status == "LISTEN"]
        ports.extend(with_ports)
    return sorted(ports)


def _numbers(lines: list[str]) -> list[int]:
    return [int(line.split()[-1]) for line in lines if line.startswith("got ")]


def _keyed(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    write_keyring(path, KeyRing((new_key(),)), replace=True)
    return path


# ---- beacons -----------------------------------------------------------------------------


def _beacon(name: str, seq: int = 1) -> bytes:
    entry = Entry(name, "tcp://127.0.0.1:9", "running", 1)
    return encode(Beacon(f"evil{seq}", f"evil-origin{seq}", "127.0.0.1", "evil", time.time(),
                         "n", seq, (entry,)))  # fmt: skip


def _oversized(ring: KeyRing) -> bytes:
    import hashlib
    import hmac

    head = b"PRCH\x01\x01" + struct.pack("!4sd16s", bytes.fromhex(ring.current.id), time.time(),
                                         os.urandom(16)) + b"{" + b" " * 62_000  # fmt: skip
    return head + hmac.digest(ring.current.secret, head, hashlib.sha256)


def test_hostile_beacons_are_dropped_counted_and_change_nothing(
    tmp_path: Path, porchd: StartDaemon, private_discovery: int
) -> None:
    key = _keyed(tmp_path)
    ring = read_keyring(key)
    daemon = porchd(printer(tmp_path / "c", "calm_sink", "calm_source"),
                    extra=("--key-file", str(key)))  # fmt: skip
    daemon.wait_running()
    signed = sign(_beacon("evil_replayed"), ring)
    tampered = bytearray(sign(_beacon("evil_tampered", 2), ring))
    tampered[HEADER_BYTES + 30] ^= 0xFF
    hostile = {
        "unsigned": [_beacon("evil_unsigned", 3)],
        "unknown_key": [sign(_beacon("evil_forged", 4), KeyRing((new_key(),)))],
        "bad_signature": [bytes(tampered), signed[:40], signed[:-5]],
        "stale": [sign(_beacon("evil_stale", 5), ring, now=time.time() - 120)],
        "replayed": [signed],  # the first copy (below) is genuine: the test holds the key
        "malformed": [_oversized(ring)],
    }
    junk = [b"", os.urandom(7), os.urandom(1500), os.urandom(65_000)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(signed, ("127.0.0.1", private_discovery))
        for data in [*(d for batch in hostile.values() for d in batch), *junk]:
            sock.sendto(data, ("127.0.0.1", private_discovery))

    def counters() -> dict[str, int]:
        found: dict[str, int] = daemon.status()["daemon"]["discovery"]["rejected"]
        return found

    total = sum(len(v) for v in hostile.values()) + len(junk)
    daemon.wait_until(lambda: sum(counters().values()) >= total, WAIT_S, "every beacon dropped")
    for reason, batch in hostile.items():
        assert counters()[reason] >= len(batch), (reason, counters())
    status = daemon.status()
    names = {r["name"] for r in status["remote"]}
    assert not {n for n in names if n != "evil_replayed"}, names  # only the genuine one got in
    assert daemon.proc.poll() is None
    assert daemon.pipeline("calm_sink", status)["state"] == "waiting for sources"
    assert "dropped" in daemon.ctl("status").stdout


# ---- data ports --------------------------------------------------------------------------


def test_attacks_on_every_data_port_fail_and_are_never_unpickled(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    key = _keyed(tmp_path)
    daemon = porchd(counter(tmp_path / "c", "steady_src", "steady_mid", sleep_s=0.02),
                    pipeline_relay(tmp_path / "c"),
                    printer(tmp_path / "c", "steady_sink", "steady_mid"),
                    extra=("--key-file", str(key)))  # fmt: skip
    daemon.wait_until(lambda: len(daemon.output("steady_sink")) >= 5, WAIT_S, "the stream")
    ports = _listening_ports(daemon)
    assert len(ports) == 2, ports  # steady_mid's and steady_sink's input sockets
    exploit = tmp_path / "exploited"
    server_key = server_pair(read_keyring(key).current).public
    for port in ports:
        seen = attack("127.0.0.1", port, str(exploit), server_key, sender="steady_src")
        assert HANDSHAKE_FAILED & set(seen["wrong_key"]), seen  # type: ignore[arg-type]
        assert HANDSHAKE_FAILED & set(seen["plain"]), seen  # type: ignore[arg-type]
        assert "HANDSHAKE_SUCCEEDED" not in seen["wrong_key"], seen  # type: ignore[operator]
        assert "HANDSHAKE_SUCCEEDED" not in seen["plain"], seen  # type: ignore[operator]
        assert not seen["plain_replies"] and not seen["wrong_key_replies"], seen
    before = len(daemon.output("steady_sink"))
    daemon.wait_until(lambda: len(daemon.output("steady_sink")) >= before + 10, WAIT_S,
                      "the stream goes on after the attacks")  # fmt: skip
    assert not exploit.exists(), "an attacker's payload was unpickled"
    got = _numbers(daemon.output("steady_sink"))
    assert got == list(range(1, len(got) + 1)), "the attacks disturbed the real stream"
    status = daemon.status()
    for name in ("steady_mid", "steady_sink"):
        row = daemon.pipeline(name, status)
        assert row["state"] == "running" and row["restarts"] == 0 and row["bad_frames"] == 0, row


def pipeline_relay(folder: Path) -> str:
    (folder / "steady_mid.py").write_text("def step(d):\n    return d['steady_src']\n")
    config = {"name": "steady_mid", "scripts": ["steady_mid.py"], "source_pipeline_count": 1,
              "target_pipeline_names": ["steady_sink"]}  # fmt: skip
    (folder / "steady_mid.json").write_text(json.dumps(config))
    return str(folder / "steady_mid.json")


# ---- an intruder host without the key ----------------------------------------------------


def test_intruder_host_without_key_gets_nothing_in_or_out(
    tmp_path: Path, cluster: Callable[[int], Cluster], porchd_in: StartIn
) -> None:
    h1, h2, h3 = cluster(3).hosts
    key = _keyed(tmp_path)
    keyed = ("--key-file", str(key))
    sink = porchd_in(h1, printer(tmp_path / "c1", "vault", "feeder"), extra=keyed)
    porchd_in(h2, counter(tmp_path / "c2", "feeder", "vault", sleep_s=0.02), extra=keyed)
    # the intruder runs its own "feeder" (a duplicate name) and a pipeline that wants "vault"
    intruder = porchd_in(h3, counter(tmp_path / "c3", "feeder", "vault", sleep_s=0.02))
    sink.wait_until(lambda: len(sink.output("vault")) >= 10, 30, "keyed data across hosts")
    # the intruder may start later than the keyed pair on a loaded machine: wait for its beacons
    sink.wait_until(lambda: sink.status()["daemon"]["discovery"]["rejected"]["unsigned"] > 0,
                    30, "the intruder's unsigned beacons")  # fmt: skip
    status = sink.status()
    assert status["daemon"]["discovery"]["conflicts"] == [], "an unsigned beacon was believed"
    assert {r["host"] for r in status["remote"]} == {h2.address}, status["remote"]
    assert intruder.status()["remote"] == [], "the intruder learned the keyed pipelines"
    # psutil cannot see sockets of another namespace: the worker's log says where it listens
    endpoint = str(events(sink.stderr, "worker_endpoint")[0]["endpoint"])
    port = int(endpoint.rsplit(":", 1)[1])
    exploit = tmp_path / "exploited"
    server_key = server_pair(read_keyring(key).current).public.decode()
    done = subprocess.run(
        ["ip", "netns", "exec", h3.ns, sys.executable, "-m", "tests.integration.test_hostile",
         h1.address, str(port), str(exploit), server_key],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert HANDSHAKE_FAILED & set(seen["wrong_key"]) and HANDSHAKE_FAILED & set(seen["plain"])
    assert "HANDSHAKE_SUCCEEDED" not in seen["plain"] + seen["wrong_key"], seen
    before = len(sink.output("vault"))
    sink.wait_until(lambda: len(sink.output("vault")) >= before + 10, 30, "the stream goes on")
    assert not exploit.exists(), "the intruder's payload was unpickled"
    got = _numbers(sink.output("vault"))
    assert got == list(range(1, len(got) + 1)), "the intruder's data got in"


if __name__ == "__main__":
    target, port_text, exploit_path, key_text = sys.argv[1:5]
    result = attack(target, int(port_text), exploit_path, key_text.encode(), sender="feeder")
    print(json.dumps(result))
