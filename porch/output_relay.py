"""Output relay: each worker's stdout and stderr, split into lines, to a LineSink.

The supervisor's loop polls the pipes (non-blocking); a wake-up reads a bounded amount so one
chatty worker cannot starve the others. A partial last line is kept until its newline, EOF or
the stream's close (porch/lines.py LineSplitter).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol, TextIO

from porch.lines import LineSplitter

READ_BYTES = 65536
READS_PER_WAKEUP = 16


class LineSink(Protocol):
    """Where the lines a worker prints go."""

    def line(self, pipeline: str, stream: str, text: str) -> None:
        """One complete line of `stream` ("stdout" or "stderr") from `pipeline`."""


class ConsoleSink:
    """Prints `name | line` like docker compose; names are coloured on a terminal."""

    COLORS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)

    def __init__(self) -> None:
        self._colors: dict[str, int] = {}

    def _prefix(self, pipeline: str, stream: TextIO) -> str:
        if not stream.isatty():
            return f"{pipeline} | "
        color = self._colors.setdefault(pipeline, self.COLORS[len(self._colors) % len(self.COLORS)])
        return f"\x1b[{color}m{pipeline} |\x1b[0m "

    def line(self, pipeline: str, stream: str, text: str) -> None:
        """Print one line with its pipeline's prefix on the matching stream."""
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(f"{self._prefix(pipeline, out)}{text}\n")
        out.flush()


class Registrar(Protocol):
    """The loop's side: poll a file descriptor and call a handler when it is readable."""

    def add(self, key: int, on_readable: Callable[[], None]) -> None:
        """Poll `key` from now on."""

    def remove(self, key: int) -> None:
        """Stop polling `key`."""


@dataclass
class _Stream:
    pipeline: str
    name: str  # "stdout" or "stderr"
    pipe: IO[bytes]
    splitter: LineSplitter


class OutputRelay:
    """The open output pipes of every worker, by file descriptor."""

    def __init__(self, sink: LineSink, loop: Registrar) -> None:
        self.sink = sink
        self.loop = loop
        self._streams: dict[int, _Stream] = {}
        self._by_pipeline: dict[str, list[int]] = {}  # its fds, stdout first

    def attach(self, pipeline: str, stdout: IO[bytes] | None, stderr: IO[bytes] | None) -> None:
        """Relay a new worker's pipes."""
        for name, pipe in (("stdout", stdout), ("stderr", stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._streams[fd] = _Stream(pipeline, name, pipe, LineSplitter())
            self._by_pipeline.setdefault(pipeline, []).append(fd)
            self.loop.add(fd, functools.partial(self.read, fd))

    def is_open(self, pipeline: str) -> bool:
        """Whether a pipe of `pipeline`'s worker is still open (output may still come)."""
        return bool(self._by_pipeline.get(pipeline))

    def read(self, fd: int) -> None:
        """Read what `fd` has (bounded), relay its complete lines; close it at EOF."""
        stream = self._streams.get(fd)
        if stream is None:
            return
        now = time.monotonic()
        for _ in range(READS_PER_WAKEUP):  # bounded: one chatty worker can't starve the loop
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                return
            for text in stream.splitter.feed(data, now):
                self.sink.line(stream.pipeline, stream.name, text)
            if not data:  # EOF: the worker (and every child holding the pipe) is gone
                self._close(fd)
                return

    def close(self, pipeline: str) -> None:
        """Close `pipeline`'s pipes, relaying what is left of their last lines."""
        for fd in list(self._by_pipeline.get(pipeline, ())):
            self._close(fd)

    def close_all(self) -> None:
        """Close every pipe (the supervisor ends)."""
        for fd in list(self._streams):
            self._close(fd)

    def _close(self, fd: int) -> None:
        self.loop.remove(fd)
        stream = self._streams.pop(fd)
        fds = self._by_pipeline[stream.pipeline]
        fds.remove(fd)
        if not fds:
            del self._by_pipeline[stream.pipeline]
        for text in stream.splitter.finish():
            self.sink.line(stream.pipeline, stream.name, text)
        if not stream.pipe.closed:
            stream.pipe.close()
