"""What a broker knows of the remote pipelines and tells its workers: the table of the peers'
beacons (porch/discovery.py), which remote pipeline each name resolves to (logged when that
changes), the ones withdrawn while our workers send to them, conflicts, and the workers'
directory entries for them. Pure logic: no socket, times passed in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from porch import logs
from porch.directory import DirectoryEntry, Entry, Withdrawn
from porch.discovery import Beacon, Conflict, Remote, Table
from porch.names import is_replica, pipeline_of

log = logs.get("porch.discovery")

# After start, remote pipelines are held back this long (at most one beacon interval): every
# peer answers a new daemon's first beacon at once, so by then all copies of a name are known
# and a worker is never linked to the first of two duplicates just because it was heard first.
WARMUP_S = 0.5
ENTRY_CHECK_S = 0.5  # how often entries that no beacon part names any more are looked for
MAX_WITHDRAWN = 500  # withdrawn remote pipelines remembered (shown in status, told to workers)


class Withdrawal(NamedTuple):
    """A remote pipeline our workers target whose host fell silent: its last known entry, and
    since when (unix s) it is withdrawn."""

    remote: Remote
    since: float


@dataclass
class RemoteView:
    """The remote pipelines one broker knows, and what of them its workers are told."""

    table: Table
    warm_at: float | None  # until then (monotonic) no remote pipeline is resolved
    # name -> withdrawn pipeline, oldest first, at most MAX_WITHDRAWN
    withdrawn: dict[str, Withdrawal] = field(default_factory=dict)
    _resolved: dict[str, Remote] = field(default_factory=dict)
    _conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _disagreements: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = field(default_factory=dict)
    _entries_checked: float = 0.0

    @classmethod
    def start(cls, daemon_id: str, expiry_s: float, interval_s: float, now: float) -> RemoteView:
        """An empty view, warming up for WARMUP_S (at most one beacon interval)."""
        return cls(Table(daemon_id, expiry_s), now + min(WARMUP_S, interval_s))

    def expire(self, now: float) -> bool:
        """End the warm-up when due and forget what fell silent; True when that changed what
        the view resolves."""
        changed = False
        if self.warm_at is not None and now >= self.warm_at:
            self.warm_at, changed = None, True
        if self.table.expire(now):
            changed = True
        if now >= self._entries_checked + ENTRY_CHECK_S:  # O(entries): not at every tick
            self._entries_checked = now
            changed = bool(self.table.expire_entries(now)) or changed
        return changed

    def knows(self, daemon_id: str) -> bool:
        """Whether the table holds a beacon of this supervisor."""
        return daemon_id in self.table.peers

    def merge(self, beacon: Beacon, now: float) -> bool:
        """Take in one beacon (TableFull when over the table's bounds)."""
        return self.table.merge(beacon, now)

    def remotes(self) -> list[Remote]:
        """Every remote pipeline the table holds."""
        return self.table.remotes()

    def conflicts(self, local: Sequence[Entry], here: str) -> list[Conflict]:
        """Names that two live supervisors announce; `here` names this one."""
        return self.table.conflicts({e.name: e.state for e in local}, here=here)

    def changed(self, local: Sequence[Entry], here: str) -> None:
        """After a change: log new and resolved conflicts and disagreements, and what workers
        may now use."""
        self._check_conflicts(local, here)
        self._check_disagreements(local, here)
        self._log_resolved(local)

    def _check_disagreements(self, local: Sequence[Entry], here: str) -> None:
        """Log, once per change, replicated pipelines whose hosts run them with different
        `ordered`/`partition_by` (their replicas are still used: they are one pipeline)."""
        current = {d.name: d.settings for d in self.table.disagreements(local, here)}
        for name, settings in current.items():
            if self._disagreements.get(name) != settings:
                where = "; ".join(f"{s} on {' and '.join(hosts)}" for s, hosts in settings)
                log.error("replica_config_differs", pipeline=name,
                          settings={s: list(hosts) for s, hosts in settings},
                          detail=f"the replicas of {name!r} do not share one config ({where}): "
                          "senders number and route its values by one of them; give every "
                          "host the same config")  # fmt: skip
        for name in set(self._disagreements) - set(current):
            log.warning("replica_config_differs_resolved", pipeline=name)
        self._disagreements = current

    def _check_conflicts(self, local: Sequence[Entry], here: str) -> None:
        """Log each new conflict once, loudly, naming every host; and when it is resolved."""
        found = self.conflicts(local, here)
        current = {c.name: c.hosts for c in found}
        for conflict in found:
            if self._conflicts.get(conflict.name) != conflict.hosts:
                log.error("duplicate_pipeline", pipeline=conflict.name, hosts=list(conflict.hosts),
                          replicas_on=list(conflict.replicas_on),
                          detail=conflict_detail(conflict))  # fmt: skip
        for name in set(self._conflicts) - set(current):
            log.warning("duplicate_pipeline_resolved", pipeline=name)
        self._conflicts = current

    def _log_resolved(self, local: Sequence[Entry]) -> None:
        """Say which remote pipelines workers may now use, and which were withdrawn."""
        if self.warm_at is not None:
            return
        resolved = self.table.resolve([e.name for e in local])
        for name, remote in resolved.items():
            before = self._resolved.get(name)
            if before is None or (before.endpoint, before.daemon_id) != (
                remote.endpoint,
                remote.daemon_id,
            ):
                log.info("remote_pipeline", pipeline=name, host=remote.host,
                         endpoint=remote.endpoint, state=remote.state.value)  # fmt: skip
        announced = {r.name for r in self.table.remotes()}
        for name in announced:
            self.withdrawn.pop(name, None)
        targeted = {t for e in local for t in e.targets}
        heard = {p.beacon.origin for p in self.table.peers.values()}  # supervisors still heard
        for name in set(self._resolved) - set(resolved):
            log.info("remote_pipeline_withdrawn", pipeline=name, host=self._resolved[name].host)
            # its host fell silent (not a conflict, not local now), and our workers send to it
            # (to its pipeline, for a replica): remembered, so that status and the workers say
            # it is unreachable, and since when (senders hand a replica's unacknowledged
            # values to the pipeline's other replicas)
            last = self._resolved[name]
            ended = last.state.ended and last.final
            if is_replica(name) and (ended or last.origin in heard):
                continue  # a replica that ended for good, or that its live host let go (scaled
                # away, removed): gone from the directory, not withdrawn
            if name not in announced and pipeline_of(name) in targeted:
                self.withdrawn[name] = Withdrawal(self._resolved[name], time.time())
        while len(self.withdrawn) > MAX_WITHDRAWN:
            del self.withdrawn[next(iter(self.withdrawn))]
        self._resolved = resolved

    def directory(self, local_names: Sequence[str]) -> dict[str, DirectoryEntry]:
        """Remote entries for the workers' directory: not local, not in conflict; withdrawn
        ones with no endpoint and since when."""
        if self.warm_at is not None:
            return {}
        gone = Withdrawn.WITHDRAWN
        found = {
            name: DirectoryEntry(gone, None, r.host, r.instance, r.key_id, since=since,
                                 ordered=r.ordered, partition_by=r.partition_by)
            for name, (r, since) in self.withdrawn.items()
            if name not in local_names
        }  # fmt: skip
        for name, r in self.table.resolve(local_names).items():
            found[name] = DirectoryEntry(r.state, r.endpoint, r.host, r.instance, r.key_id,
                                         r.targets, r.final, ordered=r.ordered,
                                         partition_by=r.partition_by)  # fmt: skip
        return found


def conflict_detail(conflict: Conflict) -> str:
    """What a conflict means and what to do, for its log line."""
    name, hosts = conflict.name, conflict.hosts
    plain = [h for h in hosts if h not in conflict.replicas_on]
    if conflict.replicas_on and plain:
        return (
            f"pipeline {name!r} runs as replicas on {' and '.join(conflict.replicas_on)} but as "
            f'one process (no "replicas" in its config) on {" and ".join(plain)}; a '
            'pipeline spread over several hosts needs the same config, with "replicas", on '
            "each; no data goes to a remote copy until they agree"
        )
    return (
        f"pipeline {name!r} runs on {' and '.join(hosts)}; no data goes to a remote copy "
        'until only one is left (to run it on several hosts, give its config "replicas")'
    )
