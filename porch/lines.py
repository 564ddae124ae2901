"""Worker output as lines: linear in the bytes read, bounded in memory, progress bars collapsed.

The supervisor reads a worker's stdout and stderr in blocks; one LineSplitter per stream turns
them into the lines it logs or prints:

- A line longer than `max_line_bytes` is cut into pieces of at most that many bytes (at a UTF-8
  character boundary); every piece but the last ends with SPLIT_MARK.
- A carriage return starts the line over, as on a terminal: only the text after the last `\\r`
  stays. Each text a `\\r` ends is a progress update (tqdm and friends); at most one of them per
  `progress_interval_s` becomes a line (the latest one when it is due), the rest are dropped.
- `\\r\\n` is a plain line end. The text a stream ends with (no newline) is a line of its own.

Pure logic, no I/O: the caller passes the time.
"""

from __future__ import annotations

MAX_LINE_BYTES = 64 * 1024
PROGRESS_INTERVAL_S = 1.0
SPLIT_MARK = " [porch: line split]"
CR = 0x0D


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


def _boundary(data: bytearray, limit: int) -> int:
    """The largest cut <= limit that does not split a UTF-8 character (limit when none does)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut if cut > limit - 4 and cut > 0 else limit


class LineSplitter:
    """Turns one output stream's blocks of bytes into lines (see the module docstring)."""

    def __init__(
        self,
        max_line_bytes: int = MAX_LINE_BYTES,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
    ) -> None:
        if max_line_bytes < 4:
            raise ValueError(f"max_line_bytes must be >= 4, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self.progress_interval_s = progress_interval_s
        self._pending = bytearray()  # the current line, after its last carriage return
        self._cr = False  # the bytes so far ended with \r: a line end or the start of an update
        self._next_progress_s = float("-inf")

    def feed(self, data: bytes, now_s: float) -> list[str]:
        """The lines that `data` completes (reading on from where the last block stopped)."""
        lines: list[str] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            self._add(data[start:end], now_s, lines)
            if newline < 0:
                return lines
            lines.append(_decode(self._pending))  # a \r right before the \n is a line end
            self._pending.clear()
            self._cr = False
            start = newline + 1

    def finish(self) -> list[str]:
        """The stream ended: what is left, as a last line (none when nothing is)."""
        rest = [_decode(self._pending)] if self._pending else []
        self._pending.clear()
        self._cr = False
        return rest

    def _add(self, segment: bytes, now_s: float, lines: list[str]) -> None:
        """Add bytes that hold no newline to the current line."""
        if not segment:
            return
        if self._cr:  # the text before that \r was a progress update
            self._cr = False
            self._update(now_s, lines)
        ends_with_cr = segment[-1] == CR
        if ends_with_cr:
            segment = segment[:-1]
        last = segment.rfind(b"\r")
        if last >= 0:
            previous = segment.rfind(b"\r", 0, last)
            if previous >= 0:  # several updates in this block: only the latest one matters
                self._pending[:] = segment[previous + 1 : last][: self.max_line_bytes]
            else:
                self._append(segment[:last], lines)
            self._update(now_s, lines)
            segment = segment[last + 1 :]
        self._append(segment, lines)
        self._cr = ends_with_cr

    def _append(self, data: bytes, lines: list[str]) -> None:
        pending = self._pending
        pending += data
        if len(pending) <= self.max_line_bytes:
            return
        start = 0
        while len(pending) - start > self.max_line_bytes:
            window = pending[start : start + self.max_line_bytes + 1]
            cut = _boundary(window, self.max_line_bytes)
            lines.append(_decode(window[:cut]) + SPLIT_MARK)
            start += cut
        del pending[:start]

    def _update(self, now_s: float, lines: list[str]) -> None:
        """The current line is a finished progress update: a line if one is due, else dropped."""
        if self._pending and now_s >= self._next_progress_s:
            self._next_progress_s = now_s + self.progress_interval_s
            lines.append(_decode(self._pending))
        self._pending.clear()
