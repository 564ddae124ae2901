"""Pipeline names: what a name may be (it is a routing id, a beacon entry and a file name).

One small module that config loading, discovery and the CLI all check names with.
"""

from __future__ import annotations

import re
import secrets

# Names: DPorch asks only for 3 characters or more; Porch refuses what it cannot carry.
MIN_NAME_CHARS = 3
# 128 bytes of UTF-8: a name is a ZeroMQ routing id (at most 255 bytes), a beacon entry (at most
# 255 characters) and part of file names (<name>.sqlite-journal, <name>.log.N); 128 + the
# longest suffix (15 bytes) still fits the tightest common file-name limit, eCryptfs's 143 bytes
# (ext4 and most others allow 255).
MAX_NAME_BYTES = 128
# Names of this shape are plain everywhere: in file names, shells, URLs and Prometheus labels.
PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a pipeline name, with the fix; None when it can be one."""
    if len(name) < MIN_NAME_CHARS:
        return f"must be at least {MIN_NAME_CHARS} characters, got {name!r}; make it longer"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return (
            f"is {size} bytes long in UTF-8, over {MAX_NAME_BYTES} (names are ZeroMQ routing "
            f"ids, beacon entries and file names); shorten it, got {name[:40]!r}..."
        )
    for char in name:
        if char.isspace():
            return f"must not contain whitespace, got {name!r}; use '_' or '-' instead"
        if not char.isprintable() or "\ud800" <= char <= "\udfff":
            return (
                f"must not contain control or invisible characters ({_codepoint(char)}), "
                f"got {name!r}; remove it"
            )
        if char == "/":
            return f"must not contain '/' (names are file names), got {name!r}; use '_' or '-'"
        if char == REPLICA_MARK:
            return (
                f"must not contain {REPLICA_MARK!r} (it names one replica of a replicated "
                f"pipeline), got {name!r}; use '_' or '-'"
            )
    return None


# Replicas (config field `replicas`, docs/replicas.md). Each replica of pipeline NAME is a
# worker process named NAME#TAG-K: TAG is its supervisor's (a few hex digits of its daemon or
# run id, so the replicas of several hosts never share a name) and K its index there. That
# process name is its ZeroMQ routing id, directory entry and file names; everything that means
# the pipeline (targets, `input_data` keys, source_pipeline_count) uses NAME.
REPLICA_MARK = "#"
REPLICA_SUFFIX_RE = re.compile(r"#([0-9a-f]{1,16})-([0-9]{1,3})")


def replica_name(pipeline: str, tag: str, index: int) -> str:
    """The process name of replica `index` of `pipeline` under the supervisor tagged `tag`."""
    return f"{pipeline}{REPLICA_MARK}{tag}-{index}"


TAG_HEX_DIGITS = 6  # a supervisor's replica tag: this many hex digits of its origin


def supervisor_tag(origin: str) -> str:
    """The TAG of the replicas a supervisor runs: the first TAG_HEX_DIGITS hex digits of its
    origin (porchd: its daemon id; porch run: the hex of `run-<hex>`), or random ones when it
    has none (porchd without discovery before it had a daemon id)."""
    digits = origin.removeprefix("run-").lower()
    if len(digits) >= TAG_HEX_DIGITS and all(c in "0123456789abcdef" for c in digits):
        return digits[:TAG_HEX_DIGITS]
    return secrets.token_hex(TAG_HEX_DIGITS // 2)


def pipeline_of(name: str) -> str:
    """The pipeline a process name belongs to: NAME for NAME#TAG-K, else the name itself."""
    return name.split(REPLICA_MARK, 1)[0]


def is_replica(name: str) -> bool:
    """Whether a process name is one replica of a replicated pipeline."""
    return REPLICA_MARK in name


def replica_index(name: str) -> int | None:
    """K of NAME#TAG-K; None for a plain pipeline name."""
    mark = name.find(REPLICA_MARK)
    if mark < 0:
        return None
    found = REPLICA_SUFFIX_RE.fullmatch(name, mark)
    return int(found.group(2)) if found else None


def replica_tag(name: str) -> str | None:
    """TAG of NAME#TAG-K (which supervisor runs it); None for a plain pipeline name."""
    mark = name.find(REPLICA_MARK)
    found = REPLICA_SUFFIX_RE.fullmatch(name, mark) if mark >= 0 else None
    return found.group(1) if found else None


def process_name_problem(name: str) -> str | None:
    """Why `name` is neither a pipeline name nor a replica's process name; None when it is."""
    mark = name.find(REPLICA_MARK)
    if mark < 0:
        return name_problem(name)
    if not REPLICA_SUFFIX_RE.fullmatch(name, mark):
        return f"a replica's name is NAME#TAG-INDEX, got {name!r}"
    return name_problem(name[:mark])


def name_warning(name: str) -> str | None:
    """Why a valid `name` will be awkward (file names, shells, Prometheus labels), or None."""
    if PLAIN_NAME_RE.fullmatch(name):
        return None
    if name.startswith("."):
        why = "starts with '.', so its log and state files are hidden"
    elif name.startswith("-"):
        why = "starts with '-', so commands read it as an option (write `porchctl stop -- NAME`)"
    else:
        odd = sorted({c for c in name if not PLAIN_NAME_RE.fullmatch(f"a{c}")})
        why = "has " + " ".join(repr(c) for c in odd) + ", awkward in file names and shells"
    return (
        f"{name!r} {why} (Porch escapes it in metrics labels, dashboards and graphs); "
        "letters, digits, '_', '-' and '.' are plain everywhere"
    )


def _codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"
