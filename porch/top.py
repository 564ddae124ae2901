"""`porchctl top`: a live view of porchd's pipelines, like htop: rates, queues, CPU/RSS, state.

The frame is built by pure functions (tested without a terminal); curses draws it every
interval and restores the terminal on `q`, Ctrl+C or an error. Without a terminal, one frame is
printed (like `top -b -n 1`). A replicated pipeline is a row of totals (PID `2x`: its replica
count; its state, with how many replicas are in it when not all) and a row per replica under it
(`  #TAG-K`).
"""

from __future__ import annotations

import contextlib
import curses
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from porch.errors import ControlError
from porch.graph import state_class
from porch.names import REPLICA_MARK, is_replica, pipeline_of
from porch.porchctl_format import error_text
from porch.status import (
    PipelineStatus,
    RemoteStatus,
    StatusReport,
    derived_state,
    read,
    remote_pipeline_count,
)

INTERVAL_S = 1.0
KEY_POLL_MS = 100

COLUMNS = (  # (header, width, status field, format); the last column takes what is left
    ("PIPELINE", -16, "name", "s"),
    ("STATE", -19, "state", "s"),
    ("PID", 7, "pid", "d"),
    ("CPU%", 6, "cpu_percent", ".1f"),
    ("RSS", 9, "rss_bytes", "mib"),
    ("ITER/S", 8, "rate_per_s", ".1f"),
    ("IN/S", 8, "msgs_in_per_s", ".1f"),
    ("OUT/S", 8, "msgs_out_per_s", ".1f"),
    ("QUEUE", 6, "queue_depth", "d"),
    ("ITER", 9, "iterations", "d"),
    ("RESTARTS", 8, "restarts", "d"),
    ("LAST ERROR", 0, "last_error", "s"),
)

TEXT_FIELDS = ("name", "state")  # the last column (last_error) is error_text's
Fetch = Callable[[], StatusReport]
Status = StatusReport | Mapping[str, object]


def _cell(pipeline: PipelineStatus, field: str, fmt: str) -> str:
    value: str | float | None
    value = str(getattr(pipeline, field)) if field in TEXT_FIELDS else pipeline.number(field)
    if value is None or value == "":
        return "-"
    if fmt == "mib" and not isinstance(value, str):
        return f"{value / 2**20:.1f}M"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def _fit(text: str, width: int) -> str:
    size = abs(width)
    text = text if len(text) <= size else text[: max(0, size - 1)] + "~"
    return text.ljust(size) if width < 0 else text.rjust(size)


def format_row(values: Sequence[str], width: int) -> str:
    """One line of the table, cut to `width` columns."""
    fixed = [_fit(v, w) for v, (_, w, _, _) in zip(values, COLUMNS, strict=True) if w]
    line = " ".join([*fixed, values[-1]])
    return line[:width]


def header_line(result: Status, now: str) -> str:
    """porchd, its uptime, pipeline counts, total rates, beacons refused, the time."""
    report = read(result)
    daemon, pipelines = report.daemon, report.pipelines
    running = sum(p.state == "running" for p in pipelines)
    failed = sum(p.state == "failed" for p in pipelines)
    rate_in = sum(p.daemon.msgs_in_per_s or 0 for p in pipelines)
    rate_out = sum(p.daemon.msgs_out_per_s or 0 for p in pipelines)
    discovery = daemon.discovery or {}
    remote = remote_pipeline_count(report.remote)
    pid = "?" if daemon.pid is None else daemon.pid
    return (
        f"porchd pid {pid}  up {_uptime(daemon.uptime_s)}  "
        f"pipelines {len(pipelines)} ({running} running, {failed} failed, {remote} remote)  "
        f"in {rate_in:.1f}/s  out {rate_out:.1f}/s  "
        f"beacons refused {discovery.get('beacons_rejected', 0)}  {now}"
    )


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def frame(result: Status, width: int, now: str) -> list[tuple[str, str]]:
    """The screen as (line, style) pairs; style is "header", "title" or a state class."""
    report = read(result)
    lines = [(header_line(report, now)[:width], "header"), ("", "")]
    lines.append((format_row([c[0] for c in COLUMNS], width), "title"))
    for p in report.pipelines:
        lines += [(format_row(values, width), style) for values, style in _rows(p)]
    lines += [(format_row(values, width), "remote") for values in _remote_rows(report.remote)]
    return lines


def _remote_rows(remote: Sequence[RemoteStatus]) -> list[list[str]]:
    """A row per remote pipeline; other hosts' replicas of one (NAME#TAG-K) under a row of it."""
    groups: dict[tuple[str, bool], list[RemoteStatus]] = {}
    for r in remote:
        groups.setdefault((pipeline_of(r.name), is_replica(r.name)), []).append(r)
    rows = []
    for (name, replicated), members in groups.items():
        if replicated:
            hosts = ", ".join(dict.fromkeys(r.hostname or r.host for r in members))
            state = derived_state(r.state for r in members)
            rows.append(_remote_row(name, state, f"{len(members)}x", f"remote: {hosts}"))
        for r in members:
            shown = "  " + r.name[r.name.find(REPLICA_MARK) :] if replicated else r.name
            rows.append(_remote_row(shown, r.state, "-", f"remote: {r.hostname or r.host}"))
    return rows


def _remote_row(name: str, state: str, pid: str, where: str) -> list[str]:
    values = ["-"] * len(COLUMNS)
    values[0], values[1], values[2], values[-1] = name, state, pid, where
    return values


def _rows(p: PipelineStatus) -> list[tuple[list[str], str]]:
    """A pipeline's row (values, style); a replicated one's totals, then its replicas'."""
    values = [_cell(p, field, fmt) for _, _, field, fmt in COLUMNS]
    if not p.replicas:
        values[-1] = " ".join(error_text(p).split())
        return [(values, state_class(p.state))]
    total, same = len(p.replicas), sum(r.state == p.state for r in p.replicas)
    # no pid of its own: that column says how many replicas; the state, how many are in it
    values[1] = p.state if same == total else f"{p.state} {same}/{total}"
    values[2], values[-1] = f"{total}x", ""
    rows = [(values, state_class(p.state))]
    for r in p.replicas:
        cells = [_cell(r, field, fmt) for _, _, field, fmt in COLUMNS]
        mark = r.name.find(REPLICA_MARK)
        cells[0] = "  " + (r.name[mark:] if mark >= 0 else r.name)
        cells[-1] = " ".join(error_text(r).split())
        rows.append((cells, state_class(r.state)))
    return rows


# ---- the terminal --------------------------------------------------------------------------

STYLE_COLORS = {"running": curses.COLOR_GREEN, "waiting": curses.COLOR_YELLOW,
                "failed": curses.COLOR_RED, "remote": curses.COLOR_CYAN}  # fmt: skip


def run(fetch: Fetch, interval_s: float = INTERVAL_S) -> None:
    """Show the live view until `q` or Ctrl+C; the first fetch's errors are raised as usual."""
    first = fetch()
    screen = _Screen(fetch, interval_s, first)
    previous = signal.signal(signal.SIGINT, screen.interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # curses.wrapper restores the terminal first
            curses.wrapper(screen.loop)
    finally:
        signal.signal(signal.SIGINT, previous)


def print_once(result: Status, width: int = 160) -> str:
    """One frame as plain text (no terminal)."""
    return "\n".join(line for line, _ in frame(result, width, time.strftime("%H:%M:%S")))


class _Screen:
    """The curses side: draw every interval, read keys in between."""

    def __init__(self, fetch: Fetch, interval_s: float, first: StatusReport) -> None:
        self.fetch = fetch
        self.interval_s = interval_s
        self.result = first
        self.problem = ""
        self.styles: dict[str, int] = {}
        self.interrupted = False

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT (Ctrl+C): quit. Python raises a handler's exception wherever the main thread
        is, and drops it there when that is a finalizer (a zmq socket's __del__, once per
        refresh): the flag, checked at every key poll, is not lost."""
        self.interrupted = True
        raise KeyboardInterrupt

    def loop(self, screen: curses.window) -> None:
        self._setup(screen)
        next_fetch_s = time.monotonic() + interval_s_floor(self.interval_s)
        self.draw(screen)
        while not self.interrupted:
            key = screen.getch()
            if key in (ord("q"), ord("Q"), 27):
                return
            if time.monotonic() >= next_fetch_s:
                next_fetch_s = time.monotonic() + interval_s_floor(self.interval_s)
                self.refresh()
                self.draw(screen)
            elif key == curses.KEY_RESIZE:
                self.draw(screen)

    def _setup(self, screen: curses.window) -> None:
        with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
            curses.curs_set(0)
        screen.timeout(KEY_POLL_MS)
        self.styles = {"header": curses.A_BOLD, "title": curses.A_REVERSE}
        if curses.has_colors():
            curses.use_default_colors()
            for i, (style, color) in enumerate(STYLE_COLORS.items(), start=1):
                curses.init_pair(i, color, -1)
                self.styles[style] = curses.color_pair(i)

    def refresh(self) -> None:
        try:
            self.result = self.fetch()
            self.problem = ""
        except ControlError as exc:  # porchd went away: keep the last figures, say so
            self.problem = f"not updated: {exc}"

    def draw(self, screen: curses.window) -> None:
        rows, cols = screen.getmaxyx()
        screen.erase()
        lines = frame(self.result, cols - 1, time.strftime("%H:%M:%S"))
        footer = self.problem or "q: quit"
        for y, (text, style) in enumerate(lines[: max(0, rows - 2)]):
            screen.addnstr(y, 0, text, cols - 1, self.styles.get(style, curses.A_NORMAL))
        screen.addnstr(rows - 1, 0, footer, cols - 1, curses.A_DIM)
        screen.refresh()


def interval_s_floor(interval_s: float) -> float:
    """Never refresh faster than ten times a second."""
    return max(0.1, interval_s)
