"""Workers forked from the fork server (issue 18, porch/forkserver.py), with real processes and
signals: titled by pipeline, each in its own session and process group, the template has no
thread; a worker killed with SIGKILL is restarted; the template killed with SIGKILL takes its
workers along (their parent-death signal) and a new template starts them again; workers print
through the supervisor as before."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Porchd
from tests.integration.test_porchd import chain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_S = 30.0


def _family(daemon: Porchd) -> tuple[list[psutil.Process], dict[str, psutil.Process]]:
    """porchd's fork servers and its workers by pipeline name (from their titles)."""
    servers, workers = [], {}
    for proc in psutil.Process(daemon.proc.pid).children(recursive=True):
        try:
            title = proc.cmdline()[:1]
        except psutil.Error:
            continue
        if title == ["porch fork server"]:
            servers.append(proc)
        elif title and title[0].startswith("porch worker "):
            workers[title[0].removeprefix("porch worker ")] = proc
    return servers, workers


def test_workers_are_forks_of_the_template_and_survive_its_death(
    porchd: Callable[..., Porchd], tmp_path: Path
) -> None:
    daemon = porchd(*chain(tmp_path / "c"))
    status = daemon.wait_running("ticker", "printer")
    daemon.wait_until(lambda: "got 3" in daemon.output("printer"), WAIT_S, "the printer's output")
    servers, workers = _family(daemon)
    assert len(servers) == 1, daemon.report()
    server = servers[0]
    assert server.ppid() == daemon.proc.pid
    assert server.num_threads() == 1  # no ZeroMQ (or any other) thread in the template
    assert set(workers) == {"ticker", "printer"}
    pids = {p["name"]: p["pid"] for p in status["pipelines"]}
    for name, proc in workers.items():
        assert proc.pid == pids[name]  # the supervisor knows the forked pid
        assert proc.ppid() == server.pid
        assert os.getpgid(proc.pid) == proc.pid and os.getsid(proc.pid) == proc.pid
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        assert comm == f"porch worker {name}"[:15]  # what top shows

    # A worker killed with SIGKILL: its exit reaches the supervisor, which restarts it.
    os.kill(workers["ticker"].pid, signal.SIGKILL)
    daemon.wait_until(
        lambda: (p := daemon.pipeline("ticker"))["restarts"] >= 1 and p["state"] == "running",
        WAIT_S,
        "the killed ticker restarted",
    )
    assert "killed by SIGKILL" in (daemon.pipeline("ticker")["last_error"] or "")

    # The template killed with SIGKILL: its workers die with it (parent-death signal), a new
    # template starts them again, and data flows again.
    _, before = _family(daemon)
    os.kill(server.pid, signal.SIGKILL)

    def dead(proc: psutil.Process) -> bool:  # a zombie of porchd (their subreaper) is dead too
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    daemon.wait_until(lambda: all(dead(p) for p in before.values()), WAIT_S, "workers gone")

    def restarted() -> bool:
        servers, workers = _family(daemon)
        return len(servers) == 1 and servers[0].pid != server.pid and len(workers) == 2

    daemon.wait_until(restarted, WAIT_S, "a new template and both workers")
    daemon.wait_running("ticker", "printer")
    seen = len(daemon.output("printer"))
    daemon.wait_until(lambda: len(daemon.output("printer")) > seen + 3, WAIT_S, "output again")
    assert "fork_server_restarted" in daemon.report()
