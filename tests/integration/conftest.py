"""Fixtures that run `porch` as a real subprocess and wait on what it prints."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PORCH = Path(sys.executable).parent / "porch"
POLL_INTERVAL_S = 0.05
READER_DRAIN_TIMEOUT_S = 5.0
RUN_MARKER = "PORCH_TEST_RUN_ID"


class PorchRun:
    """One `porch run` process, with its stdout and stderr collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = {**env, RUN_MARKER: uuid.uuid4().hex}
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [str(PORCH), *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            self._start_reader(self.proc.stdout, self.stdout),
            self._start_reader(self.proc.stderr, self.stderr),
        ]

    @staticmethod
    def _start_reader(pipe: IO[str], sink: list[str]) -> threading.Thread:
        def read() -> None:
            for line in pipe:
                sink.append(line.rstrip("\n"))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def lines_of(self, pipeline: str) -> list[str]:
        """What `pipeline` printed to stdout so far, without its `NAME | ` prefix."""
        prefix = f"{pipeline} | "
        return [line[len(prefix) :] for line in list(self.stdout) if line.startswith(prefix)]

    def report(self) -> str:
        """Everything captured so far, for assertion messages."""
        out = "\n".join(self.stdout)
        err = "\n".join(self.stderr)
        return f"command: porch {' '.join(self.args)}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str = "") -> None:
        """Poll `predicate` until it holds; fail with the captured output at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}\n{self.report()}"
                )
            if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                if predicate():
                    return
                raise AssertionError(
                    f"porch exited ({self.proc.returncode}) before {what}\n{self.report()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def wait_for_line(self, pipeline: str, line: str, timeout_s: float) -> None:
        """Wait until `pipeline` has printed exactly `line`."""
        self.wait_until(lambda: line in self.lines_of(pipeline), timeout_s, f"{pipeline} | {line}")

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for porch to exit and for its output to be fully read; return the exit code."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"porch still running after {timeout_s}s\n{self.report()}"
            ) from None
        for reader in self._readers:
            reader.join(READER_DRAIN_TIMEOUT_S)
            if reader.is_alive():
                # Another process still holds porch's stdout or stderr: a pipeline outlived it.
                raise AssertionError(
                    f"porch exited ({code}) but its output pipes are still open\n{self.report()}"
                )
        return code

    def interrupt(self) -> None:
        """Send SIGINT to porch itself, as Ctrl+C in its terminal would."""
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL porch and everything it started, then close the pipes."""
        self.proc.kill()
        # Pipelines run in their own process groups and may have been orphaned: find them by
        # the marker that every process started by this run inherits in its environment.
        for proc in _processes_marked(self.env[RUN_MARKER]):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(READER_DRAIN_TIMEOUT_S)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _processes_marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(RUN_MARKER) == marker:
                found.append(proc)
    return found


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """Where examples write their files (PORCH_EXAMPLE_OUT)."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def porch_cli(out_dir: Path) -> Iterator[Callable[..., PorchRun]]:
    """Start `porch ARGS...` as a subprocess; every process started is killed at teardown."""
    started: list[PorchRun] = []
    env = {**os.environ, "PORCH_EXAMPLE_OUT": str(out_dir)}

    def start(*args: str) -> PorchRun:
        run = PorchRun(list(args), env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
