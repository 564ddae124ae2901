"""The durable outbox: what `step()` returned is on disk before any target is sent it.

SQLite in WAL mode under the state directory, one row per (target, seq). A row is written (and
committed) before the message is handed to its link and deleted once the message has left the
link for good: the target acknowledged it, overflow drop_oldest dropped it, it was dead-lettered,
or the target finished its stream. So a worker killed with kill -9 loses nothing, its next
instance replays exactly the rows still owed, and a clean run leaves no row behind.
(`delivery: at-most-once` never replays, so config validation rejects it with this outbox.)
`synchronous=NORMAL` survives a process crash, not a power cut (documented in the README).

Each row keeps its value's origin (porch.wire), so a replay after a crash carries the ids the
first sending had and receivers drop what they already processed. A pipeline that stamps
origins (a source, a `fan_in: any` stage) keeps its epoch and its next origin seq here too,
updated in the transaction that stores the value: its origin ids survive its restarts.

A replicated target (workers/replicas.py): a value's row is under the replica it goes to (the
group picks it before the row is written); a value handed from a replica gone for good to
another gets a row under that one (`keep`) before the first's rows go. At the next start the
rows of a target's replicas are queued for the target and go to its replicas (whichever there
are then) once the directory shows them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from porch import logs
from porch.errors import StorageError
from porch.names import pipeline_of
from porch.paths import ensure_private_dir, open_private_file
from porch.wire import FrameKind, Origin
from workers.links import OutputLink
from workers.replicas import Output, TargetGroup, all_links

log = logs.get("porch.worker")


def _check_private(path: Path) -> None:
    """Its rows are unpickled at start: a database another user planted (in a shared state
    folder), or a symlink, must never be opened as ours (UnsafePathError)."""
    ensure_private_dir(path.parent)
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.close(open_private_file(path.with_name(name), os.O_RDONLY))


class DurableOutbox:
    """Persists a pipeline's unacknowledged output across crashes."""

    def __init__(self, path: Path, outputs: Sequence[Output]) -> None:
        self.path = path
        self.outputs = outputs  # the worker's: a target may become a TargetGroup
        self.links = {link.target: link for link in all_links(outputs)}  # every link ever seen
        self._released: dict[str, int] = {}  # rows deleted up to this seq, by link
        _check_private(path)
        with self._disk("open it"):
            self.db = sqlite3.connect(str(path), isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS outbox "
                "(target TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, "
                "PRIMARY KEY (target, seq))"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS origin "
                "(id INTEGER PRIMARY KEY CHECK (id = 0), epoch INTEGER NOT NULL, "
                "next_seq INTEGER NOT NULL)"
            )

    @contextlib.contextmanager
    def _disk(self, doing: str) -> Iterator[None]:
        """A failing database (a full disk) fails the pipeline with one line saying so."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(
                f"durable outbox {self.path}: cannot {doing}: {exc} (free space on that "
                'filesystem, or choose "outbox": "memory")'
            ) from exc

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[None]:
        """One transaction: the connection is in autocommit mode (isolation_level None), where
        `with db:` alone would commit each statement on its own, so a kill between two of them
        would leave half a change (a row without its origin seq, rows deleted but not re-keyed)."""
        with self._disk(doing):
            self.db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def origin_start(self, fresh_epoch: int) -> tuple[int, int]:
        """This pipeline's origin epoch and next origin seq: the stored ones, else fresh."""
        with self._disk("read its origin epoch"):
            row = self.db.execute("SELECT epoch, next_seq FROM origin WHERE id = 0").fetchone()
        if row is not None:
            return int(row[0]), int(row[1])
        with self._disk("store its origin epoch"), self.db:
            self.db.execute("INSERT INTO origin VALUES (0, ?, 1)", (fresh_epoch,))
        return fresh_epoch, 1

    def store(self, payload: list[Any], origin: Origin = (), own_seq: int = 0) -> None:
        """Write one value for every link, under the seq each link will give it, and commit.

        `own_seq`: the origin seq this pipeline stamped on it (0: it inherited its origin).
        """
        blob = pickle.dumps(([bytes(f) for f in payload], origin), protocol=5)
        rows = []
        for output in self.outputs:
            link = output.pick(payload) if isinstance(output, TargetGroup) else output
            if link is not None and not link.gone:
                rows.append((link.target, link.next_seq, blob))
        with self._transaction("store a value"):
            self.db.executemany("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?)", rows)
            if own_seq:  # in the same transaction: a stored value's seq is never stamped again
                self.db.execute("UPDATE origin SET next_seq = ? WHERE id = 0", (own_seq + 1,))

    def keep(self, link: OutputLink, payload: list[Any], origin: Origin) -> None:
        """A row for a value about to be handed to `link` from another (a replica gone for
        good, or the target's link before its replicas were known); that one's row goes at the
        next sync()."""
        self.links.setdefault(link.target, link)
        blob = pickle.dumps(([bytes(f) for f in payload], origin), protocol=5)
        with self._disk("store a value handed on"), self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?)", (link.target, link.next_seq, blob)
            )

    def sync(self) -> None:
        """Delete the rows of every message that has left its link since the last call."""
        for link in all_links(self.outputs):
            self.links.setdefault(link.target, link)
        released = self._released
        done = [
            (target, link.released)
            for target, link in self.links.items()
            if link.released > released.get(target, 0)
        ]
        if not done:
            return
        with self._disk("delete delivered values"), self.db:
            self.db.executemany("DELETE FROM outbox WHERE target = ? AND seq <= ?", done)
        self._released.update(done)

    def restore(self) -> int:
        """Queue what an earlier instance left unacknowledged; return how many messages.

        The rows are re-keyed to the sequence numbers this instance's links will use, in one
        transaction, so a kill during the restore loses nothing either.
        """
        with self._disk("read what an earlier instance left"):
            query = "SELECT target, payload FROM outbox ORDER BY target, seq"
            rows = self.db.execute(query).fetchall()
        keyed: list[tuple[str, int, bytes]] = []
        next_seq = {target: link.seq + 1 for target, link in self.links.items()}
        for target, blob in rows:
            target = pipeline_of(target)  # a replica's rows: its pipeline's link takes them
            if target in next_seq:  # else the config no longer targets it
                keyed.append((target, next_seq[target], blob))
                next_seq[target] += 1
        with self._transaction("re-key the values it restores"):
            self.db.execute("DELETE FROM outbox")
            self.db.executemany("INSERT INTO outbox VALUES (?, ?, ?)", keyed)
        for target, _, blob in keyed:
            row = pickle.loads(blob)
            payload, origin = row if isinstance(row, tuple) else (row, ())  # rows before origins
            self.links[target].outbox_restore(FrameKind.DATA, payload, origin)
        if keyed:
            log.warning("outbox_restored", file=str(self.path), messages=len(keyed))
        return len(keyed)

    def close(self) -> None:
        """Close the database."""
        self.db.close()
