"""Progress of `porch run`: a live footer per pipeline on a terminal, a summary at the end.

The footer lives in the bottom lines of the terminal, outside a scroll region (DECSTBM, as apt
draws its progress bar): every `NAME | line` and every message of porch's own scrolls above it
and can never be overwritten or erased by a redraw. The summary goes to stderr: a table on a
terminal, one short line per pipeline otherwise. A replicated pipeline is one line of totals
(`hash (2 replicas)`); the summary (table or lines) lists its replicas under it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from porch.names import pipeline_of
from porch.status import derived_state
from porch.supervisor import Supervisor
from porch.worker_handle import WorkerHandle

REDRAW_S = 0.25
MIN_ROWS = 6  # a smaller terminal gets no footer
TROUBLE_COUNTERS = (
    ("dead_letters", "dead-lettered"),
    ("dropped", "dropped"),
    ("skipped", "skipped"),
)


@dataclass(frozen=True)
class Row:
    """What the footer and the summary show of one pipeline."""

    name: str
    state: str
    items: int
    elapsed_s: float
    rate_per_s: float  # recent (live) rate
    error: str = ""
    warning: str = ""  # what kept it from making progress (a missing target...)
    problems: str = ""  # dead-lettered, dropped... counts worth a look
    counts: tuple[int, ...] = ()  # the TROUBLE_COUNTERS that `problems` says
    replicas: tuple[Row, ...] = ()  # a replicated pipeline's: this row is their totals

    @property
    def label(self) -> str:
        """The name, with how many replicas run it: `hash (2 replicas)`."""
        count = len(self.replicas)
        word = "replica" if count == 1 else "replicas"
        return f"{self.name} ({count} {word})" if self.replicas else self.name

    @property
    def average_per_s(self) -> float:
        """Items per second over the pipeline's whole run."""
        return self.items / self.elapsed_s if self.elapsed_s > 0 else 0.0


def row_of(handle: WorkerHandle, now: float, reported: bool = False) -> Row:
    """A pipeline's figures from the supervisor's view of it; `reported`: its failure was
    already printed (`porch: pipeline NAME failed: ...`), so the row does not repeat it."""
    health = handle.health.report
    end = handle.exited_s if handle.exited_s is not None else now
    counts = [(health.counter(key), what) for key, what in TROUBLE_COUNTERS]
    return Row(
        name=handle.name,
        state=handle.state.value,
        items=health.iterations,
        elapsed_s=max(0.0, end - handle.started_s) if handle.started_s else 0.0,
        rate_per_s=handle.health.rate_per_s if handle.alive else 0.0,
        error=handle.last_error.splitlines()[0] if handle.last_error and not reported else "",
        warning=health.warning,
        problems=_problems([n for n, _ in counts]),
        counts=tuple(n for n, _ in counts),
    )


def _problems(counts: Sequence[int]) -> str:
    pairs = zip(counts, TROUBLE_COUNTERS, strict=True)
    return ", ".join(f"{n} {what}" for n, (_, what) in pairs if n)


def grouped(rows: Sequence[Row]) -> list[Row]:
    """One row per pipeline: a replicated pipeline's replicas (NAME#TAG-K) become one row of
    their totals where the first of them was, with their own rows in it."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(pipeline_of(row.name), []).append(row)
    result = []
    for name, members in groups.items():
        result += [r for r in members if r.name == name]
        replicas = tuple(r for r in members if r.name != name)
        if replicas:
            result.append(replicated(name, replicas))
    return result


def replicated(name: str, replicas: tuple[Row, ...]) -> Row:
    """Pipeline `name`'s row from its replicas': totals, the state derived from theirs, the
    first error and warning (naming the replica)."""
    counts = tuple(
        sum(r.counts[i] for r in replicas if r.counts) for i in range(len(TROUBLE_COUNTERS))
    )
    failed = next((r for r in replicas if r.error), None)
    return Row(
        name=name,
        state=derived_state(r.state for r in replicas),
        items=sum(r.items for r in replicas),
        elapsed_s=max(r.elapsed_s for r in replicas),
        rate_per_s=sum(r.rate_per_s for r in replicas),
        error=f"{failed.name}: {failed.error}" if failed else "",
        warning=next((r.warning for r in replicas if r.warning), ""),
        problems=_problems(counts),
        counts=counts,
        replicas=replicas,
    )


def clock(seconds: float) -> str:
    """0:03, 12:07, 1:02:03."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def footer_lines(rows: Sequence[Row], height: int, width: int) -> list[str]:
    """At most `height` lines, one per pipeline (the last one sums up the rest)."""
    name_w = max((len(r.label) for r in rows), default=0)
    lines = [
        f"{r.label.ljust(name_w)}  {r.state:<19} {r.items:>9,} items  {r.rate_per_s:>8.1f}/s  "
        f"{clock(r.elapsed_s):>7}" + (f"  {r.error or r.warning}" if r.error or r.warning else "")
        for r in rows
    ]
    if len(lines) > height:
        rest = rows[height - 1 :]
        running = sum(r.state == "running" for r in rest)
        lines[height - 1 :] = [
            f"... {len(rest)} more: {running} running, {sum(r.items for r in rest):,} items"
        ]
    return [line[: width - 1] for line in lines]


def summary_lines(rows: Sequence[Row], total_s: float, table: bool) -> list[str]:
    """The end-of-run summary: a table, or one short line per pipeline."""
    if not table:
        return [line for r in rows for line in _short(r)]
    cells = [["PIPELINE", "STATE", "ITEMS", "TIME", "RATE", "ERRORS"]]
    for r in rows:
        cells.append(_cells(r, "", _trouble(r, "") if not r.replicas else r.problems))
        cells += [_cells(replica, "  ", _trouble(replica, "")) for replica in r.replicas]
    widths = [max(len(row[i]) for row in cells) for i in range(5)]
    right = (False, False, True, True, True)
    lines = [f"porch: summary after {total_s:.1f} s"]
    for row in cells:
        fixed = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row[:5], widths, right, strict=True)
        ]
        lines.append("  " + "  ".join([*fixed, row[5]]))
    return lines


def _cells(r: Row, indent: str, trouble: str) -> list[str]:
    return [indent + r.label, r.state, f"{r.items:,}", f"{r.elapsed_s:.1f}s",
            f"{r.average_per_s:.1f}/s", trouble or "-"]  # fmt: skip


def _short(row: Row, indent: str = "") -> list[str]:
    """A pipeline's line; a replicated one's with its problems only, then a line per replica
    (with its own error)."""
    trouble = f", {row.problems}" if row.replicas and row.problems else _trouble(row, ", ")
    count = f", {len(row.replicas)} replicas" if row.replicas else ""
    line = (f"porch: {indent}{row.name}: {row.state}, {row.items} items in {row.elapsed_s:.1f} s "
            f"({row.average_per_s:.1f}/s){count}{trouble}")  # fmt: skip
    return [line, *(text for r in row.replicas for text in _short(r, "  "))]


def _trouble(row: Row, lead: str) -> str:
    error = f"error: {row.error}" if row.error else ""
    warning = f"warning: {row.warning}" if row.warning else ""
    parts = [p for p in (row.problems, error, warning) if p]
    return lead + "; ".join(parts) if parts else ""


class Progress:
    """Draws the footer on a terminal while the supervisor runs; prints the summary at the end."""

    def __init__(self, err: TextIO, live: bool) -> None:
        self.err = err
        self.live = live
        self.supervisor: Supervisor | None = None
        self.started_s = time.monotonic()
        self._next_draw_s = 0.0
        self._region: tuple[int, int] | None = None  # (terminal rows, footer lines) when set

    def attach(self, supervisor: Supervisor) -> None:
        """Follow this supervisor's pipelines (its loop calls `tick`)."""
        self.supervisor = supervisor
        self.started_s = time.monotonic()
        if self.live:
            supervisor.add_ticker(self.tick)

    def rows(self, now: float, summary: bool = False) -> list[Row]:
        """Every pipeline's figures now (for the summary: without the errors printed before)."""
        if self.supervisor is None:
            return []
        printed = set(self.supervisor.failed) if summary else set()
        handles = self.supervisor.workers.values()
        return grouped([row_of(h, now, h.name in printed) for h in handles])

    def tick(self, now: float) -> None:
        """Redraw the footer (at most every REDRAW_S)."""
        if now < self._next_draw_s:
            return
        self._next_draw_s = now + REDRAW_S
        width, height = shutil.get_terminal_size()
        rows = self.rows(now)
        lines = min(len(rows), height // 3)
        if height < MIN_ROWS or lines < 1:
            self._clear()
            return
        if self._region != (height, lines):
            self._clear()
            self._set_region(height, lines)
        footer = footer_lines(rows, lines, width)
        draw = "".join(f"\x1b[{height - lines + 1 + i};1H\x1b[2K{text}"
                       for i, text in enumerate(footer))  # fmt: skip
        self._write(f"\x1b7{draw}\x1b8")

    def _set_region(self, height: int, lines: int) -> None:
        # Make room first (what is on screen scrolls up), then keep the bottom lines for us.
        self._write("\n" * lines + f"\x1b[{lines}A\x1b7\x1b[1;{height - lines}r\x1b8")
        self._region = (height, lines)

    def _clear(self) -> None:
        if self._region is None:
            return
        height, lines = self._region
        self._write(f"\x1b7\x1b[r\x1b[{height - lines + 1};1H\x1b[J\x1b8")
        self._region = None

    def _write(self, text: str) -> None:
        self.err.write(text)
        self.err.flush()

    def finish(self) -> None:
        """Take the footer away and print the summary."""
        self._clear()
        if self.supervisor is None:
            return
        now = time.monotonic()
        for text in summary_lines(self.rows(now, summary=True), now - self.started_s,
                                  table=self.live):  # fmt: skip
            self.err.write(text + "\n")
        self.err.flush()
