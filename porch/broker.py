"""The UDP side of discovery: one socket per supervisor that sends this host's beacons and
merges the others' into a table (porch/discovery.py) the supervisor hands to its workers.

Every supervisor (porchd, and `porch run`'s embedded one) is a broker. Its socket is bound to
("", discovery port) with SO_REUSEPORT and SO_BROADCAST, so several brokers of one user on one
host all receive the broadcasts, and no other user can bind the port. Beacons go to the broadcast
address of each data interface (loopback: 127.255.255.255) and by unicast to each static peer,
every beacon interval and at once when the local pipelines change.

Every beacon is signed (porch/security.py), with the cluster key or else this user's local
secret, and only verified beacons reach the table; without a cluster key the broker stays on
loopback, and only --insecure turns signing off. Dropped beacons are
counted by reason (`porchctl status`).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import psutil

from porch import logs
from porch.directory import DirectoryEntry, Entry, Withdrawn
from porch.discovery import (
    Beacon,
    Conflict,
    DiscoveryError,
    Remote,
    Table,
    TableFull,
    decode,
    encode_parts,
    expiry_s,
)
from porch.errors import UsageError
from porch.paths import state_base
from porch.prefs import Prefs, parse_peer
from porch.security import (
    NO_KEY_HINT,
    BeaconRejected,
    BeaconVerifier,
    KeyRing,
    local_keyring,
    read_keyring,
    sign,
)

log = logs.get("porch.discovery")

LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"
MIN_GAP_S = 0.05  # between two beacons sent "at once": a burst of changes makes one beacon
# After start, remote pipelines are held back this long (at most one beacon interval): every
# peer answers a new daemon's first beacon at once, so by then all copies of a name are known
# and a worker is never linked to the first of two duplicates just because it was heard first.
WARMUP_S = 0.5
ENTRY_CHECK_S = 0.5  # how often entries that no beacon part names any more are looked for
RECV_BATCH = 64
RECV_BYTES = 65_535
RECV_BUFFER_BYTES = 4 << 20  # the kernel caps it at net.core.rmem_max
RECV_BUDGET_S = 0.02
PEER_RESOLVE_S = 30.0
MAX_WARNED = 256  # (source, reason) pairs a broker warns about once each
SILENT_INTERVALS = 5  # a static peer not heard for this many beacon intervals is reported
MAX_WITHDRAWN = 500  # withdrawn remote pipelines remembered (shown in status, told to workers)
REJECT_REASONS = ("not_loopback", "malformed", "unsigned", "bad_signature", "unknown_key",
                  "stale", "replayed", "table_full")  # fmt: skip


class KeySource(Enum):
    """Where the key that signs beacons and serves data links comes from."""

    CLUSTER = "cluster"  # --key-file: the deployment's key, valid beyond loopback
    LOCAL = "local"  # no cluster key: this user's local secret, loopback only
    NONE = "none"  # --insecure: unsigned beacons, plain links


@dataclass(frozen=True)
class NetworkPlan:
    """Where this supervisor's workers bind and where its beacons go."""

    data_host: str  # the first data interface's address: beacons name it as the host
    broadcasts: tuple[str, ...]
    peers: tuple[tuple[str, int], ...]
    port: int
    interval_s: float
    loopback_only: bool
    insecure: bool = False
    key_file: str | None = None  # absolute: workers run in their config's folder
    keys: KeyRing | None = None
    key_source: KeySource = KeySource.NONE
    data_hosts: tuple[str, ...] = ()  # every data interface's address (workers bind on each)

    @property
    def bind_hosts(self) -> tuple[str, ...]:
        """Where workers bind: every data interface, the first one first."""
        return self.data_hosts or (self.data_host,)

    @property
    def expiry_s(self) -> float:
        """How long a silent remote pipeline stays in the table."""
        return expiry_s(self.interval_s)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _interface_address(spec: str) -> tuple[str, str]:
    """An interface name or IPv4 address as (address, broadcast address)."""
    if spec in ("lo", "localhost") or _is_loopback(spec):
        return (LOOPBACK_HOST if spec in ("lo", "localhost") else spec), LOOPBACK_BROADCAST
    for name, addrs in psutil.net_if_addrs().items():
        for addr in addrs:
            if addr.family == socket.AF_INET and spec in (name, addr.address):
                return addr.address, _broadcast_of(addr.address, addr.netmask, addr.broadcast)
    known = ", ".join(sorted(psutil.net_if_addrs())) or "none"
    raise UsageError(f"interface: no IPv4 interface named or addressed {spec!r} (have: {known})")


def _broadcast_of(address: str, netmask: str | None, broadcast: str | None) -> str:
    if broadcast:
        return broadcast
    network = ipaddress.IPv4Network(f"{address}/{netmask or '255.255.255.255'}", strict=False)
    return str(network.broadcast_address)


def _resolve_host(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0])
    except (OSError, IndexError, UnicodeError) as exc:
        raise UsageError(f"peer: cannot resolve {host!r}: {exc}") from None


def _peer_is_loopback(host: str, insecure: bool) -> bool:
    """Whether a peer is on this host; one we cannot resolve counts as remote (refused without
    --insecure, and retried at every beacon with it)."""
    try:
        return _is_loopback(_resolve_host(host))
    except UsageError:
        if insecure:
            log.warning("peer_unresolved", peer=host)
        return False


def plan(prefs: Prefs) -> NetworkPlan:
    """Turn preferences into addresses; refuse to leave loopback without a key or --insecure."""
    key_file = str(Path(prefs.key_file).expanduser().resolve()) if prefs.key_file else None
    keys = read_keyring(key_file) if key_file else None
    specs = prefs.interfaces or ("lo",)
    interfaces = [_interface_address(spec) for spec in specs]
    peers = tuple(parse_peer(p) for p in prefs.peers)
    exposed = [f"interface {s} ({a})" for s, (a, _) in zip(specs, interfaces, strict=True)
               if not _is_loopback(a)]  # fmt: skip
    allowed = prefs.insecure or keys is not None
    exposed += [f"peer {h}:{p}" for h, p in peers if not _peer_is_loopback(h, allowed)]
    if exposed and not allowed:
        raise UsageError(f"refusing to use {exposed[0]}: {NO_KEY_HINT}")
    source = KeySource.CLUSTER if keys is not None else KeySource.NONE
    if keys is None and not prefs.insecure:  # loopback is shared with every local user
        path, keys = local_keyring(state_base())
        key_file, source = str(path), KeySource.LOCAL
    return NetworkPlan(
        data_host=interfaces[0][0],
        broadcasts=tuple(dict.fromkeys(b for _, b in interfaces)) if prefs.broadcast else (),
        peers=peers,
        port=prefs.discovery_port,
        interval_s=prefs.beacon_interval_s,
        loopback_only=not exposed,
        insecure=prefs.insecure,
        key_file=key_file,
        keys=keys,
        key_source=source,
        data_hosts=tuple(dict.fromkeys(a for a, _ in interfaces)),
    )


def open_socket(port: int) -> socket.socket:
    """The broker's UDP socket: shared port, broadcast allowed, non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # SO_REUSEPORT alone: Linux shares the port only among sockets of the same effective uid.
    # SO_REUSEADDR would let any user bind it too (or bind 127.0.0.1:PORT, more specific than
    # ours) and read, answer or swallow our beacons.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    with contextlib.suppress(OSError):  # room for the parts of several large beacons at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
    try:
        sock.bind(("", port))
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:  # only this user's brokers may share it (SO_REUSEPORT)
            hint = ("; another user's Porch (or another program) holds it: choose another port "
                    "with --discovery-port or PORCH_DISCOVERY_PORT")  # fmt: skip
        raise UsageError(f"discovery: cannot bind UDP port {port}: {exc.strerror}{hint}") from None
    sock.setblocking(False)
    return sock


LocalEntries = Callable[[], list[Entry]]


class Broker:
    """Sends this supervisor's beacons, receives the others', keeps the table."""

    def __init__(self, network: NetworkPlan, origin: str, local: LocalEntries,
                 on_change: Callable[[], None]) -> None:  # fmt: skip
        self.plan = network
        self.origin = origin
        self.hostname = socket.gethostname()[:255]
        self.daemon_id = secrets.token_hex(8)
        self.local = local
        self.on_change = on_change
        self.table = Table(self.daemon_id, network.expiry_s)
        self.counters = dict.fromkeys(("sent", "received", "rejected", "send_errors"), 0)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.verifier = BeaconVerifier(network.keys) if network.keys is not None else None
        self._warned: set[tuple[str, str]] = set()
        self.sock = open_socket(network.port)
        self._seq = 0
        self._next_send = 0.0
        self._last_send = 0.0
        self._entries_checked = 0.0
        self._conflicts: dict[str, tuple[str, ...]] = {}
        self._peer_addrs: dict[str, tuple[str, float]] = {}
        self._resolved: dict[str, Remote] = {}
        # remote pipelines our workers target, lost with their host's beacons:
        # name -> (last known, since: unix s)
        self.withdrawn: dict[str, tuple[Remote, float]] = {}
        self._warm_at: float | None = time.monotonic() + min(WARMUP_S, network.interval_s)
        self._heard: dict[str, float] = {}  # source address -> when a good beacon came
        self._silent: set[str] = set()  # static peers ("host:port") reported silent
        self._started = time.monotonic()
        if network.key_source is KeySource.NONE:  # --insecure: on loopback too, say so
            log.warning("insecure_network", data_host=network.data_host, port=network.port,
                        detail="beacons are unsigned and data links unencrypted: anyone who "
                        "reaches them, other local users included, can send pickles")  # fmt: skip
        log.info("discovery_started", daemon=self.daemon_id, port=network.port,
                 data_host=network.data_host, broadcasts=list(network.broadcasts),
                 peers=[f"{h}:{p}" for h, p in network.peers],
                 signed=network.keys is not None, key=network.key_source.value)  # fmt: skip

    def fileno(self) -> int:
        """The socket's fd, for the supervisor's poller."""
        return self.sock.fileno()

    @property
    def label(self) -> str:
        """How this broker names itself in logs: host name, data address, daemon id."""
        return f"{self.hostname} {self.plan.data_host} (daemon {self.daemon_id[:8]})"

    # ---- sending -------------------------------------------------------------------------

    def announce_soon(self) -> None:
        """The local pipelines changed: send a beacon now (at most one per MIN_GAP_S)."""
        self._next_send = min(self._next_send, self._last_send + MIN_GAP_S)

    def tick(self, now: float) -> float:
        """Expire silent peers and send a beacon when due; return when to call again."""
        if self._warm_at is not None and now >= self._warm_at:
            self._warm_at = None
            self._changed()
        gone = bool(self.table.expire(now))
        if now >= self._entries_checked + ENTRY_CHECK_S:  # O(entries): not at every tick
            self._entries_checked = now
            gone = bool(self.table.expire_entries(now)) or gone
        if gone:
            self._changed()
        self._check_peers(now)
        if now >= self._next_send:
            self.send(now)
        return min(self._next_send, self._warm_at or self._next_send)

    def beacon(self) -> Beacon:
        """The next beacon of this broker."""
        self._seq += 1
        return Beacon(
            daemon_id=self.daemon_id,
            origin=self.origin[:255],
            host=self.plan.data_host,
            hostname=self.hostname,
            sent_at=time.time(),
            nonce=secrets.token_hex(8),
            seq=self._seq,
            entries=tuple(self.local()),
        )

    def send(self, now: float) -> None:
        """Send one beacon (one datagram, or its parts) to every broadcast address and peer."""
        self._last_send = now
        self._next_send = now + self.plan.interval_s
        try:
            parts = encode_parts(self.beacon())
        except DiscoveryError as exc:
            log.error("beacon_not_sent", reason=str(exc))
            return
        keys = self.plan.keys
        for address in self._destinations():  # signed one by one: each datagram a fresh nonce
            for data in parts:
                self._send_to(data if keys is None else sign(data, keys), address)

    def _destinations(self) -> list[tuple[str, int]]:
        found = [(b, self.plan.port) for b in self.plan.broadcasts]
        for host, port in self.plan.peers:
            address = self._peer_address(host)
            if address is not None:
                found.append((address, port))
        return found

    def _peer_address(self, host: str) -> str | None:
        cached = self._peer_addrs.get(host)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            address = _resolve_host(host)
        except UsageError as exc:
            log.debug("peer_unresolved", peer=host, reason=str(exc))
            return cached[0] if cached else None
        self._peer_addrs[host] = (address, time.monotonic() + PEER_RESOLVE_S)
        return address

    def _send_to(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, address)
            self.counters["sent"] += 1
        except OSError as exc:  # a peer that is down or unreachable: try again next time
            self.counters["send_errors"] += 1
            log.debug("beacon_send_failed", to=f"{address[0]}:{address[1]}", reason=str(exc))

    def _check_peers(self, now: float) -> None:
        """Warn once when a static peer has been silent for SILENT_INTERVALS, and when it is
        heard again: a peer whose beacons never arrive is a misconfiguration (or someone
        swallowing them), not something to wait on quietly."""
        limit_s = SILENT_INTERVALS * self.plan.interval_s
        for host, port in self.plan.peers:
            name = f"{host}:{port}"
            address = self._peer_addrs.get(host, (host, 0.0))[0]
            heard = self._heard.get(address, self._started)
            if now - heard > limit_s and name not in self._silent:
                self._silent.add(name)
                log.warning("static_peer_silent", peer=name, silent_s=round(now - heard, 1),
                            detail="no valid beacon from this peer; is porch running there, "
                            "with the same key and discovery port?")  # fmt: skip
            elif now - heard <= limit_s and name in self._silent:
                self._silent.discard(name)
                log.warning("static_peer_heard", peer=name)

    # ---- receiving -----------------------------------------------------------------------

    def on_readable(self) -> None:
        """Take in the datagrams waiting now: at most RECV_BATCH, or RECV_BUDGET_S of work, so
        that a flood leaves the loop time for porchctl and the workers."""
        changed = False
        deadline = time.monotonic() + RECV_BUDGET_S
        for _ in range(RECV_BATCH):
            if time.monotonic() > deadline:
                break
            try:
                data, source = self.sock.recvfrom(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ECONNREFUSED from an earlier send to a down peer
                if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.debug("beacon_receive_failed", reason=str(exc))
                continue
            changed = self._take(data, source[0]) or changed
        if changed:
            self._changed()

    def _take(self, data: bytes, source: str) -> bool:
        local = self.plan.key_source is not KeySource.CLUSTER
        if self.plan.loopback_only and local and not _is_loopback(source):
            return self._reject(source, "not_loopback", "not from loopback (no cluster key)")
        key_id = None
        if self.verifier is not None:
            try:
                data, key_id = self.verifier.verify(data)
            except BeaconRejected as exc:
                return self._reject(source, exc.reason, str(exc))
        try:
            beacon = decode(data)
        except DiscoveryError as exc:
            return self._reject(source, "malformed", str(exc))
        beacon = replace(beacon, key_id=key_id, source=source)
        if beacon.daemon_id == self.daemon_id:
            return False
        newcomer = beacon.daemon_id not in self.table.peers
        now = time.monotonic()
        try:
            changed = self.table.merge(beacon, now)
        except TableFull as exc:
            return self._reject(source, "table_full", str(exc))
        if newcomer:
            self.announce_soon()  # a newcomer learns about us at once, not an interval later
        self.counters["received"] += 1
        if self.plan.peers and (len(self._heard) < MAX_WARNED or source in self._heard):
            self._heard[source] = now
        return changed

    def _reject(self, source: str, reason: str, detail: str) -> bool:
        self.counters["rejected"] += 1
        self.rejected[reason] += 1
        first = (source, reason) not in self._warned and len(self._warned) < MAX_WARNED
        if first and reason not in ("not_loopback", "replayed"):
            self._warned.add((source, reason))  # a key mismatch is worth one warning per host
            log.warning("beacon_rejected", source=source, reason=reason, detail=detail)
        else:
            log.debug("beacon_rejected", source=source, reason=reason, detail=detail,
                      total=self.counters["rejected"])  # fmt: skip
        return False

    def _changed(self) -> None:
        self.check_conflicts()
        self._log_resolved()
        self.on_change()

    def _log_resolved(self) -> None:
        """Say which remote pipelines workers may now use, and which were withdrawn."""
        if self._warm_at is not None:
            return
        resolved = self.table.resolve([e.name for e in self.local()])
        for name, remote in resolved.items():
            before = self._resolved.get(name)
            if before is None or (before.endpoint, before.daemon_id) != (
                remote.endpoint,
                remote.daemon_id,
            ):
                log.info("remote_pipeline", pipeline=name, host=remote.host,
                         endpoint=remote.endpoint, state=remote.state)  # fmt: skip
        announced = {r.name for r in self.table.remotes()}
        for name in announced:
            self.withdrawn.pop(name, None)
        targeted = {t for e in self.local() for t in e.targets}
        for name in set(self._resolved) - set(resolved):
            log.info("remote_pipeline_withdrawn", pipeline=name, host=self._resolved[name].host)
            # its host fell silent (not a conflict, not local now), and our workers send to it:
            # remembered, so that status and the workers say it is unreachable, and since when
            if name not in announced and name in targeted:
                self.withdrawn[name] = (self._resolved[name], time.time())
        while len(self.withdrawn) > MAX_WITHDRAWN:
            del self.withdrawn[next(iter(self.withdrawn))]
        self._resolved = resolved

    # ---- conflicts -----------------------------------------------------------------------

    def conflicts(self) -> list[Conflict]:
        """Names that two live supervisors announce, this one included."""
        local = {e.name: e.state for e in self.local()}
        return self.table.conflicts(local, here=self.label)

    def check_conflicts(self) -> None:
        """Log each new conflict once, loudly, naming every host; and when it is resolved."""
        current = {c.name: c.hosts for c in self.conflicts()}
        for name, hosts in current.items():
            if self._conflicts.get(name) != hosts:
                log.error("duplicate_pipeline", pipeline=name, hosts=list(hosts),
                          detail=f"pipeline {name!r} runs on {' and '.join(hosts)}; no data "
                          "goes to a remote copy until only one is left")  # fmt: skip
        for name in set(self._conflicts) - set(current):
            log.warning("duplicate_pipeline_resolved", pipeline=name)
        self._conflicts = current

    # ---- what the supervisor reads -------------------------------------------------------

    def directory(self, local_names: Sequence[str]) -> dict[str, DirectoryEntry]:
        """Remote entries for the workers' directory: not local, not in conflict."""
        if self._warm_at is not None:
            return {}
        gone = Withdrawn.WITHDRAWN
        found = {
            name: DirectoryEntry(gone, None, r.host, r.instance, r.key_id, since=since)
            for name, (r, since) in self.withdrawn.items()
            if name not in local_names
        }
        for name, r in self.table.resolve(local_names).items():
            found[name] = DirectoryEntry(r.state, r.endpoint, r.host, r.instance, r.key_id,
                                         r.targets, r.final)  # fmt: skip
        return found

    def remotes(self) -> list[Remote]:
        """Every remote pipeline the table holds."""
        return self.table.remotes()

    def status(self) -> dict[str, Any]:
        """The broker's settings and counters, for `porchctl status --json`."""
        return {
            "daemon_id": self.daemon_id,
            "origin": self.origin,
            "data_host": self.plan.data_host,
            "data_hosts": list(self.plan.bind_hosts),
            "port": self.plan.port,
            "beacon_interval_s": self.plan.interval_s,
            "broadcasts": list(self.plan.broadcasts),
            "peers": [f"{h}:{p}" for h, p in self.plan.peers],
            "peers_silent": sorted(self._silent),
            "beacons_sent": self.counters["sent"],
            "beacons_received": self.counters["received"],
            "beacons_rejected": self.counters["rejected"],
            "rejected": dict(self.rejected),
            "signed": self.plan.keys is not None,
            "key_source": self.plan.key_source.value,
            "key_ids": list(self.plan.keys.ids) if self.plan.keys is not None else [],
            "send_errors": self.counters["send_errors"],
            "conflicts": [{"name": c.name, "hosts": list(c.hosts)} for c in self.conflicts()],
        }

    def close(self) -> None:
        """Send a last beacon (final states reach the peers at once), then close the socket."""
        with contextlib.suppress(OSError):
            self.send(time.monotonic())
        self.sock.close()


DAEMON_ID_FILE = "daemon-id"


def daemon_origin(state_dir: Path) -> str:
    """porchd's persistent daemon id: random, made once and kept in its state folder, so a
    restart replaces its previous self and no other daemon (a cloned host with the same host
    name and control socket) is ever taken for it."""
    path = state_dir / DAEMON_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the daemon id: {exc}; delete the file") from None
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    if text:
        log.warning("daemon_id_replaced", file=str(path), reason="not a daemon id")
    state_dir.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(16)
    tmp = path.with_name(f".{DAEMON_ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text(made + "\n", encoding="ascii")
    os.replace(tmp, path)
    log.info("daemon_id_created", daemon_id=made, file=str(path))
    return made


def run_origin() -> str:
    """`porch run` is never restarted: a random id per run."""
    return f"run-{secrets.token_hex(16)}"
