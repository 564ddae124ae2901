"""What the supervisor survives and cleans up, with real processes: a full state filesystem,
worker output that floods, and processes that would outlive their supervisor.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from porch.lines import MAX_LINE_BYTES, SPLIT_MARK
from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_porchd import gone, wait_for, write_pipeline

pytestmark = [pytest.mark.integration]

Start = Callable[..., Porchd]


def _need_root(what: str) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} needs root; CI=true requires it to run")
    pytest.skip(f"{what} needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 8 MiB tmpfs (root only), unmounted at teardown."""
    _need_root("mounting a small tmpfs")
    mount = tmp_path / "small-fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until its filesystem is full; return the file."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with filler.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    while True:  # the last partial block: every byte counts
        try:
            with filler.open("ab", buffering=0) as file:
                file.write(b"\0" * 512)
        except OSError:
            return filler


# ---- a full state filesystem (issue 11 item 8) -----------------------------------------

CHATTY = """
    import time
    n = 0
    def step():
        global n
        n += 1
        print("line", n)
        time.sleep(0.02)
"""

KEEPER = """
    import time
    n = 0
    def step():
        global n
        n += 1
        time.sleep(0.02)
        return n
    def end():
        with open({marker!r}, "w") as file:
            file.write("keeper end ran")
"""

COUNTER = """
    def step(input_data):
        pass
    def end():
        with open({marker!r}, "w") as file:
            file.write("counter end ran")
"""


@pytest.mark.timeout(90)
def test_full_state_filesystem_drops_logs_fails_the_durable_pipeline_and_porchd_stays_up(
    tmp_path: Path, porchd: Start, small_fs: Path
):
    folder = tmp_path / "configs"
    keeper_end, counter_end = tmp_path / "keeper.end", tmp_path / "counter.end"
    daemon = porchd(
        write_pipeline(folder, "chatty", CHATTY),
        write_pipeline(folder, "keeper", KEEPER.format(marker=str(keeper_end)),
                       targets=("counter",), outbox="durable", restart="never"),
        write_pipeline(folder, "counter", COUNTER.format(marker=str(counter_end)), sources=1),
        extra=("--state-dir", str(small_fs)),
    )  # fmt: skip
    daemon.state_dir = small_fs
    daemon.wait_running("chatty", "keeper", "counter")
    daemon.wait_until(lambda: len(daemon.output("chatty")) >= 5, 10, "chatty's log")

    filler = fill(small_fs)

    keeper = daemon.wait_until(
        lambda: (e := daemon.pipeline("keeper"))["state"] == "failed" and e, 30, "keeper failed"
    )
    assert "outbox" in keeper["last_error"] and "full" in keeper["last_error"], keeper
    assert keeper_end.read_text() == "keeper end ran"
    chatty = daemon.wait_until(
        lambda: (e := daemon.pipeline("chatty"))["log_lines_dropped"] > 10 and e, 20, "drops"
    )
    assert chatty["state"] == "running", chatty
    assert daemon.proc.poll() is None, daemon.report()
    assert any("log_write_failed" in line for line in daemon.stderr), daemon.report()

    # Space again: the log goes on, and says how much is missing from it.
    filler.unlink()
    gap = re.compile(r"\S+ porch dropped (\d+) lines: No space left on device")
    marks = daemon.wait_until(
        lambda: gap.findall(daemon.log_path("chatty").read_text()), 20, "the log to mark the gap"
    )
    assert len(marks) == 1 and int(marks[0]) >= chatty["log_lines_dropped"], marks
    before = len(daemon.output("chatty"))
    daemon.wait_until(lambda: len(daemon.output("chatty")) > before + 5, 20, "chatty's log")
    assert daemon.pipeline("counter")["state"] == "running"
    done = daemon.ctl("stop", timeout_s=40)
    assert done.returncode == 0, done.stderr + daemon.report()
    assert daemon.wait_exit(10) == 0, daemon.report()
    assert counter_end.read_text() == "counter end ran"


# ---- worker output: long lines and progress bars (issue 11 item 11) ---------------------

FLOODER = """
    import sys
    import porch
    def step():
        sys.stdout.write("x" * (1 << 20) + "\\n")  # one 1 MiB line
        for i in range(20000):  # a progress bar redrawn 20,000 times as fast as it can
            sys.stdout.write(f"\\rprogress {i}")
            sys.stdout.flush()
        print()
        print("done")
        raise porch.Stop
"""


@pytest.mark.timeout(60)
def test_a_huge_line_is_split_and_marked_and_progress_updates_are_collapsed(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
):
    run = porch_cli("run", str(write_pipeline(tmp_path, "flooder", FLOODER)))
    assert run.wait_exit(40) == 0, run.report()[-2000:]

    lines = run.lines_of("flooder")
    assert lines[-1] == "done", lines[-5:]
    pieces = [line for line in lines if line.startswith("x")]
    assert len(pieces) == (1 << 20) // MAX_LINE_BYTES, [len(p) for p in pieces]
    assert all(p.endswith(SPLIT_MARK) for p in pieces[:-1]), [p[-30:] for p in pieces]
    assert "".join(p.removesuffix(SPLIT_MARK) for p in pieces) == "x" * (1 << 20)
    progress = [line for line in lines if line.startswith("progress")]
    # one line at most per second while it draws, and its final state
    assert 1 <= len(progress) <= 20, progress
    assert progress[-1] == "progress 19999", progress


# ---- nothing outlives its supervisor (issue 11 item 10) ---------------------------------

# step() blocks every signal, then sleeps in C: neither the parent-death signal nor a check
# between iterations can reach it.
STUCK = """
    import signal
    import time
    def step():
        print("stuck", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        time.sleep(300)
"""

# A child in a new session, and a grandchild orphaned by a double fork (its parent exits).
ESCAPER = """
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    print("child", child.pid, flush=True)
    shell = subprocess.run(["sh", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $!"],
                           capture_output=True, text=True, check=True)
    print("child", shell.stdout.strip(), flush=True)
    def step():
        time.sleep(0.05)
"""


GRACEFUL = """
    import time
    def step():
        time.sleep(0.05)
    def end():
        with open({marker!r}, "w") as file:
            file.write("graceful end ran")
"""


def children_of(daemon: Porchd, name: str) -> list[int]:
    """The pids pipeline `name`'s script printed as `child PID`."""
    return [int(line.split()[1]) for line in daemon.output(name) if line.startswith("child ")]


def run_dirs(folder: Path, pid: int) -> list[Path]:
    """Supervisor `pid`'s run folders: in `folder` (its TMPDIR), or in /tmp when that TMPDIR is
    too long for the sockets in it (pytest's numbered folders grow)."""
    return sorted({*folder.glob("porch-*"), *Path("/tmp").glob(f"porch-run-{pid}-*")})


@pytest.mark.timeout(90)
def test_killing_porchd_kills_a_stuck_worker_and_script_children_in_new_sessions(
    tmp_path: Path, porchd: Start
):
    folder = tmp_path / "configs"
    marker = tmp_path / "graceful.end"
    daemon = porchd(
        write_pipeline(folder, "stuck", STUCK),
        write_pipeline(folder, "escaper", ESCAPER),
        write_pipeline(folder, "graceful", GRACEFUL.format(marker=str(marker))),
        stop_timeout_s=2,
    )
    status = daemon.wait_running("stuck", "escaper", "graceful")
    workers = [daemon.pipeline(n, status)["pid"] for n in ("stuck", "escaper")]
    daemon.wait_until(lambda: "stuck" in daemon.output("stuck"), 10, "stuck in step()")
    children = daemon.wait_until(
        lambda: len(c := children_of(daemon, "escaper")) == 2 and c, 10, "the children's pids"
    )
    assert run_dirs(tmp_path, daemon.proc.pid), "no run folder while porchd runs"

    daemon.proc.kill()
    daemon.wait_exit(10)

    for pid in workers + children:
        wait_for(lambda pid=pid: gone(pid), 30, f"process {pid} to die with porchd")
    wait_for(
        lambda: not run_dirs(tmp_path, daemon.proc.pid), 10, "porchd's run folder to be removed"
    )
    assert marker.read_text() == "graceful end ran"  # the others stopped gracefully


CRASHER = """
    import os
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    print("child", child.pid, flush=True)
    def step():
        time.sleep(0.5)
        os._exit(3)  # no cleanup: its child is adopted by porchd
"""


@pytest.mark.timeout(60)
def test_script_children_in_new_sessions_die_with_a_stopped_or_crashed_worker(
    tmp_path: Path, porchd: Start
):
    folder = tmp_path / "configs"
    daemon = porchd(
        write_pipeline(folder, "escaper", ESCAPER),
        write_pipeline(folder, "crasher", CRASHER, restart="never"),
    )
    escapees = daemon.wait_until(
        lambda: len(c := children_of(daemon, "escaper")) == 2 and c, 15, "the children's pids"
    )
    crashed = daemon.wait_until(lambda: children_of(daemon, "crasher"), 15, "the child's pid")

    done = daemon.ctl("stop", "escaper")
    assert done.returncode == 0, done.stderr
    daemon.wait_until(lambda: daemon.pipeline("escaper")["state"] == "stopped", 15, "stopped")
    for pid in escapees:
        wait_for(lambda pid=pid: gone(pid), 10, f"the stopped script's child {pid} to die")

    # os._exit: the worker cleans up nothing; porchd, the subreaper, adopts and kills the child
    daemon.wait_until(lambda: daemon.pipeline("crasher")["state"] == "failed", 15, "crashed")
    wait_for(lambda: gone(crashed[0]), 10, "the crashed worker's child to be killed")
    assert any("orphans_killed" in line for line in daemon.stderr), daemon.report()
    assert daemon.proc.poll() is None


@pytest.mark.timeout(60)
def test_run_folders_left_by_dead_supervisors_are_removed_at_the_next_start(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"porch-run-{dead.pid}-"))
    live = Path(tempfile.mkdtemp(prefix=f"porch-run-{os.getpid()}-"))  # its owner runs
    try:
        run = porch_cli("run", str(write_pipeline(tmp_path, "ender", ENDER)))
        assert run.wait_exit(30) == 0, run.report()
        assert not stale.exists()
        assert live.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


ENDER = """
    import porch
    def step():
        raise porch.Stop
"""


@pytest.mark.timeout(60)
def test_killing_porch_run_leaves_no_run_folder_and_no_script_child(tmp_path: Path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    config = write_pipeline(tmp_path, "escaper", ESCAPER)
    run = PorchRun(["run", str(config)], {**os.environ, "TMPDIR": str(tmp)})
    try:
        run.wait_until(lambda: len(run.lines_of("escaper")) == 2, 20, "the children's pids")
        children = [int(line.split()[1]) for line in run.lines_of("escaper")]
        assert len(run_dirs(tmp, run.proc.pid)) == 1, run_dirs(tmp, run.proc.pid)

        run.proc.kill()
        run.proc.wait()

        for pid in children:
            wait_for(lambda pid=pid: gone(pid), 20, f"the script's child {pid} to die")
        wait_for(lambda: not run_dirs(tmp, run.proc.pid), 20, "porch run's folder to be removed")
    finally:
        run.kill()
