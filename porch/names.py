"""Pipeline names: what a name may be (it is a routing id, a beacon entry and a file name).

One small module that config loading, discovery and the CLI all check names with.
"""

from __future__ import annotations

import re

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
    return None


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
