"""Every test gets its own discovery port, no user prefs and its own state base (so its own
local secret, shared by the porch and porchd it starts), so concurrent test runs (and a porchd
on this machine) never see each other's pipelines; no traffic leaves loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

NETWORK_VARIABLES = ("PORCH_INTERFACE", "PORCH_PEERS", "PORCH_KEY_FILE", "PORCH_BROADCAST",
                     "PORCH_BEACON_INTERVAL")  # fmt: skip


def free_udp_port() -> int:
    """A UDP port nothing on this host uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
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
