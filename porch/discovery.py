"""Discovery beacons and the table of remote pipelines: pure logic, no sockets.

A beacon is what one supervisor (porchd, or `porch run`'s embedded one) announces about the
pipelines it hosts. On the wire it is a 6-byte header (magic, version, flags) and a compact
JSON body, flags 0. With a cluster key, porch/security.py wraps these bytes in a signed
envelope (flag bit 0) and unwraps verified ones before `decode`, which never sees a signature.

A supervisor with more pipelines than one datagram holds splits its beacon into parts
(`encode_parts`): every part carries the whole header, the same `seq`, its index `part` and the
count `parts`, and a share of the entries; each part is one datagram, signed on its own.

The table merges the beacons of other supervisors into `name -> endpoint, host, daemon,
state, last seen`, withdraws what is no longer announced, and detects two live pipelines with
the same name (a conflict: neither remote is handed to workers, a local pipeline wins locally).
Replicas (porch/names.py: NAME#TAG-K, TAG from each supervisor's origin) of one pipeline on
several hosts are that pipeline's processes, all of them handed to workers; but a pipeline that
runs as one process (plain NAME) on one host and as replicas on another is a conflict too.
Parts merge: an entry is withdrawn only once every part of a newer beacon has arrived without
it, or when no part has named it for the expiry (a part lost for good, every time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NotRequired, TypedDict

from porch.control import WorkerState
from porch.directory import Entry
from porch.errors import PorchError
from porch.names import is_replica, name_problem, pipeline_of, process_name_problem

MAGIC = b"PRCH"
VERSION = 1
FLAGS_UNSIGNED = 0
HEADER_BYTES = len(MAGIC) + 2
MAX_BEACON_BYTES = 60_000
MAX_ENTRIES = 500  # a part's
MAX_PARTS = 64  # parts of one beacon: MAX_PARTS * MAX_ENTRIES is over MAX_REMOTE_PIPELINES
MAX_TEXT = 255
MAX_ENDPOINTS = 8  # one per data interface
# What beacons may cost: without a key (--insecure) anyone who reaches the port can send them,
# so the table holds at most this many supervisors and pipelines; newcomers beyond that are
# refused (counted as `table_full`) until silent peers expire and free their room.
MAX_PEERS = 256
MAX_REMOTE_PIPELINES = 4096
MAX_TARGETS = 64  # targets of one entry a beacon carries (a target learns its sources by name)
MIN_EXPIRY_S = 3.0
EXPIRY_BEACONS = 3
# Workers' states that mean "gone for now or for good": such a pipeline is not live.
ENDED_STATES = frozenset(state.value for state in WorkerState if state.ended)
STATES = frozenset(state.value for state in WorkerState)


class EntryJson(TypedDict):
    """An entry in a beacon's JSON (the optional fields only when set)."""

    name: str
    endpoint: str | None
    state: str
    instance: NotRequired[int]
    key: NotRequired[str]
    endpoints: NotRequired[list[str]]
    targets: NotRequired[list[str]]
    final: NotRequired[bool]
    ordered: NotRequired[bool]
    partition_by: NotRequired[str]


class BeaconJson(TypedDict):
    """A beacon's JSON body (`part`/`parts` only when it has several parts)."""

    v: int
    daemon: str
    origin: str
    host: str
    hostname: str
    sent_at: float
    nonce: str
    seq: int
    part: NotRequired[int]
    parts: NotRequired[int]
    entries: NotRequired[list[EntryJson]]


class DiscoveryError(PorchError):
    """A beacon could not be decoded or is not valid; it is dropped and counted."""


class TableFull(DiscoveryError):
    """A beacon would take the table over its bounds (MAX_PEERS, MAX_REMOTE_PIPELINES)."""


@dataclass(frozen=True)
class Beacon:
    """What one supervisor announces: who it is, where its data interface is, its pipelines.

    `daemon_id` is random per start; `origin` is stable across restarts of one daemon (porchd:
    a random id made once and kept in its state folder), so a restarted daemon replaces its
    previous self at once, and two daemons never share one (even on cloned hosts with the same
    host name and control socket path).
    """

    daemon_id: str
    origin: str
    host: str
    hostname: str
    sent_at: float
    nonce: str
    seq: int
    entries: tuple[Entry, ...] = ()
    version: int = VERSION
    part: int = 0  # which part of the beacon this datagram is, of `parts` (same seq)
    parts: int = 1
    key_id: str | None = None  # the cluster key that signed it (set on receipt, not encoded)
    source: str | None = None  # the address it came from (set on receipt, not encoded)


def encode(beacon: Beacon) -> bytes:
    """The bytes of one datagram of a beacon: header, then compact JSON."""
    body = _body(beacon)
    body["entries"] = [_entry_json(e) for e in beacon.entries]
    return _datagram(body)


def encode_parts(beacon: Beacon) -> list[bytes]:
    """A beacon as datagrams: one when it fits, else parts of at most MAX_ENTRIES entries and
    MAX_BEACON_BYTES each, all with the beacon's header and seq. DiscoveryError over MAX_PARTS."""
    budget = MAX_BEACON_BYTES - len(_datagram(_body(replace(beacon, parts=MAX_PARTS))))
    budget -= 64  # the part numbers, the list's brackets
    chunks: list[list[EntryJson]] = [[]]
    used = 0
    for entry in beacon.entries:
        raw = _entry_json(entry)
        size = len(json.dumps(raw, separators=(",", ":"))) + 1
        if chunks[-1] and (used + size > budget or len(chunks[-1]) >= MAX_ENTRIES):
            chunks.append([])
            used = 0
        chunks[-1].append(raw)
        used += size
    if len(chunks) > MAX_PARTS:
        raise DiscoveryError(f"beacon needs {len(chunks)} parts, over {MAX_PARTS}")
    out = []
    for index, chunk in enumerate(chunks):
        body = _body(replace(beacon, part=index, parts=len(chunks)))
        body["entries"] = chunk
        out.append(_datagram(body))
    return out


def _body(beacon: Beacon) -> BeaconJson:
    body: BeaconJson = {
        "v": beacon.version,
        "daemon": beacon.daemon_id,
        "origin": beacon.origin,
        "host": beacon.host,
        "hostname": beacon.hostname,
        "sent_at": beacon.sent_at,
        "nonce": beacon.nonce,
        "seq": beacon.seq,
    }
    if beacon.parts != 1:
        body["part"], body["parts"] = beacon.part, beacon.parts
    return body


def _datagram(body: BeaconJson) -> bytes:
    data = (
        MAGIC + bytes((VERSION, FLAGS_UNSIGNED)) + json.dumps(body, separators=(",", ":")).encode()
    )
    if len(data) > MAX_BEACON_BYTES:
        raise DiscoveryError(f"beacon is {len(data)} bytes, over {MAX_BEACON_BYTES}")
    return data


def _entry_json(entry: Entry) -> EntryJson:
    out: EntryJson = {"name": entry.name, "endpoint": entry.endpoint, "state": entry.state.value}
    if entry.instance is not None:
        out["instance"] = entry.instance
    if entry.key is not None:
        out["key"] = entry.key
    if len(entry.endpoints) > 1:
        out["endpoints"] = list(entry.endpoints)
    if entry.targets:
        out["targets"] = list(entry.targets[:MAX_TARGETS])
    if entry.final:
        out["final"] = True
    if entry.ordered:
        out["ordered"] = True
    if entry.partition_by is not None:
        out["partition_by"] = entry.partition_by
    return out


def decode(data: bytes) -> Beacon:
    """Parse a beacon; raise DiscoveryError (and nothing else) when it is not a valid one."""
    if len(data) > MAX_BEACON_BYTES:
        raise DiscoveryError(f"beacon too large: {len(data)} bytes")
    if len(data) < HEADER_BYTES or data[: len(MAGIC)] != MAGIC:
        raise DiscoveryError("not a porch beacon (bad magic)")
    version, flags = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version != VERSION:
        raise DiscoveryError(f"unsupported beacon version {version}")
    if flags != FLAGS_UNSIGNED:
        raise DiscoveryError(f"unsupported beacon flags {flags:#x} (signed beacons need a key)")
    try:
        body = json.loads(data[HEADER_BYTES:])
    except (ValueError, RecursionError) as exc:
        raise DiscoveryError(f"beacon body is not JSON: {exc}") from None
    return _beacon(_mapping(body, "beacon"))


def _beacon(body: Mapping[str, object]) -> Beacon:
    if body.get("v") != VERSION:
        raise DiscoveryError("beacon body version does not match its header")
    entries = body.get("entries")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise DiscoveryError(f"entries: must be a list of at most {MAX_ENTRIES}")
    parsed = tuple(_entry(_mapping(e, "entry")) for e in entries)
    if len({e.name for e in parsed}) != len(parsed):
        raise DiscoveryError("entries: a name appears twice")
    part, parts = body.get("part", 0), body.get("parts", 1)
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
        raise DiscoveryError(f"parts: must be a whole number of 1 to {MAX_PARTS}")
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < parts:
        raise DiscoveryError("part: must be a whole number below parts")
    return Beacon(
        daemon_id=_text(body, "daemon"),
        origin=_text(body, "origin"),
        host=_text(body, "host"),
        hostname=_text(body, "hostname", allow_empty=True),
        sent_at=_number(body, "sent_at"),
        nonce=_text(body, "nonce"),
        seq=_count(body, "seq"),
        entries=parsed,
        part=part,
        parts=parts,
    )


def _entry(raw: Mapping[str, object]) -> Entry:
    name = _text(raw, "name")
    if process_name_problem(name):
        raise DiscoveryError(f"entry name {name[:40]!r} is not a pipeline name")
    endpoint = raw.get("endpoint")
    if endpoint is not None:
        endpoint = _text(raw, "endpoint")
        if not endpoint.startswith("tcp://"):
            raise DiscoveryError("entry endpoint must be a tcp:// address")
    state = _text(raw, "state")
    if state not in STATES:
        raise DiscoveryError(f"entry state {state[:40]!r} is unknown")
    instance = raw.get("instance")
    if instance is not None:
        instance = _count(raw, "instance")
    key = _text(raw, "key") if raw.get("key") is not None else None
    endpoints = raw.get("endpoints", [])
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise DiscoveryError(f"entry endpoints: must be a list of at most {MAX_ENDPOINTS}")
    for index in range(len(endpoints)):
        if not _text({"e": endpoints[index]}, "e").startswith("tcp://"):
            raise DiscoveryError("entry endpoints must be tcp:// addresses")
    targets, final = _ending(raw)
    ordered = raw.get("ordered", False)
    if not isinstance(ordered, bool):
        raise DiscoveryError("entry ordered: must be true or false")
    partition_by = raw.get("partition_by")
    if partition_by is not None:
        partition_by = _text(raw, "partition_by")
    return Entry(name=name, endpoint=endpoint, state=WorkerState(state), instance=instance, key=key,
                 endpoints=tuple(endpoints), targets=targets, final=final, ordered=ordered,
                 partition_by=partition_by)  # fmt: skip


def _ending(raw: Mapping[str, object]) -> tuple[tuple[str, ...], bool]:
    """An entry's targets (pipeline names) and whether it has ended for good."""
    targets = raw.get("targets", [])
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise DiscoveryError(f"entry targets: must be a list of at most {MAX_TARGETS}")
    if not all(isinstance(t, str) and t and not name_problem(t) for t in targets):
        raise DiscoveryError("entry targets must be pipeline names")
    final = raw.get("final", False)
    if not isinstance(final, bool):
        raise DiscoveryError("entry final: must be true or false")
    return tuple(targets), final


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise DiscoveryError(f"{what} must be a JSON object")
    return value


def _text(raw: Mapping[str, object], key: str, allow_empty: bool = False) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or len(value) > MAX_TEXT or (not value and not allow_empty):
        raise DiscoveryError(f"{key}: must be a string of 1 to {MAX_TEXT} characters")
    if any(not ch.isprintable() for ch in value):
        raise DiscoveryError(f"{key}: must be printable")
    return value


def _number(raw: Mapping[str, object], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DiscoveryError(f"{key}: must be a finite number")
    return float(value)


def _count(raw: Mapping[str, object], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise DiscoveryError(f"{key}: must be a whole number >= 0")
    return value


# ---- the table ---------------------------------------------------------------------------


def expiry_s(beacon_interval_s: float) -> float:
    """How long an entry lives without a fresh beacon: 3 intervals, at least 3 s."""
    return max(EXPIRY_BEACONS * beacon_interval_s, MIN_EXPIRY_S)


@dataclass
class Peer:
    """What the table knows about one remote supervisor: its beacon (the parts merged: the
    latest header, every entry not yet withdrawn) and when a part of it came last."""

    beacon: Beacon
    last_seen: float
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (seq, when)
    parts: frozenset[int] = frozenset()  # the parts of beacon.seq that came


@dataclass(frozen=True)
class Remote:
    """A remote pipeline as the table resolved it."""

    name: str
    endpoint: str | None
    state: WorkerState
    host: str
    hostname: str
    daemon_id: str
    last_seen: float
    instance: int | None = None
    key_id: str | None = None  # the key its worker serves with (announced, else the signer's)
    origin: str = ""  # its daemon's persistent id
    targets: tuple[str, ...] = ()  # its target pipelines (so a target knows its sources)
    final: bool = False  # ended for good (not restarted by its supervisor)
    ordered: bool = False  # a replica of an ordered pipeline (its entry's)
    partition_by: str | None = None  # a replica of a partitioned pipeline (its entry's)


@dataclass(frozen=True)
class Conflict:
    """Two or more live pipelines with one name: `hosts` names every side, local first.
    `replicas_on`: the sides that run it as replicas (empty for a plain duplicate; the others
    run it as one process)."""

    name: str
    hosts: tuple[str, ...]
    local: bool
    replicas_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Disagreement:
    """Live replicas of one pipeline whose hosts run it with different `ordered` or
    `partition_by` (not the same config): each setting, as text, with the hosts that use it,
    local first."""

    name: str
    settings: tuple[tuple[str, tuple[str, ...]], ...]


def replica_setting(ordered: bool, partition_by: str | None) -> str:
    """A replica's `ordered` and `partition_by`, as a disagreement shows them."""
    return f"ordered={str(ordered).lower()} partition_by={partition_by or 'none'}"


@dataclass
class Table:
    """Remote pipelines by name, from the beacons of other supervisors."""

    daemon_id: str
    expiry_s: float
    peers: dict[str, Peer] = field(default_factory=dict)
    max_peers: int = MAX_PEERS
    max_pipelines: int = MAX_REMOTE_PIPELINES

    def merge(self, beacon: Beacon, now: float) -> bool:
        """Take in one beacon; True when it changed what the table resolves (not just times).
        TableFull when it would take the table over its bounds."""
        if beacon.daemon_id == self.daemon_id:
            return False
        known = self.peers.get(beacon.daemon_id)
        if known is not None and (
            beacon.seq < known.beacon.seq
            or (beacon.seq == known.beacon.seq and beacon.part in known.parts)
        ):
            return False  # late or replayed
        merged = _assemble(beacon, known, now)
        beacon = merged.beacon
        self._check_room(beacon, known)
        if known is not None and known.beacon.source in _hosts(beacon):
            # it reaches us on several networks: keep the address we chose, don't flap
            merged.beacon = beacon = replace(beacon, source=known.beacon.source)
        changed = self._drop_previous_self(beacon)
        self.peers[beacon.daemon_id] = merged
        return changed or known is None or _view(known.beacon) != _view(beacon)

    def _check_room(self, beacon: Beacon, known: Peer | None) -> None:
        if known is None and len(self.peers) >= self.max_peers:
            raise TableFull(f"the table already holds {self.max_peers} supervisors")
        held = sum(len(p.beacon.entries) for p in self.peers.values())
        held -= len(known.beacon.entries) if known is not None else 0
        if held + len(beacon.entries) > self.max_pipelines:
            raise TableFull(f"the table already holds {held} of {self.max_pipelines} pipelines")

    def _drop_previous_self(self, beacon: Beacon) -> bool:
        """A restarted daemon (same origin, new id, newer clock) replaces its previous self."""
        stale = [
            daemon_id
            for daemon_id, peer in self.peers.items()
            if peer.beacon.origin == beacon.origin
            and daemon_id != beacon.daemon_id
            and peer.beacon.sent_at <= beacon.sent_at
        ]
        for daemon_id in stale:
            del self.peers[daemon_id]
        return bool(stale)

    def expire(self, now: float) -> list[Beacon]:
        """Forget supervisors silent for longer than the expiry; return their last beacons."""
        gone = [d for d, p in self.peers.items() if now - p.last_seen > self.expiry_s]
        return [self.peers.pop(d).beacon for d in gone]

    def expire_entries(self, now: float) -> list[str]:
        """Withdraw the entries of live supervisors that no part has named for the expiry (the
        part that would withdraw them never completes); return their names."""
        gone: list[str] = []
        for peer in self.peers.values():
            stale = {n for n, (_, when) in peer.seen.items() if now - when > self.expiry_s}
            if stale:
                entries = tuple(e for e in peer.beacon.entries if e.name not in stale)
                peer.beacon = replace(peer.beacon, entries=entries)
                for name in stale:
                    del peer.seen[name]
                gone.extend(sorted(stale))
        return gone

    def remotes(self) -> list[Remote]:
        """Every remote pipeline entry, by name then host."""
        found = [
            Remote(e.name, reachable(e, p.beacon.source), e.state, _address(p.beacon),
                   p.beacon.hostname, p.beacon.daemon_id, p.last_seen, e.instance,
                   e.key or p.beacon.key_id, p.beacon.origin, e.targets, e.final, e.ordered,
                   e.partition_by)
            for p in self.peers.values()
            for e in p.beacon.entries
        ]  # fmt: skip
        return sorted(found, key=lambda r: (r.name, r.host, r.daemon_id))

    def conflicts(self, local: Mapping[str, WorkerState], here: str = "local") -> list[Conflict]:
        """Pipelines announced live by two supervisors as one process each, or as one process
        by one and as replicas by another; `local` maps our process names to their states,
        `here` names this supervisor in the conflict's list of hosts. Replicas of one pipeline
        on several supervisors are not a conflict (unless two announce one replica name)."""
        sides: dict[str, dict[str, list[str]]] = {}  # pipeline -> side -> live process names
        for name, state in local.items():
            if not WorkerState(state).ended:
                sides.setdefault(pipeline_of(name), {}).setdefault(here, []).append(name)
        for remote in self.remotes():
            if not remote.state.ended:
                side = sides.setdefault(pipeline_of(remote.name), {})
                side.setdefault(_label(remote), []).append(remote.name)
        found = []
        for pipeline, by_side in sorted(sides.items()):
            names = [n for ns in by_side.values() for n in ns]
            plain = [side for side, ns in by_side.items() if pipeline in ns]
            if len(by_side) < 2 or (not plain and len(set(names)) == len(names)):
                continue
            replicas_on = tuple(s for s, ns in by_side.items() if any(map(is_replica, ns)))
            found.append(Conflict(pipeline, tuple(by_side), here in by_side, replicas_on))
        return found

    def disagreements(self, local: Sequence[Entry], here: str = "local") -> list[Disagreement]:
        """Replicated pipelines whose live replicas (ours among them, `here`) do not all have
        the same `ordered` and `partition_by`: senders would route and number by one of them."""
        found: dict[str, dict[str, dict[str, None]]] = {}  # pipeline -> setting -> hosts

        def note(name: str, ordered: bool, partition_by: str | None, host: str) -> None:
            settings = found.setdefault(pipeline_of(name), {})
            settings.setdefault(replica_setting(ordered, partition_by), {})[host] = None

        for entry in local:
            if is_replica(entry.name) and entry.live:
                note(entry.name, entry.ordered, entry.partition_by, here)
        for remote in self.remotes():
            if is_replica(remote.name) and not remote.state.ended:
                note(remote.name, remote.ordered, remote.partition_by, _label(remote))
        return [Disagreement(name, tuple((s, tuple(h)) for s, h in settings.items()))
                for name, settings in sorted(found.items()) if len(settings) > 1]  # fmt: skip

    def resolve(self, local_names: Iterable[str]) -> dict[str, Remote]:
        """The remote entry to hand to workers for each name that is not local and not in
        conflict: the one live announcer, else (all ended) the most recently seen. A local
        pipeline wins locally: a local NAME hides the remote NAME and its replicas, local
        replicas of NAME hide a remote plain NAME (remote replicas join them)."""
        skip = set(local_names)
        local_plain = {n for n in skip if not is_replica(n)}
        local_replicated = {pipeline_of(n) for n in skip if is_replica(n)}
        by_name: dict[str, list[Remote]] = {}
        for remote in self.remotes():
            pipeline = pipeline_of(remote.name)
            if remote.name in skip or pipeline in local_plain:
                continue
            if remote.name == pipeline and pipeline in local_replicated:
                continue
            by_name.setdefault(remote.name, []).append(remote)
        resolved = {}
        for name, candidates in by_name.items():
            live = [r for r in candidates if not r.state.ended]
            if len(live) == 1:
                resolved[name] = live[0]
            elif not live:
                resolved[name] = max(candidates, key=lambda r: r.last_seen)
        return _one_kind(resolved)


def _one_kind(resolved: dict[str, Remote]) -> dict[str, Remote]:
    """Without the pipelines resolved both as one process (NAME) and as replicas (NAME#TAG-K)
    while both are live (a conflict); when only one kind is live, that kind; when neither is,
    the kind seen last."""
    kinds: dict[str, tuple[list[Remote], list[Remote]]] = {}  # pipeline -> (plain, replicas)
    for name, remote in resolved.items():
        plain, replicas = kinds.setdefault(pipeline_of(name), ([], []))
        (replicas if is_replica(name) else plain).append(remote)
    for plain, replicas in kinds.values():
        if not plain or not replicas:
            continue
        plain_live = any(not r.state.ended for r in plain)
        replicas_live = any(not r.state.ended for r in replicas)
        if plain_live and replicas_live:
            dropped = plain + replicas
        elif plain_live or replicas_live:
            dropped = replicas if plain_live else plain
        else:
            latest = max(plain + replicas, key=lambda r: r.last_seen)
            dropped = replicas if latest in plain else plain
        for remote in dropped:
            del resolved[remote.name]
    return resolved


def _assemble(beacon: Beacon, known: Peer | None, now: float) -> Peer:
    """A peer's state after one more part: its entries updated, and the entries no part of a
    complete newer beacon named withdrawn (a single-part beacon is complete at once)."""
    fresh = known is None or beacon.seq > known.beacon.seq
    parts = frozenset({beacon.part}) if fresh or known is None else known.parts | {beacon.part}
    entries = {e.name: e for e in known.beacon.entries} if known is not None else {}
    seen = dict(known.seen) if known is not None else {}
    for entry in beacon.entries:
        entries[entry.name] = entry
        seen[entry.name] = (beacon.seq, now)
    if len(parts) >= beacon.parts:  # a complete set: what it did not name is withdrawn
        for name in [n for n, (seq, _) in seen.items() if seq < beacon.seq]:
            del seen[name]
            entries.pop(name, None)
    return Peer(replace(beacon, entries=tuple(entries.values())), now, seen, parts)


def _host_of(endpoint: str) -> str:
    """The address of a `tcp://HOST:PORT` endpoint."""
    return endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")


def _hosts(beacon: Beacon) -> set[str]:
    """Every address the beacon's pipelines are bound on."""
    found = set()
    for entry in beacon.entries:
        for endpoint in entry.endpoints or ([entry.endpoint] if entry.endpoint else []):
            found.add(_host_of(endpoint))
    return found


def _address(beacon: Beacon) -> str:
    """The host's address as we reach it: where its beacon came from when its pipelines are
    bound there (a host on several networks), else the address it announces."""
    source = beacon.source
    if source is not None and source != beacon.host and source in _hosts(beacon):
        return source
    return beacon.host


def reachable(entry: Entry, source: str | None) -> str | None:
    """The endpoint to use of a pipeline bound on several interfaces: the one on the address its
    beacon came from (that network reaches us), else the first."""
    for endpoint in entry.endpoints:
        if _host_of(endpoint) == source:
            return endpoint
    return entry.endpoint


def _view(beacon: Beacon) -> tuple[object, ...]:
    """What of a beacon matters to workers and conflicts (not its times or nonce)."""
    return (beacon.host, beacon.hostname, beacon.entries, beacon.key_id, beacon.source)


def _label(remote: Remote) -> str:
    name = f"{remote.hostname} " if remote.hostname else ""
    return f"{name}{remote.host} (daemon {remote.daemon_id[:8]})"


# The largest header fields and entry fields a beacon can carry besides the names (a signed
# beacon's envelope and HMAC, a long host name, a full address): what a name may not use.
_WORST_ENTRY = Entry("", "tcp://255.255.255.255:65535", WorkerState.WAITING_FOR_SOURCES,
                     2**63 - 1, key="k" * 16)  # fmt: skip
BEACON_OVERHEAD_BYTES = 1024


def announced_bytes(entries: Sequence[Entry]) -> int:
    """How large a beacon announcing these entries (their names, ordered and partition_by)
    can grow (what config validation checks)."""
    worst = [_entry_json(replace(_WORST_ENTRY, name=e.name, ordered=e.ordered,
                                 partition_by=e.partition_by)) for e in entries]  # fmt: skip
    return BEACON_OVERHEAD_BYTES + len(json.dumps(worst, separators=(",", ":")))
