"""Pipeline output on disk: size-rotated log files, and reading them back (tail, follow).

porchd writes each pipeline's lines to `<state>/<daemon>/logs/<pipeline>.log`; porchctl reads
the files itself, so no log traffic crosses the control socket.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from porch import logs
from porch.paths import ensure_private_dir

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
READ_BLOCK_BYTES = 64 * 1024

log = logs.get("porch.logfiles")


class RotatingFile:
    """An append-only text file that rolls over to path.1 ... path.<backups> by size.

    A line is never split across files; a single line longer than max_bytes gets a file of its
    own. One writer only (porchd's supervisor loop). Writes go straight to the file descriptor,
    unbuffered: a write that fails (a full disk) leaves nothing behind to fail again on close.
    """

    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
    ) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError(f"need max_bytes > 0 and backups >= 0, got {max_bytes}, {backups}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._torn = False  # a failed write left part of a line: end it before the next one

    def write(self, line: str) -> None:
        """Append `line` and a newline, rotating first if it would not fit; OSError if it fails."""
        # backslashreplace: a lone surrogate from a script must not lose the whole line.
        data = (line + "\n").encode("utf-8", "backslashreplace")
        fd = self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            fd = self._rotate()
        if self._torn:
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        finally:
            self._size += written
            if written:
                self._torn = written < len(data)

    def close(self) -> None:
        """Close the file (the next write opens it again)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):  # nothing is buffered: nothing can be lost here
                os.close(fd)

    def backup(self, n: int) -> Path:
        """The path of backup number `n` (1 is the newest)."""
        return self.path.with_name(f"{self.path.name}.{n}")

    def _open(self) -> int:
        if self._fd is None:
            ensure_private_dir(self.path.parent)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
            # An existing file (porchd restarted) counts toward the size limit.
            self._size = os.fstat(self._fd).st_size
            # A line torn by an earlier failure (or an earlier porchd) is ended first.
            self._torn = self._size > 0 and os.pread(self._fd, 1, self._size - 1) != b"\n"
        return self._fd

    def _rotate(self) -> int:
        # Close before renaming: a follower that sees the rename knows the old file is complete.
        self.close()
        self._torn = False  # the torn line stays in the old file
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.backups - 1, 0, -1):
                if self.backup(n).exists():
                    os.replace(self.backup(n), self.backup(n + 1))
            os.replace(self.path, self.backup(1))
        return self._open()


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds: 2024-05-01T12:00:00.123Z."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass
class Outage:
    """Lines of one pipeline that could not be written since the last line that could."""

    lines: int = 0
    error: str = ""


class LogFileSink:
    """A LineSink (porch.supervisor) writing `<time> <stream> <text>` to <folder>/<name>.log.

    A line that cannot be written (a full disk, a removed folder) is dropped and counted, never
    raised: porchd must outlive its disk. The first line written after an outage is preceded by
    `<time> porch dropped N lines: <error>`, so the log itself shows where the gap is.
    """

    def __init__(
        self,
        folder: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.backups = backups
        self.clock = clock
        self._files: dict[str, RotatingFile] = {}
        self._outages: dict[str, Outage] = {}
        self.dropped: dict[str, int] = {}  # lines dropped per pipeline since porchd started

    def path_of(self, pipeline: str) -> Path:
        """The log file of `pipeline`."""
        # Config already restricts names; this guard keeps a bad one from escaping the folder.
        if pipeline in ("", ".", "..") or "/" in pipeline or "\0" in pipeline:
            raise ValueError(f"not a pipeline name usable as a file name: {pipeline!r}")
        return self.folder / f"{pipeline}.log"

    def line(self, pipeline: str, stream: str, text: str) -> None:
        """Write one line of `stream` from `pipeline`, stamped with the time in UTC."""
        file = self._files.get(pipeline)
        if file is None:
            file = RotatingFile(self.path_of(pipeline), self.max_bytes, self.backups)
            self._files[pipeline] = file
        stamp = timestamp(self.clock())
        try:
            outage = self._outages.get(pipeline)
            if outage is not None:
                file.write(f"{stamp} porch dropped {outage.lines} lines: {outage.error}")
                del self._outages[pipeline]
                log.warning("log_write_recovered", pipeline=pipeline, dropped=outage.lines)
            file.write(f"{stamp} {stream} {text}")
        except OSError as exc:
            self._write_failed(pipeline, file, exc)

    def close(self) -> None:
        """Close every open log file."""
        for file in self._files.values():
            file.close()
        self._files.clear()

    def _write_failed(self, pipeline: str, file: RotatingFile, exc: OSError) -> None:
        # Drop the line, warn once per outage, and reopen on the next line (the folder may have
        # been removed under us).
        file.close()
        self.dropped[pipeline] = self.dropped.get(pipeline, 0) + 1
        outage = self._outages.get(pipeline)
        if outage is None:
            outage = self._outages[pipeline] = Outage(error=exc.strerror or str(exc))
            log.warning("log_write_failed", pipeline=pipeline, path=str(file.path), error=str(exc))
        outage.lines += 1


def _tail_offset(file: BinaryIO, lines: int) -> int:
    """Where the last `lines` lines of `file` start (reading backwards, a block at a time)."""
    end = file.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    # A newline as the very last byte ends the last line; it does not start another one.
    limit = end - 1
    pos = end
    seen = 0
    while pos > 0:
        step = min(READ_BLOCK_BYTES, pos)
        pos -= step
        file.seek(pos)
        block = file.read(step)
        stop = min(len(block), limit - pos)
        while (i := block.rfind(b"\n", 0, stop)) >= 0:
            seen += 1
            if seen == lines:
                return pos + i + 1
            stop = i
    return 0


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of `path` (none when it does not exist yet)."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return []
    with file:
        file.seek(_tail_offset(file, lines))
        data = file.read()
    if not data:
        return []
    return [_decode(raw) for raw in data.removesuffix(b"\n").split(b"\n")]


def _never() -> bool:
    return False


class _Follower:
    """Reads the lines appended to a path, across rotation and truncation."""

    def __init__(self, path: Path, backlog: int) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._id: tuple[int, int] = (0, 0)
        self._pending = b""
        self._open(backlog)

    def _open(self, backlog: int | None) -> BinaryIO | None:
        """Open the path; start `backlog` lines from its end, or at its start when None."""
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return None
        info = os.fstat(file.fileno())
        self._id = (info.st_dev, info.st_ino)
        if backlog is not None:
            file.seek(_tail_offset(file, backlog))
        self._file = file
        return file

    def poll(self) -> list[str]:
        """The complete lines written since the last poll."""
        # A file that appears (or reappears after rotation) was written after we started.
        file = self._file or self._open(None)
        if file is None:
            return []
        data = file.read()
        if data:
            return self._split(data)
        return self._check_replaced(file)

    def _check_replaced(self, file: BinaryIO) -> list[str]:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            info = None
        if info is not None and (info.st_dev, info.st_ino) == self._id:
            if info.st_size < file.tell():  # truncated in place: start over
                file.seek(0)
                self._pending = b""
            return []
        # Rotated away or deleted. The writer closed the old file before renaming it, so one last
        # read gets everything it wrote there; the next poll opens the new file.
        lines = self._split(file.read(), final=True)
        self.close()
        return lines

    def _split(self, data: bytes, final: bool = False) -> list[str]:
        *complete, self._pending = (self._pending + data).split(b"\n")
        if final and self._pending:
            complete.append(self._pending)
            self._pending = b""
        return [_decode(raw) for raw in complete]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def follow(
    path: Path,
    poll_s: float = 0.2,
    stop: Callable[[], bool] = _never,
    backlog: int = 0,
) -> Iterator[str]:
    """Yield lines as they are appended to `path` (after the last `backlog`), until stop()."""
    follower = _Follower(path, backlog)
    try:
        while not stop():
            lines = follower.poll()
            yield from lines
            if not lines:
                time.sleep(poll_s)
    finally:
        follower.close()
