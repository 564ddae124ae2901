"""Every test gets its own discovery port, no user prefs and its own state base (so its own
local secret, shared by the porch and porchd it starts), so concurrent test runs (and a porchd
on this machine) never see each other's pipelines; no traffic leaves loopback.

`make test` runs tests in parallel (pytest-xdist): each port a test takes stays locked
(a lock file per port, for every test process of this user) until the test ends, so two tests
never get one port in the moment before their porchd binds it."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NETWORK_VARIABLES = ("PORCH_INTERFACE", "PORCH_PEERS", "PORCH_KEY_FILE", "PORCH_BROADCAST",
                     "PORCH_BEACON_INTERVAL")  # fmt: skip


PORT_LOCKS = Path(tempfile.gettempdir()) / f"porch-test-ports-{os.getuid()}"
_held_ports: list[int] = []  # the lock files' descriptors of the running test's ports


def free_udp_port() -> int:
    """A UDP port nothing on this host uses right now and no other running test holds."""
    PORT_LOCKS.mkdir(exist_ok=True)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        fd = os.open(PORT_LOCKS / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another test's, not bound yet (or between two porchds)
            os.close(fd)
            continue
        _held_ports.append(fd)
        return port


@pytest.fixture(autouse=True)
def private_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """PORCH_DISCOVERY_PORT is a free port, PORCH_PREFS a file that does not exist,
    PORCH_STATE_DIR a folder of this test."""
    port = free_udp_port()
    monkeypatch.setenv("PORCH_DISCOVERY_PORT", str(port))
    monkeypatch.setenv("PORCH_PREFS", str(tmp_path / "no-prefs.toml"))
    monkeypatch.setenv("PORCH_STATE_DIR", str(tmp_path / "state-base"))
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield port
    while _held_ports:
        os.close(_held_ports.pop())  # releases the lock
