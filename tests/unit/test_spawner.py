"""Spawning and reaping (porch/spawner.py) in-process: a fake Popen, a fake fork server and
watchdog; no process is started."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from porch import forkserver
from porch.config import PipelineConfig
from porch.control import WorkerState
from porch.event_loop import EventLoop
from porch.health import HealthReport
from porch.output_relay import OutputRelay
from porch.restart import RestartPolicy, RestartTracker
from porch.spawner import Spawner, SpawnSettings, local_links_dir
from porch.worker_handle import RestartBook, WorkerHandle

pytestmark = pytest.mark.timeout(30)
NO_SUCH_PID = 2**30  # above any pid_max: a signal to it reaches nobody


class FakePopen:
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs
        self.pid = NO_SUCH_PID
        self.returncode: int | None = None
        r, w = os.pipe()
        r2, w2 = os.pipe()
        self.stdout, self.stderr = os.fdopen(r, "rb"), os.fdopen(r2, "rb")
        self.writers = (w, w2)

    def poll(self) -> int | None:
        return self.returncode

    def close_writers(self) -> None:
        for fd in self.writers:
            os.close(fd)


class Watcher:
    def __init__(self) -> None:
        self.watched: list[int] = []
        self.pid = NO_SUCH_PID + 1

    def watch(self, pid: int) -> None:
        self.watched.append(pid)

    def close(self) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def line(self, pipeline: str, stream: str, text: str) -> None:
        self.lines.append((pipeline, stream, text))


SETTINGS = SpawnSettings("ipc:///run/w", "127.0.0.1", 10.0, Path("/state"), "/key", 5)


def config(name: str = "p", sources: int = 0) -> PipelineConfig:
    return PipelineConfig(name=name, scripts=(), source_pipeline_count=sources,
                          path=Path(f"/c/{name}.json"))  # fmt: skip


def new_handle(name: str = "p") -> WorkerHandle:
    return WorkerHandle(config(name), RestartBook(RestartTracker(RestartPolicy.ON_FAILURE)))


def spawner(loop: EventLoop, **kwargs: object) -> tuple[Spawner, Watcher, Sink]:
    watcher, sink = Watcher(), Sink()
    relay = OutputRelay(sink, loop)
    made = Spawner(SETTINGS, loop, watcher, relay, lambda: None, popen=FakePopen, **kwargs)  # type: ignore[arg-type]
    return made, watcher, sink


def test_the_command_line_carries_the_settings() -> None:
    loop = EventLoop()
    made, _, _ = spawner(loop, fork=False)
    cmd = made.command(config(), parent_pid=42)
    assert cmd[:3] == [sys.executable, "-m", "workers"]
    joined = " ".join(cmd)
    for part in ("--config /c/p.json", "--control ipc:///run/w", "--bind-host 127.0.0.1",
                 "--parent-pid 42", "--stop-timeout 10.0", "--state-dir /state",
                 "--key-file /key", "--iterations 5"):  # fmt: skip
        assert part in joined
    assert "--iterations" not in made.command(config(sources=1))  # only sources are counted
    loop.close()


def test_a_fork_server_that_cannot_start_means_fresh_interpreters_from_then_on() -> None:
    loop = EventLoop()
    tries: list[int] = []

    def broken(env: dict[str, str]) -> forkserver.ForkServer:
        tries.append(1)
        raise forkserver.ForkServerError("the fork server did not start")

    made, watcher, _ = spawner(loop, fork=True, make_server=broken)
    with capture_logs() as logs:
        first = made.start(config())
        made.start(config("q"))
    assert isinstance(first, FakePopen) and tries == [1]
    assert [e["event"] for e in logs if e["event"].startswith("fork_server")] == [
        "fork_server_failed"]  # fmt: skip
    assert watcher.watched == [NO_SUCH_PID, NO_SUCH_PID]
    assert first.kwargs["start_new_session"] is True and first.kwargs["cwd"] == Path("/c")
    loop.close()


def test_a_spawned_worker_is_reaped_after_its_output_drained() -> None:
    loop = EventLoop()
    made, _, sink = spawner(loop, fork=False)
    handle = new_handle()
    handle.health.receive(HealthReport(iterations=4), 0.5)
    made.spawn(handle)
    popen = handle.process.popen if handle.process else None
    assert isinstance(popen, FakePopen) and handle.state is WorkerState.STARTING
    assert handle.health.total("iterations") == 4 and handle.health.report.iterations == 0
    seen: list[str] = []
    assert made.reap(handle, 1.0, lambda: seen.append("exit")) is None  # still running
    os.write(popen.writers[0], b"last words\n")
    popen.returncode = 3
    popen.close_writers()
    assert made.reap(handle, 2.0, lambda: seen.append("exit")) is None  # output not read yet
    assert seen == ["exit"] and handle.exited_s == 2.0
    while made.relay.is_open("p"):
        loop.dispatch(loop.poll(100))
    assert made.reap(handle, 2.1, lambda: seen.append("again")) == 3
    assert sink.lines == [("p", "stdout", "last words")] and seen == ["exit"]
    assert not handle.alive and handle.pid is None
    loop.close()


def test_local_links_need_a_run_folder_that_can_hold_their_sockets(tmp_path: Path) -> None:
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    assert local_links_dir(private) == private
    deep = private / ("x" * 120)
    deep.mkdir(mode=0o700)
    with capture_logs() as logs:
        assert local_links_dir(deep) is None
    assert [e["event"] for e in logs] == ["local_links_unavailable"]


def test_a_replica_is_started_with_its_process_name_and_runs_as_it() -> None:
    from dataclasses import replace

    from porch.errors import PorchError
    from porch.scaling import process_configs
    from workers.__main__ import as_replica, parse_args

    loop = EventLoop()
    made, _, _ = spawner(loop, fork=False)
    plain = config("hash")
    assert "--replica" not in made.command(plain)
    assert process_configs(plain, "abc123") == [plain]  # no "replicas" key: one process
    replicated = replace(plain, replicas=2, replicated=True)
    first, second = process_configs(replicated, "abc123")
    assert first.name == "hash#abc123-0"
    assert (second.name, second.replica_of, second.pipeline) == ("hash#abc123-1", "hash", "hash")
    cmd = made.command(second, parent_pid=42)
    assert cmd[cmd.index("--replica") + 1] == "hash#abc123-1"
    assert cmd[cmd.index("--config") + 1] == "/c/hash.json"  # the pipeline's one config
    # the worker's side (also what the fork server runs: the same argv after `-m workers`)
    args = parse_args(cmd[3:])
    assert as_replica(replicated, args.replica) == second
    assert as_replica(plain, None) is plain
    for wrong in ("other#abc123-1", "hash", "hash#zz-1"):
        with pytest.raises(PorchError, match="--replica"):
            as_replica(replicated, wrong)
    loop.close()
