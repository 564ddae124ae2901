"""What porchctl prints: porchd's replies as tables and lines (pure functions, no I/O).

The `status` reply is read as a typed StatusReport (porch/status.py); each function also takes
the reply as porchd sent it (JSON), decoding it once. `porchctl top` shares `error_text`.
A replicated pipeline is one row of totals with a row per replica process under it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from porch.health import LinkState
from porch.names import is_replica, pipeline_of
from porch.status import PipelineStatus, RemoteStatus, StatusReport, derived_state, read

MIN_ERROR_WIDTH = 20

HEADERS = (
    "PIPELINE",
    "PID",
    "STATE",
    "UPTIME",
    "ITER",
    "IN",
    "OUT",
    "QUEUE",
    "MSG/S",
    "CPU%",
    "RSS",
    "RESTARTS",
    "LAST ERROR",
)
LEFT_ALIGNED = {"PIPELINE", "STATE", "LAST ERROR"}
TARGET_TROUBLE = frozenset(state for state in LinkState if state.trouble)
REMOTE_HEADERS = ("REMOTE", "HOST", "STATE", "ENDPOINT", "LAST SEEN", "USED")

Status = StatusReport | Mapping[str, object]


def human_duration(seconds: float | None) -> str:
    """5s, 3m12s, 2h04m, 3d05h; "-" when unknown."""
    if seconds is None:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def human_mib(size_bytes: int | None) -> str:
    """A size in MiB with one decimal; "-" when unknown."""
    return "-" if size_bytes is None else f"{size_bytes / 2**20:.1f}MiB"


def _number(value: float | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "-"


def _state(pipeline: PipelineStatus) -> str:
    """The state, and whether a target is unreachable (it is `running`, but cannot send)."""
    state = pipeline.state + replica_count(pipeline)
    if any(t.state == LinkState.UNREACHABLE for t in pipeline.targets):
        return f"{state}, target unreachable"
    return state


def replica_count(pipeline: PipelineStatus) -> str:
    """` (3 replicas)`, or ` (2/3 replicas)` when only 2 are in the pipeline's state; "" for a
    pipeline that is not replicated."""
    total = len(pipeline.replicas)
    if not total:
        return ""
    same = sum(r.state == pipeline.state for r in pipeline.replicas)
    word = "replica" if total == 1 else "replicas"
    return f" ({total} {word})" if same == total else f" ({same}/{total} {word})"


def _rows(p: PipelineStatus) -> list[list[str]]:
    """A pipeline's row; a replicated one's with its errors left to a row per replica under it."""
    if not p.replicas:
        return [_row(p)]
    return [[*_row(p)[:-1], "-"], *(_row(r, "  ") for r in p.replicas)]


def _row(p: PipelineStatus, indent: str = "") -> list[str]:
    return [
        indent + p.name,
        _number(p.process.pid),
        _state(p),
        human_duration(p.process.uptime_s),
        _number(p.count("iterations")),
        _number(p.count("msgs_in")),
        _number(p.count("msgs_out")),
        _number(p.queue_depth),
        _number(p.rate_per_s, ".1f"),
        _number(p.process.cpu_percent, ".1f"),
        human_mib(p.process.rss_bytes),
        _number(p.restarts),
        _one_line(_last_column(p)),
    ]


def error_text(pipeline: PipelineStatus | Mapping[str, object]) -> str:
    """The last error as shown: as it is while it keeps the pipeline down, else with its age
    (`3m05s ago: ...`), so a recovered pipeline's old error does not read as its state."""
    p = pipeline if isinstance(pipeline, PipelineStatus) else PipelineStatus.decode(pipeline)
    error = p.error
    if not error.text or error.current or error.age_s is None:
        return error.text
    return f"{human_duration(error.age_s)} ago: {error.text}"


def _last_column(p: PipelineStatus) -> str:
    """The error that keeps a pipeline down, else what keeps it from making progress (a
    missing target, a failed source), else an older error with its age."""
    if p.warning and not (p.error.text and p.error.current):
        return f"warning: {p.warning}"
    return error_text(p)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def format_status(result: Status, width: int | None = None) -> str:
    """The `status` result as a table sized to its content; LAST ERROR is cut to `width`."""
    rows = [list(HEADERS), *(row for p in read(result).pipelines for row in _rows(p))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    if width is not None:
        room = max(MIN_ERROR_WIDTH, width - sum(widths) - 2 * len(widths))
        rows = [[*row[:-1], _truncate(row[-1], room)] for row in rows]
    return "\n".join(_join(row, widths) for row in rows)


def format_targets(result: Status, now: float | None = None) -> str:
    """One line per output link that cannot deliver for a reason nothing else shows (its target
    was withdrawn, or refuses our handshake): since when, what it holds (messages); "" when
    there is none. (A target not found yet is in the pipeline's warning.)"""
    now = time.time() if now is None else now
    lines = []
    processes = [r for p in read(result).pipelines for r in p.replicas or (p,)]
    for pipeline in processes:
        for target in pipeline.targets:
            if target.state not in TARGET_TROUBLE:
                continue
            when = ""
            if target.since is not None:
                clock = time.strftime("%H:%M:%S", time.localtime(target.since))
                when = f" since {clock} ({human_duration(now - target.since)})"
            lines.append(f"{pipeline.name} -> {target.name}: {target.state}{when}, "
                         f"{target.held:,} messages held")  # fmt: skip
    return "\n".join(lines)


def format_remote(result: Status) -> str:
    """Remote pipelines (from discovery) as a second table; "" when there are none. Other
    hosts' replicas of a pipeline (NAME#TAG-K) are listed under one row of that pipeline."""
    remote = read(result).remote
    if not remote:
        return ""
    groups: dict[tuple[str, bool], list[RemoteStatus]] = {}
    for r in remote:
        groups.setdefault((pipeline_of(r.name), is_replica(r.name)), []).append(r)
    rows = [list(REMOTE_HEADERS)]
    for (name, replicated), members in groups.items():
        if not replicated:
            rows += [_remote_row(r) for r in members]
            continue
        hosts = ", ".join(dict.fromkeys(r.host for r in members))
        rows.append([name, hosts, derived_state(r.state for r in members) +
                     f" ({len(members)} replica{'' if len(members) == 1 else 's'})", "-", "-",
                     "yes" if any(r.used for r in members) else "no"])  # fmt: skip
        rows += [_remote_row(r, "  ") for r in members]
    widths = [max(len(row[i]) for row in rows) for i in range(len(REMOTE_HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def _remote_row(r: RemoteStatus, indent: str = "") -> list[str]:
    return [indent + r.name, r.host, r.state, r.endpoint or "-",
            f"{_number(r.last_seen_s, '.1f')}s ago", "yes" if r.used else "no"]  # fmt: skip


def format_discovery(result: Status) -> str:
    """One line about beacons: counts, and what was dropped for which reason; then a line per
    name in conflict across hosts and per replicated pipeline whose hosts' replicas disagree on
    ordered/partition_by (both errors: JSON `conflicts`, `replica_config_differs`)."""
    found = read(result).daemon.discovery
    if found is None:
        return ""
    reasons = found.get("rejected")
    pairs = reasons.items() if isinstance(reasons, Mapping) else ()
    dropped = ", ".join(f"{n} {why}" for why, n in pairs if n) or "none"
    keys = found.get("key_ids")
    key = keys[0] if isinstance(keys, list) and keys else None
    signed = f"signed, key {key}" if found.get("signed") and key else "unsigned (no key)"
    if found.get("key_source") == "local":
        signed += " (local secret)"
    silent = found.get("peers_silent")
    names = [str(s) for s in silent] if isinstance(silent, list) else []
    warning = f"; SILENT static peers: {', '.join(names)}" if names else ""
    line = (f"discovery: beacons {signed}; sent {found.get('beacons_sent', 0)}, received "
            f"{found.get('beacons_received', 0)}, dropped {found.get('beacons_rejected', 0)} "
            f"({dropped}){warning}")  # fmt: skip
    return "\n".join([line, *_discovery_problems(found)])


def _discovery_problems(found: Mapping[str, object]) -> list[str]:
    lines = []
    for conflict in _listed(found.get("conflicts")):
        hosts = ", ".join(str(h) for h in _list(conflict.get("hosts")))
        lines.append(f"CONFLICT: {conflict.get('name')} is announced by {hosts}")
    for differ in _listed(found.get("replica_config_differs")):
        settings = differ.get("settings")
        pairs = settings.items() if isinstance(settings, Mapping) else ()
        said = "; ".join(f"{s} on {', '.join(str(h) for h in _list(hosts))}" for s, hosts in pairs)
        lines.append(f"REPLICAS DIFFER: {differ.get('name')}: {said}")
    return lines


def _listed(value: object) -> list[Mapping[str, object]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _join(row: Sequence[str], widths: Sequence[int]) -> str:
    cells = [
        cell.ljust(size) if HEADERS[i] in LEFT_ALIGNED else cell.rjust(size)
        for i, (cell, size) in enumerate(zip(row[:-1], widths, strict=True))
    ]
    return "  ".join([*cells, row[-1]])


def format_reload(result: Mapping[str, object]) -> str:
    """One line per kind of change: `added: a, b` ... `unchanged: (none)` (`scaled`, only
    when some are: pipelines whose replica count alone changed)."""
    kinds = ("added", "removed", "changed", "scaled", "unchanged")
    shown = [k for k in kinds if k != "scaled" or result.get(k)]
    return "\n".join(f"{kind}: {names_text(result.get(kind))}" for kind in shown)


def names_text(names: object) -> str:
    """Pipeline names joined, "(none)" when there are none."""
    listed = [str(n) for n in names] if isinstance(names, list | tuple) else []
    return ", ".join(listed) if listed else "(none)"
