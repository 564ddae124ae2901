"""The broker's beacon socket: what goes out and when (BeaconSender), what comes in and is let
through (read_datagrams, BeaconGate), and the static peers that should be heard (StaticPeers).

No table and no policy about remote pipelines here (porch/remote_view.py holds those); the
Broker (porch/broker.py) wires these parts to one UDP socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from porch import logs
from porch.discovery import Beacon, DiscoveryError, decode, encode_parts
from porch.errors import UsageError
from porch.security import REJECT_REASONS as VERIFY_REASONS
from porch.security import BeaconRejected, BeaconVerifier, KeyRing, sign

log = logs.get("porch.discovery")

MIN_GAP_S = 0.05  # between two beacons sent "at once": a burst of changes makes one beacon
RECV_BATCH = 64
RECV_BYTES = 65_535
RECV_BUDGET_S = 0.02
PEER_RESOLVE_S = 30.0
MAX_WARNED = 256  # (source, reason) pairs a broker warns about once each
SILENT_INTERVALS = 5  # a static peer not heard for this many beacon intervals is reported
# why a datagram is dropped (status counts each): the gate's own reasons, the verifier's
# (porch/security.py), and the table's bounds
REJECT_REASONS = ("not_loopback", "malformed", *VERIFY_REASONS, "table_full")
QUIET_REASONS = ("not_loopback", "replayed")  # rejected without a warning: normal, or a flood


def is_loopback(address: str) -> bool:
    """Whether an address (not a name) is a loopback address."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def resolve_host(host: str) -> str:
    """A peer's IPv4 address; UsageError naming the peer when it has none."""
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])
    except (OSError, IndexError, UnicodeError) as exc:
        raise UsageError(f"peer: cannot resolve {host!r}: {exc}") from None


class BeaconSender:
    """Sends beacons every interval, and at once (at most one per MIN_GAP_S) when asked, to
    every broadcast address and static peer; counts what went and what failed."""

    def __init__(self, sock: socket.socket, port: int, broadcasts: Sequence[str],
                 peers: Sequence[tuple[str, int]], interval_s: float,
                 keys: KeyRing | None) -> None:  # fmt: skip
        self.sock = sock
        self.port = port
        self.broadcasts = tuple(broadcasts)
        self.peers = tuple(peers)
        self.interval_s = interval_s
        self.keys = keys
        self.sent = 0
        self.errors = 0
        self.next_s = 0.0  # when the next beacon is due (monotonic)
        self._last_s = 0.0
        self._addresses: dict[str, tuple[str, float]] = {}  # host -> (address, valid until)

    def soon(self) -> None:
        """Send the next beacon now, or MIN_GAP_S after the last one."""
        self.next_s = min(self.next_s, self._last_s + MIN_GAP_S)

    def send(self, beacon: Beacon, now: float) -> None:
        """Send one beacon (one datagram, or its parts) to every broadcast address and peer."""
        self._last_s = now
        self.next_s = now + self.interval_s
        try:
            parts = encode_parts(beacon)
        except DiscoveryError as exc:
            log.error("beacon_not_sent", reason=str(exc))
            return
        for address in self._destinations():  # signed one by one: each datagram a fresh nonce
            for data in parts:
                self._send_to(data if self.keys is None else sign(data, self.keys), address)

    def known_address(self, host: str) -> str:
        """The address a static peer was last resolved to (the host itself before that)."""
        return self._addresses.get(host, (host, 0.0))[0]

    def _destinations(self) -> list[tuple[str, int]]:
        found = [(b, self.port) for b in self.broadcasts]
        for host, port in self.peers:
            address = self._peer_address(host)
            if address is not None:
                found.append((address, port))
        return found

    def _peer_address(self, host: str) -> str | None:
        cached = self._addresses.get(host)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            address = resolve_host(host)
        except UsageError as exc:
            log.debug("peer_unresolved", peer=host, reason=str(exc))
            return cached[0] if cached else None
        self._addresses[host] = (address, time.monotonic() + PEER_RESOLVE_S)
        return address

    def _send_to(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, address)
            self.sent += 1
        except OSError as exc:  # a peer that is down or unreachable: try again next time
            self.errors += 1
            log.debug("beacon_send_failed", to=f"{address[0]}:{address[1]}", reason=str(exc))


def read_datagrams(sock: socket.socket) -> Iterator[tuple[bytes, str]]:
    """The datagrams waiting now, with their source address: at most RECV_BATCH, or
    RECV_BUDGET_S of work (the caller's included), so that a flood leaves the loop time for
    porchctl and the workers."""
    deadline = time.monotonic() + RECV_BUDGET_S
    for _ in range(RECV_BATCH):
        if time.monotonic() > deadline:
            return
        try:
            data, source = sock.recvfrom(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. ECONNREFUSED from an earlier send to a down peer
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                log.debug("beacon_receive_failed", reason=str(exc))
            continue
        yield data, source[0]


class BeaconGate:
    """Which datagrams become beacons: from loopback only when `loopback_only` (no cluster
    key), verified when there are keys, and decodable. The others are counted by reason and
    warned about once per (source, reason), at most MAX_WARNED pairs."""

    def __init__(self, loopback_only: bool, keys: KeyRing | None) -> None:
        self.loopback_only = loopback_only
        self.verifier = BeaconVerifier(keys) if keys is not None else None
        self.received = 0  # beacons taken into the table
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._warned: set[tuple[str, str]] = set()

    @property
    def rejected_total(self) -> int:
        """Datagrams rejected, every reason."""
        return sum(self.rejected.values())

    def admit(self, data: bytes, source: str) -> Beacon | None:
        """The beacon a datagram holds (with the key that signed it and its source), or None
        when it is rejected (counted, and said)."""
        if self.loopback_only and not is_loopback(source):
            self.reject(source, "not_loopback", "not from loopback (no cluster key)")
            return None
        key_id = None
        if self.verifier is not None:
            try:
                data, key_id = self.verifier.verify(data)
            except BeaconRejected as exc:
                self.reject(source, exc.reason, str(exc))
                return None
        try:
            beacon = decode(data)
        except DiscoveryError as exc:
            self.reject(source, "malformed", str(exc))
            return None
        return replace(beacon, key_id=key_id, source=source)

    def reject(self, source: str, reason: str, detail: str) -> None:
        """Count a rejected datagram; warn the first time a source is rejected for a reason."""
        self.rejected[reason] += 1
        first = (source, reason) not in self._warned and len(self._warned) < MAX_WARNED
        if first and reason not in QUIET_REASONS:
            self._warned.add((source, reason))  # a key mismatch is worth one warning per host
            log.warning("beacon_rejected", source=source, reason=reason, detail=detail)
        else:
            log.debug("beacon_rejected", source=source, reason=reason, detail=detail,
                      total=self.rejected_total)  # fmt: skip


class StaticPeers:
    """The static peers whose beacons should come: one silent for SILENT_INTERVALS beacon
    intervals is warned about once, and again when it is heard; a peer whose beacons never
    arrive is a misconfiguration (or someone swallowing them), not something to wait on."""

    def __init__(self, peers: Sequence[tuple[str, int]], interval_s: float,
                 address_of: Callable[[str], str], now: float) -> None:  # fmt: skip
        self.peers = tuple(peers)
        self.limit_s = SILENT_INTERVALS * interval_s
        self.address_of = address_of  # a peer's host -> the address its beacons come from
        self.started = now
        self.silent: set[str] = set()  # "host:port" of the peers reported silent
        self._heard: dict[str, float] = {}  # source address -> when a good beacon came

    def heard(self, source: str, now: float) -> None:
        """A good beacon came from `source` (remembered for at most MAX_WARNED addresses)."""
        if self.peers and (len(self._heard) < MAX_WARNED or source in self._heard):
            self._heard[source] = now

    def check(self, now: float) -> None:
        """Warn about the peers that fell silent, and about those heard again."""
        for host, port in self.peers:
            name = f"{host}:{port}"
            heard = self._heard.get(self.address_of(host), self.started)
            if now - heard > self.limit_s and name not in self.silent:
                self.silent.add(name)
                log.warning("static_peer_silent", peer=name, silent_s=round(now - heard, 1),
                            detail="no valid beacon from this peer; is porch running there, "
                            "with the same key and discovery port?")  # fmt: skip
            elif now - heard <= self.limit_s and name in self.silent:
                self.silent.discard(name)
                log.warning("static_peer_heard", peer=name)
