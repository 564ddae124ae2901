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
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypedDict

import psutil

from porch import logs
from porch.beacon_io import (
    SILENT_INTERVALS,
    BeaconGate,
    BeaconSender,
    StaticPeers,
    is_loopback,
    read_datagrams,
    resolve_host,
)
from porch.directory import DirectoryEntry, Entry
from porch.discovery import Beacon, Conflict, Remote, Table, TableFull, expiry_s
from porch.errors import UsageError
from porch.paths import state_base
from porch.prefs import Prefs, parse_peer
from porch.remote_view import MAX_WITHDRAWN, RemoteView, Withdrawal
from porch.security import NO_KEY_HINT, KeyRing, local_keyring, read_keyring

__all__ = [  # what other modules import from here (the constants: from its parts)
    "MAX_WITHDRAWN",
    "SILENT_INTERVALS",
    "Broker",
    "DiscoveryStatus",
    "KeySource",
    "NetworkPlan",
    "daemon_origin",
    "open_socket",
    "plan",
    "run_origin",
]

log = logs.get("porch.discovery")

LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_BROADCAST = "127.255.255.255"
RECV_BUFFER_BYTES = 4 << 20  # the kernel caps it at net.core.rmem_max


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


def _interface_address(spec: str) -> tuple[str, str]:
    """An interface name or IPv4 address as (address, broadcast address)."""
    if spec in ("lo", "localhost") or is_loopback(spec):
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


def _peer_is_loopback(host: str, insecure: bool) -> bool:
    """Whether a peer is on this host; one we cannot resolve counts as remote (refused without
    --insecure, and retried at every beacon with it)."""
    try:
        return is_loopback(resolve_host(host))
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
               if not is_loopback(a)]  # fmt: skip
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


class ConflictStatus(TypedDict):
    """A name two live supervisors announce, and every host that does."""

    name: str
    hosts: list[str]


class DisagreementStatus(TypedDict):
    """A replicated pipeline whose hosts run it with different ordered/partition_by: each
    setting with the hosts that use it."""

    name: str
    settings: dict[str, list[str]]


class DiscoveryStatus(TypedDict):
    """The broker's settings and counters in `porchctl status --json` (daemon.discovery)."""

    daemon_id: str
    origin: str
    data_host: str
    data_hosts: list[str]
    port: int
    beacon_interval_s: float
    broadcasts: list[str]
    peers: list[str]
    peers_silent: list[str]
    beacons_sent: int
    beacons_received: int
    beacons_rejected: int
    rejected: dict[str, int]  # by reason (beacon_io.REJECT_REASONS)
    signed: bool
    key_source: str
    key_ids: list[str]
    send_errors: int
    conflicts: list[ConflictStatus]
    replica_config_differs: list[DisagreementStatus]


class Broker:
    """Sends this supervisor's beacons, receives the others', keeps the table: the parts are
    the sender and the gate of the beacon socket, the static peers' watch (beacon_io.py) and
    the view of the remote pipelines (remote_view.py)."""

    def __init__(self, network: NetworkPlan, origin: str, local: LocalEntries,
                 on_change: Callable[[], None]) -> None:  # fmt: skip
        self.plan = network
        self.origin = origin
        self.hostname = socket.gethostname()[:255]
        self.daemon_id = secrets.token_hex(8)
        self.local = local  # this supervisor's pipelines, as beacons announce them
        self.on_change = on_change  # what the workers are told may have changed
        self.sock = open_socket(network.port)
        now = time.monotonic()
        self.sender = BeaconSender(self.sock, network.port, network.broadcasts, network.peers,
                                   network.interval_s, network.keys)  # fmt: skip
        self.gate = BeaconGate(
            network.loopback_only and network.key_source is not KeySource.CLUSTER, network.keys
        )
        self.static_peers = StaticPeers(network.peers, network.interval_s,
                                        self.sender.known_address, now)  # fmt: skip
        self.remote = RemoteView.start(self.daemon_id, network.expiry_s, network.interval_s, now)
        self._seq = 0
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

    @property
    def table(self) -> Table:
        """The remote supervisors' beacons, merged."""
        return self.remote.table

    @property
    def withdrawn(self) -> dict[str, Withdrawal]:
        """Remote pipelines our workers target whose host fell silent, by name."""
        return self.remote.withdrawn

    @property
    def counters(self) -> dict[str, int]:
        """Beacon datagrams sent, received (taken into the table), rejected; failed sends."""
        return {
            "sent": self.sender.sent,
            "received": self.gate.received,
            "rejected": self.gate.rejected_total,
            "send_errors": self.sender.errors,
        }

    # ---- sending -------------------------------------------------------------------------

    def announce_soon(self) -> None:
        """The local pipelines changed: send a beacon now (at most one per MIN_GAP_S)."""
        self.sender.soon()

    def tick(self, now: float) -> float:
        """Expire silent peers and send a beacon when due; return when to call again."""
        if self.remote.expire(now):
            self._changed()
        self.static_peers.check(now)
        if now >= self.sender.next_s:
            self.send(now)
        return min(self.sender.next_s, self.remote.warm_at or self.sender.next_s)

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
        self.sender.send(self.beacon(), now)

    # ---- receiving -----------------------------------------------------------------------

    def on_readable(self) -> None:
        """Take in the datagrams waiting now (a bounded batch: see read_datagrams)."""
        changed = False
        for data, source in read_datagrams(self.sock):
            changed = self._take(data, source) or changed
        if changed:
            self._changed()

    def _take(self, data: bytes, source: str) -> bool:
        beacon = self.gate.admit(data, source)
        if beacon is None or beacon.daemon_id == self.daemon_id:
            return False
        newcomer = not self.remote.knows(beacon.daemon_id)
        now = time.monotonic()
        try:
            changed = self.remote.merge(beacon, now)
        except TableFull as exc:
            self.gate.reject(source, "table_full", str(exc))
            return False
        if newcomer:
            self.announce_soon()  # a newcomer learns about us at once, not an interval later
        self.gate.received += 1
        self.static_peers.heard(source, now)
        return changed

    def _changed(self) -> None:
        self.remote.changed(self.local(), self.label)
        self.on_change()

    # ---- what the supervisor reads -------------------------------------------------------

    def conflicts(self) -> list[Conflict]:
        """Names that two live supervisors announce, this one included."""
        return self.remote.conflicts(self.local(), self.label)

    def directory(self, local_names: Sequence[str]) -> dict[str, DirectoryEntry]:
        """Remote entries for the workers' directory: not local, not in conflict."""
        return self.remote.directory(local_names)

    def remotes(self) -> list[Remote]:
        """Every remote pipeline the table holds."""
        return self.remote.remotes()

    def status(self) -> DiscoveryStatus:
        """The broker's settings and counters, for `porchctl status --json`."""
        network = self.plan
        return {
            "daemon_id": self.daemon_id,
            "origin": self.origin,
            "data_host": network.data_host,
            "data_hosts": list(network.bind_hosts),
            "port": network.port,
            "beacon_interval_s": network.interval_s,
            "broadcasts": list(network.broadcasts),
            "peers": [f"{h}:{p}" for h, p in network.peers],
            "peers_silent": sorted(self.static_peers.silent),
            "beacons_sent": self.sender.sent,
            "beacons_received": self.gate.received,
            "beacons_rejected": self.gate.rejected_total,
            "rejected": dict(self.gate.rejected),
            "signed": network.keys is not None,
            "key_source": network.key_source.value,
            "key_ids": list(network.keys.ids) if network.keys is not None else [],
            "send_errors": self.sender.errors,
            "conflicts": [{"name": c.name, "hosts": list(c.hosts)} for c in self.conflicts()],
            "replica_config_differs": [
                {"name": d.name, "settings": {s: list(hosts) for s, hosts in d.settings}}
                for d in self.remote.table.disagreements(self.local(), self.label)
            ],
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
