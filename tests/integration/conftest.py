"""Fixtures that run `porch` as a real subprocess and wait on what it prints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

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
        self.proc, self.stdout, self.stderr, self._readers = spawn_captured(
            [str(PORCH), *args], REPO_ROOT, self.env
        )

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


def is_worker_of(proc: psutil.Process, config: Path) -> bool:
    """Whether `proc` is the worker of `config`: a fork-server worker is titled `porch worker
    NAME`, a fresh interpreter (PORCH_FORK_SERVER=0) has the config's path in its argv."""
    cmdline = proc.cmdline()
    if str(config) in cmdline:
        return True
    name = json.loads(config.read_text()).get("name")
    return bool(cmdline) and cmdline[0] == f"porch worker {name}"


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


# ---- porchd / porchctl -------------------------------------------------------------------

BIN = Path(sys.executable).parent
PORCHD = BIN / "porchd"
PORCHCTL = BIN / "porchctl"
CTL_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 15.0


def _read_lines(pipe: IO[str], sink: list[str]) -> threading.Thread:
    def read() -> None:
        for line in pipe:
            sink.append(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def spawn_captured(
    cmd: list[str], cwd: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[str], list[str], list[threading.Thread]]:
    """Start `cmd` with its stdout and stderr read line by line into lists by threads."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [_read_lines(proc.stdout, stdout), _read_lines(proc.stderr, stderr)]
    return proc, stdout, stderr, readers


class Porchd:
    """One `porchd start` process with its own socket and state folder under `home`."""

    def __init__(
        self, home: Path, sources: list[str], stop_timeout_s: float, extra: tuple[str, ...] = ()
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.control = home / "ctl.sock"
        self.state_dir = home / "state"
        self.sources = sources
        env = {k: v for k, v in os.environ.items() if k != "PORCH_CONTROL"}
        self.env = {
            **env,
            "PORCH_RUNTIME_DIR": str(home / "runtime"),
            "TMPDIR": str(home),  # the supervisor's worker socket folder lands here, not in /tmp
            RUN_MARKER: uuid.uuid4().hex,
        }
        self.args = [
            "start",
            *sources,
            "--control",
            str(self.control),
            "--state-dir",
            str(self.state_dir),
            "--stop-timeout",
            str(stop_timeout_s),
            *extra,
        ]
        self.proc, self.stdout, self.stderr, self._readers = spawn_captured(
            [str(PORCHD), *self.args], home, self.env
        )

    # ---- porchctl ------------------------------------------------------------------------

    def ctl(self, *args: str, timeout_s: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run `porchctl --control <this socket> ARGS...` and return what it did."""
        return subprocess.run(
            [str(PORCHCTL), "--control", str(self.control), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        """`porchctl status --json`, parsed; fails the test when porchctl fails."""
        done = self.ctl("status", "--json")
        assert done.returncode == 0, f"porchctl status failed: {done.stderr}\n{self.report()}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def pipeline(self, name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        """The status entry of pipeline `name` (from `status`, or a fresh one)."""
        pipelines = (status or self.status())["pipelines"]
        found = [p for p in pipelines if p["name"] == name]
        assert found, f"no pipeline {name!r} in status: {[p['name'] for p in pipelines]}"
        return found[0]

    def log_path(self, name: str) -> Path:
        """The log file of pipeline `name`."""
        return self.state_dir / "logs" / f"{name}.log"

    def output(self, name: str) -> list[str]:
        """What pipeline `name` printed to stdout so far (log lines without time and stream)."""
        try:
            text = self.log_path(name).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines = []
        for line in text.splitlines():
            parts = line.split(" ", 2)
            if len(parts) >= 2 and parts[1] == "stdout":
                lines.append(parts[2] if len(parts) == 3 else "")
        return lines

    # ---- waiting -------------------------------------------------------------------------

    def report(self) -> str:
        """porchd's command line and captured output, for assertion messages."""
        out = "\n".join(self.stdout)
        err = "\n".join(self.stderr)
        return (
            f"command: porchd {' '.join(self.args)}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        )

    def wait_until(self, predicate: Callable[[], Any], timeout_s: float, what: str = "") -> Any:
        """Poll `predicate` until it returns something truthy (returned); fail at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}\n{self.report()}"
                )
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"porchd exited ({self.proc.returncode}) before {what}\n{self.report()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def wait_running(self, *names: str, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait until porchd answers and each named pipeline is running; return that status."""

        def ready() -> dict[str, Any] | None:
            if not self.control.exists():
                return None
            done = self.ctl("status", "--json")
            if done.returncode != 0:
                return None
            status: dict[str, Any] = json.loads(done.stdout)
            states = {p["name"]: p["state"] for p in status["pipelines"]}
            return status if all(states.get(n) == "running" for n in names) else None

        result: dict[str, Any] = self.wait_until(ready, timeout_s, f"{', '.join(names)} running")
        return result

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for porchd to exit and for its output to be read; return its exit code."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"porchd still running after {timeout_s}s\n{self.report()}"
            ) from None
        for reader in self._readers:
            reader.join(READER_DRAIN_TIMEOUT_S)
        return code

    def kill(self) -> None:
        """SIGKILL porchd and every process it started (found by the run marker)."""
        marked = _processes_marked(self.env[RUN_MARKER])
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for proc in marked + _processes_marked(self.env[RUN_MARKER]):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(READER_DRAIN_TIMEOUT_S)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def porchd(tmp_path: Path) -> Iterator[Callable[..., Porchd]]:
    """Start `porchd start SOURCES...` in its own folder; everything it started dies at teardown.

    Call it as `porchd(*sources, stop_timeout_s=5.0, home=None, extra=())`; `home` defaults to
    `tmp_path` (pass another folder to run a second daemon); `extra` are more options.
    """
    started: list[Porchd] = []

    def start(
        *sources: str | Path,
        stop_timeout_s: float = 5.0,
        home: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> Porchd:
        daemon = Porchd(home or tmp_path, [str(s) for s in sources], stop_timeout_s, extra)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def state_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PORCH_STATE_DIR for this test (porch run keeps outboxes and dead letters under <it>/run)."""
    path = tmp_path / "state-base"
    monkeypatch.setenv("PORCH_STATE_DIR", str(path))
    return path


@pytest.fixture
def run_porch(state_base: Path, porch_cli: Callable[..., PorchRun]) -> Callable[..., PorchRun]:
    """porch_cli, started after PORCH_STATE_DIR is set (it copies the environment at set-up)."""

    def start(*args: str) -> PorchRun:
        run = porch_cli(*args)
        assert run.env["PORCH_STATE_DIR"] == str(state_base)
        return run

    return start
