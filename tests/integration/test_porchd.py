"""porchd and porchctl with real processes and signals: status, restarts, backoff, heartbeats,
per-pipeline commands, reload, stop timeouts, orphans, errors (docs/supervisor-contract.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import POLL_INTERVAL_S, PORCHCTL, Porchd

pytestmark = [pytest.mark.integration]

Start = Callable[..., Porchd]

PIPELINE_FIELDS = {
    "name",
    "pid",
    "state",
    "uptime_s",
    "iterations",
    "msgs_in",
    "msgs_out",
    "queue_depth",
    "rate_per_s",
    "cpu_percent",
    "rss_bytes",
    "restarts",
    "last_error",
    "restart_policy",
    "config",
}
DAEMON_FIELDS = {"pid", "control", "state_dir", "uptime_s", "version"}

TICKER = """
    import time
    n = 0
    def step():
        global n
        n += 1
        time.sleep(0.05)
        return n
    def end():
        print("{name} end ran")
"""

PRINTER = """
    def step(input_data):
        print("got", input_data["{source}"])
    def end():
        print("{name} end ran")
"""

FLAPPER = """
    def step():
        raise RuntimeError("flap boom")
"""

# Ignores SIGTERM (replacing the handler the runtime installed before loading the script); its
# child inherits the ignored SIGTERM, so only the SIGKILL after the stop timeout ends both.
STUBBORN = """
    import signal
    import subprocess
    import time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "300"])
    print("child", child.pid)
    def step():
        time.sleep(0.05)
"""

SPAWNER = """
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "300"])
    print("child", child.pid)
    def step():
        time.sleep(0.05)
"""


def write_pipeline(
    folder: Path,
    name: str,
    script: str,
    sources: int = 0,
    targets: tuple[str, ...] = (),
    **extra: object,
) -> Path:
    """Write NAME.json and NAME.py into `folder`; return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(script))
    config = {
        "name": name,
        "scripts": [f"{name}.py"],
        "source_pipeline_count": sources,
        "target_pipeline_names": list(targets),
        **extra,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def ticker(folder: Path, name: str, **extra: object) -> Path:
    """A source pipeline counting 1, 2, 3... every 0.05 s; its end() prints `NAME end ran`."""
    return write_pipeline(folder, name, TICKER.format(name=name), **extra)


def chain(folder: Path) -> list[Path]:
    """ticker -> printer: the printer prints `got N` for every value the ticker sends."""
    return [
        ticker(folder, "ticker", target_pipeline_names=["printer"]),
        write_pipeline(
            folder, "printer", PRINTER.format(name="printer", source="ticker"), sources=1
        ),
    ]


GOT = re.compile(r"got (\d+)")


def got_values(daemon: Porchd) -> list[int]:
    """The values the printer has printed so far, in order. A printer killed mid-print can
    leave a partial line ("got "): only whole ones count."""
    return [int(m[1]) for line in daemon.output("printer") if (m := GOT.fullmatch(line))]


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaped counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `predicate` (no daemon involved) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)
    return value


def child_pid(daemon: Porchd, name: str) -> int | None:
    """The pid of the child process that pipeline `name`'s script printed, once it has."""
    lines = [line for line in daemon.output(name) if line.startswith("child ")]
    return int(lines[0].split()[1]) if lines else None


def replaced(daemon: Porchd, name: str, old_pid: int) -> dict[str, Any] | None:
    """The status of `name` once it runs again under a pid other than `old_pid`, else None."""
    entry = daemon.pipeline(name)
    if entry["state"] == "running" and entry["pid"] not in (None, old_pid):
        return entry
    return None


def pids(status: dict[str, Any]) -> dict[str, int | None]:
    """Pipeline name -> pid in a status result."""
    return {p["name"]: p["pid"] for p in status["pipelines"]}


# ---- status ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_status_json_has_every_field_with_plausible_values(tmp_path: Path, porchd: Start):
    configs = chain(tmp_path)
    daemon = porchd(*configs)
    status = daemon.wait_running("ticker", "printer")

    assert set(status["daemon"]) >= DAEMON_FIELDS
    assert status["daemon"]["pid"] == daemon.proc.pid
    assert status["daemon"]["control"] == str(daemon.control)
    assert status["daemon"]["state_dir"] == str(daemon.state_dir)
    assert [p["name"] for p in status["pipelines"]] == ["ticker", "printer"]
    for entry, config in zip(status["pipelines"], configs, strict=True):
        assert set(entry) >= PIPELINE_FIELDS, PIPELINE_FIELDS - set(entry)
        assert entry["state"] == "running"
        assert isinstance(entry["pid"], int) and not gone(entry["pid"])
        assert entry["pid"] != daemon.proc.pid
        assert isinstance(entry["rss_bytes"], int) and entry["rss_bytes"] > 0
        assert isinstance(entry["uptime_s"], float | int) and entry["uptime_s"] >= 0
        assert entry["cpu_percent"] is None or entry["cpu_percent"] >= 0
        assert entry["restarts"] == 0
        assert entry["last_error"] == ""
        assert entry["restart_policy"] == "on-failure"
        assert entry["config"] == str(config.resolve())
        for counter in ("iterations", "msgs_in", "msgs_out", "queue_depth"):
            assert isinstance(entry[counter], int) and entry[counter] >= 0, counter

    first = {p["name"]: p["iterations"] for p in status["pipelines"]}

    def counted_more() -> dict[str, Any] | None:
        now = daemon.status()
        grew = all(daemon.pipeline(n, now)["iterations"] > first[n] for n in first)
        return now if grew else None

    later = daemon.wait_until(counted_more, 10, "iterations to increase")
    source, sink = daemon.pipeline("ticker", later), daemon.pipeline("printer", later)
    assert source["msgs_out"] > 0 and source["msgs_in"] == 0
    assert sink["msgs_in"] > 0 and sink["msgs_out"] == 0
    assert pids(later) == pids(status)

    # The ticker sleeps 0.05 s per step: at most ~20 iterations per second.
    rate = daemon.wait_until(
        lambda: daemon.pipeline("ticker")["rate_per_s"], 10, "a rate from two heartbeats"
    )
    assert 0 < rate <= 40


# ---- restarts --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("victim", ["printer", "ticker"])
def test_killed_worker_is_restarted_and_its_links_recover(
    tmp_path: Path, porchd: Start, victim: str
):
    daemon = porchd(*chain(tmp_path))
    daemon.wait_running("ticker", "printer")
    daemon.wait_until(lambda: len(got_values(daemon)) >= 20, 15, "the printer to print 20 values")
    survivor = "ticker" if victim == "printer" else "printer"
    before = daemon.status()
    old = daemon.pipeline(victim, before)
    printed = got_values(daemon)

    os.kill(old["pid"], signal.SIGKILL)

    new = daemon.wait_until(lambda: replaced(daemon, victim, old["pid"]), 15, "a new worker")
    assert new["restarts"] == 1
    assert new["last_error"] != ""
    assert gone(old["pid"])
    other = daemon.pipeline(survivor)
    assert other["pid"] == daemon.pipeline(survivor, before)["pid"]
    assert other["restarts"] == 0

    top = max(printed)
    if victim == "printer":
        # The ticker kept counting; the new printer prints what it sends from now on.
        def fresh() -> bool:
            return len([v for v in got_values(daemon)[len(printed) :] if v > top]) >= 10
    else:
        # The new ticker counts from 1 again: small values after the kill come from it.
        def fresh() -> bool:
            return len([v for v in got_values(daemon)[len(printed) :] if v < top]) >= 10

    daemon.wait_until(fresh, 15, f"the printer to print new values after {victim} restarted")


@pytest.mark.timeout(90)
def test_flapping_worker_backs_off_then_fails_and_restart_revives_it(tmp_path: Path, porchd: Start):
    config = write_pipeline(tmp_path, "flapper", FLAPPER, restart="on-failure")
    daemon = porchd(config, stop_timeout_s=2)
    states: list[str] = []
    restarts: list[int] = []
    deadline = time.monotonic() + 60
    # 5 restarts after 0.5, 1, 2, 4, 8 s, then it gives up: about 16 s plus the start-ups.
    while True:
        assert time.monotonic() < deadline, f"never failed: {states}\n{daemon.report()}"
        assert daemon.proc.poll() is None, daemon.report()
        if not daemon.control.exists():
            time.sleep(POLL_INTERVAL_S)
            continue
        done = daemon.ctl("--timeout", "2", "status", "--json", timeout_s=10)
        assert done.returncode == 0, f"porchctl did not answer while flapping: {done.stderr}"
        entry = daemon.pipeline("flapper", json.loads(done.stdout))
        if not states or states[-1] != entry["state"]:
            states.append(entry["state"])
        restarts.append(entry["restarts"])
        if entry["state"] == "failed" and entry["restarts"] >= 5:
            break
        time.sleep(0.1)

    assert "backoff" in states, states
    assert restarts == sorted(restarts), "restarts never goes down"
    assert restarts[-1] == 5, restarts
    failed = daemon.pipeline("flapper")
    assert failed["state"] == "failed"
    assert failed["pid"] is None
    assert "RuntimeError" in failed["last_error"] and "flap boom" in failed["last_error"]

    done = daemon.ctl("restart", "flapper")
    assert done.returncode == 0, done.stderr
    assert "flapper" in done.stdout

    daemon.wait_until(
        lambda: daemon.pipeline("flapper")["restarts"] > 5,
        15,
        "the restarted pipeline to fail and be restarted again",
    )


@pytest.mark.timeout(60)
def test_stopped_worker_is_detected_by_heartbeat_and_replaced(tmp_path: Path, porchd: Start):
    config = ticker(tmp_path, "sleepy", heartbeat_timeout_s=2)
    daemon = porchd(config)
    old = daemon.pipeline("sleepy", daemon.wait_running("sleepy"))

    os.kill(old["pid"], signal.SIGSTOP)

    def replaced_after_silence() -> dict[str, Any] | None:
        entry = daemon.pipeline("sleepy")
        fresh = entry["pid"] not in (None, old["pid"]) and entry["restarts"] >= 1
        return entry if fresh and "heartbeat" in entry["last_error"] else None

    entry = daemon.wait_until(replaced_after_silence, 20, "the silent worker to be replaced")
    assert "no heartbeat" in entry["last_error"], entry
    wait_for(lambda: gone(old["pid"]), 10, f"the stopped worker {old['pid']} to be gone")
    daemon.wait_until(lambda: replaced(daemon, "sleepy", old["pid"]), 15, "sleepy running again")


# ---- commands on single pipelines ------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_start_restart_one_pipeline_leaves_the_other_running(tmp_path: Path, porchd: Start):
    daemon = porchd(*chain(tmp_path))
    first = pids(daemon.wait_running("ticker", "printer"))
    daemon.wait_until(lambda: len(got_values(daemon)) >= 5, 10, "the printer to print")

    done = daemon.ctl("stop", "ticker")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopping: ticker"
    daemon.wait_until(lambda: daemon.pipeline("ticker")["state"] == "stopped", 15, "stopped")
    assert gone(first["ticker"])
    daemon.wait_until(lambda: "ticker end ran" in daemon.output("ticker"), 5, "ticker's end()")

    # A commanded stop is never restarted, and a stopped source does not end its targets'
    # stream: watch for a while that neither changes.
    watch_until = time.monotonic() + 3
    while time.monotonic() < watch_until:
        status = daemon.status()
        source, sink = daemon.pipeline("ticker", status), daemon.pipeline("printer", status)
        assert (source["state"], source["pid"], source["restarts"]) == ("stopped", None, 0)
        assert (sink["state"], sink["pid"]) == ("running", first["printer"]), sink
        time.sleep(0.2)

    printed = len(got_values(daemon))
    done = daemon.ctl("start", "ticker")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "starting: ticker"
    started = daemon.wait_until(lambda: replaced(daemon, "ticker", first["ticker"]), 15, "start")
    daemon.wait_until(
        lambda: len(got_values(daemon)) >= printed + 10, 10, "values from the started ticker"
    )

    def end_hooks_run() -> int:
        logs = daemon.ctl("logs", "ticker", "-n", "1000")
        assert logs.returncode == 0, logs.stderr
        return logs.stdout.count("ticker end ran")

    ends = end_hooks_run()
    done = daemon.ctl("restart", "ticker")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "restarting: ticker"
    daemon.wait_until(lambda: replaced(daemon, "ticker", started["pid"]), 15, "restart")
    assert gone(started["pid"])
    daemon.wait_until(lambda: end_hooks_run() == ends + 1, 5, "ticker's end() on restart")
    printed = len(got_values(daemon))
    daemon.wait_until(
        lambda: len(got_values(daemon)) >= printed + 10, 10, "values from the restarted ticker"
    )
    assert daemon.pipeline("printer")["pid"] == first["printer"]

    # The other way round: the source keeps running while its target is stopped.
    done = daemon.ctl("stop", "printer")
    assert done.returncode == 0, done.stderr
    daemon.wait_until(lambda: daemon.pipeline("printer")["state"] == "stopped", 15, "stopped")
    iterations = daemon.pipeline("ticker")["iterations"]
    daemon.wait_until(
        lambda: daemon.pipeline("ticker")["iterations"] > iterations + 20,
        10,
        "the ticker to keep counting",
    )
    source = daemon.pipeline("ticker")
    assert (source["state"], source["restarts"]) == ("running", 0), source


@pytest.mark.timeout(60)
def test_reload_adds_removes_and_restarts_what_changed(tmp_path: Path, porchd: Start):
    folder = tmp_path / "configs"
    for name in ("keep", "change", "gone"):
        ticker(folder, name)
    daemon = porchd(folder)
    before = pids(daemon.wait_running("keep", "change", "gone"))

    ticker(folder, "fresh")
    (folder / "change.py").write_text(textwrap.dedent(TICKER.format(name="change")) + "# v2\n")
    (folder / "gone.json").unlink()

    done = daemon.ctl("reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "added: fresh",
        "removed: gone",
        "changed: change",
        "unchanged: keep",
    ]

    def reloaded() -> dict[str, Any] | None:
        status = daemon.status()
        states = {p["name"]: p["state"] for p in status["pipelines"]}
        wanted = {"keep": "running", "change": "running", "fresh": "running"}
        return status if states == wanted and pids(status)["change"] != before["change"] else None

    after = pids(daemon.wait_until(reloaded, 15, "the reload to take effect"))
    assert after["keep"] == before["keep"]
    assert after["change"] is not None
    assert gone(before["gone"]) and gone(before["change"])

    (folder / "broken.json").write_text('{"name": "broken", ')
    done = daemon.ctl("reload")
    assert done.returncode != 0
    problem = done.stderr.strip()
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "broken.json" in problem, problem
    assert pids(daemon.status()) == after


# ---- stopping --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_ignoring_sigterm_is_killed_with_its_child_after_stop_timeout(
    tmp_path: Path, porchd: Start
):
    daemon = porchd(write_pipeline(tmp_path, "stubborn", STUBBORN), stop_timeout_s=1.5)
    worker = daemon.pipeline("stubborn", daemon.wait_running("stubborn"))["pid"]

    child = daemon.wait_until(lambda: child_pid(daemon, "stubborn"), 10, "the child's pid")
    assert psutil.Process(child).ppid() == worker
    assert not gone(child)

    asked = time.monotonic()
    done = daemon.ctl("stop", "stubborn")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: gone(worker), 10, "the worker that ignores SIGTERM to be killed")
    took = time.monotonic() - asked
    wait_for(lambda: gone(child), 5, "the worker's child to die with it")

    assert took >= 1.0, f"killed after {took:.2f}s, before the 1.5 s stop timeout"
    entry = daemon.wait_until(
        lambda: (e := daemon.pipeline("stubborn"))["state"] == "stopped" and e, 10, "stopped"
    )
    assert "killed" in entry["last_error"], entry


@pytest.mark.timeout(60)
def test_killing_porchd_leaves_no_worker_behind(tmp_path: Path, porchd: Start):
    daemon = porchd(*chain(tmp_path))
    workers = list(pids(daemon.wait_running("ticker", "printer")).values())
    assert all(isinstance(pid, int) for pid in workers)

    daemon.proc.kill()
    daemon.wait_exit(10)

    for pid in workers:
        wait_for(lambda pid=pid: gone(pid), 15, f"worker {pid} to die with porchd")


@pytest.mark.timeout(60)
def test_killing_porchd_leaves_no_script_child_behind(tmp_path: Path, porchd: Start):
    daemon = porchd(write_pipeline(tmp_path, "spawner", SPAWNER))
    worker = daemon.pipeline("spawner", daemon.wait_running("spawner"))["pid"]
    child = daemon.wait_until(lambda: child_pid(daemon, "spawner"), 10, "the child's pid")
    assert psutil.Process(child).ppid() == worker

    daemon.proc.kill()
    daemon.wait_exit(10)

    wait_for(lambda: gone(worker), 15, f"worker {worker} to die with porchd")
    wait_for(lambda: gone(child), 5, f"the script's child {child} to die with its worker")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["SIGTERM", "porchctl stop"])
def test_sigterm_or_porchctl_stop_stops_porchd_gracefully(tmp_path: Path, porchd: Start, how: str):
    # a stop timeout well above a loaded machine's stop time: this test is about end() running,
    # test_worker_ignoring_sigterm_is_killed_with_its_child_after_stop_timeout about the kill
    daemon = porchd(*chain(tmp_path), stop_timeout_s=20)
    workers = list(pids(daemon.wait_running("ticker", "printer")).values())

    if how == "SIGTERM":
        daemon.proc.send_signal(signal.SIGTERM)
    else:
        done = daemon.ctl("stop", timeout_s=40)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "porchd stopped"

    assert daemon.wait_exit(30) == 0, daemon.report()
    assert not daemon.control.exists()
    assert "ticker end ran" in daemon.output("ticker")
    assert "printer end ran" in daemon.output("printer")
    for pid in workers:
        assert isinstance(pid, int) and gone(pid)


# ---- errors ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_porchctl_without_a_daemon_says_how_to_start_one(tmp_path: Path):
    socket = tmp_path / "nothing.sock"
    env = {k: v for k, v in os.environ.items() if k != "PORCH_CONTROL"}
    env["PORCH_RUNTIME_DIR"] = str(tmp_path / "runtime")
    done = subprocess.run(
        [str(PORCHCTL), "--control", str(socket), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(socket) in lines[0]
    assert "porchd start" in lines[0]
    assert done.stdout == ""


@pytest.mark.timeout(30)
def test_porchd_refuses_invalid_configs(tmp_path: Path, porchd: Start):
    folder = tmp_path / "configs"
    folder.mkdir()
    broken = folder / "broken.json"
    broken.write_text('{"name": "broken", "scripts": [')
    bad = folder / "bad.json"
    bad.write_text(json.dumps({"name": "ab", "scripts": ["missing.py"]}))
    daemon = porchd(folder)

    assert daemon.wait_exit(15) == 2, daemon.report()
    problems = [line for line in daemon.stderr if not line.startswith("porchd:")]
    assert len(problems) == 3, daemon.report()  # bad JSON; name too short; script missing
    for line in problems:
        assert line.startswith((f"{broken}: ", f"{bad}: ")), line
    assert any(line.startswith(f"{broken}: ") for line in problems)
    assert sum(line.startswith(f"{bad}: ") for line in problems) == 2
    assert not daemon.control.exists()


# ---- several daemons, graph ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_two_daemons_on_one_host_keep_to_their_own_pipelines(tmp_path: Path, porchd: Start):
    first = porchd(ticker(tmp_path / "a", "alpha"), home=tmp_path / "a")
    second = porchd(ticker(tmp_path / "b", "bravo"), home=tmp_path / "b")
    one = first.wait_running("alpha")
    two = second.wait_running("bravo")

    assert [p["name"] for p in one["pipelines"]] == ["alpha"]
    assert [p["name"] for p in two["pipelines"]] == ["bravo"]
    assert one["daemon"]["pid"] == first.proc.pid
    assert two["daemon"]["pid"] == second.proc.pid
    assert one["daemon"]["state_dir"] != two["daemon"]["state_dir"]

    done = second.ctl("stop", "alpha")
    assert done.returncode != 0
    assert "alpha" in done.stderr and "bravo" in done.stderr, done.stderr  # known: bravo
    assert first.pipeline("alpha")["pid"] == one["pipelines"][0]["pid"]


@pytest.mark.timeout(60)
def test_graph_prints_mermaid_and_json(tmp_path: Path, porchd: Start):
    daemon = porchd(*chain(tmp_path))
    daemon.wait_running("ticker", "printer")

    done = daemon.ctl("graph")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart")
    ids = {
        name: node_id
        for node_id, name in re.findall(r'^\s*(\w+)\["(\w+)<br/>', done.stdout, re.MULTILINE)
    }
    assert set(ids) == {"ticker", "printer"}, done.stdout
    assert f"{ids['ticker']} --> {ids['printer']}" in done.stdout, done.stdout

    done = daemon.ctl("graph", "--format", "json")
    assert done.returncode == 0, done.stderr
    graph = json.loads(done.stdout)
    nodes = {node["name"]: node for node in graph["nodes"]}
    assert set(nodes) == {"ticker", "printer"}
    assert nodes["ticker"]["targets"] == ["printer"]
    assert nodes["printer"]["targets"] == []
    assert all(node["state"] == "running" for node in nodes.values())


SLOW_END = """
    import time
    def step():
        time.sleep(0.05)
    def end():
        time.sleep(3)  # still stopping when porchctl stop arrives
        print("slow end ran")
"""


@pytest.mark.timeout(60)
def test_porchctl_stop_during_a_restart_stops_porchd(tmp_path: Path, porchd: Start):
    daemon = porchd(write_pipeline(tmp_path, "slow", SLOW_END), stop_timeout_s=10)
    worker = daemon.pipeline("slow", daemon.wait_running("slow"))["pid"]

    done = daemon.ctl("restart", "slow")
    assert done.returncode == 0, done.stderr
    done = daemon.ctl("stop", timeout_s=40)

    assert done.returncode == 0, done.stderr + daemon.report()
    assert daemon.wait_exit(10) == 0, daemon.report()
    assert gone(worker)
    # one graceful stop: the second stop does not cut the first one's end() short
    assert daemon.output("slow").count("slow end ran") == 1, daemon.report()


HELD_END = """
    import os, time
    def step():
        time.sleep(0.05)
    def end():  # porchd stays stopping until the test has tried its commands
        deadline = time.monotonic() + 30
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("held end ran")
"""


@pytest.mark.timeout(90)
def test_start_restart_and_reload_while_porchd_stops_are_refused(tmp_path: Path, porchd: Start):
    release = tmp_path / "release"
    script = f"RELEASE = {str(release)!r}\n" + textwrap.dedent(HELD_END)
    daemon = porchd(write_pipeline(tmp_path, "slow", script), stop_timeout_s=40)
    daemon.wait_running("slow")
    stopper = subprocess.Popen(
        [str(PORCHCTL), "--control", str(daemon.control), "stop"],
        env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        daemon.wait_until(lambda: daemon.pipeline("slow")["state"] == "stopping", 10, "stopping")
        for command in (("restart", "slow"), ("start", "slow"), ("reload",)):
            done = daemon.ctl(*command)
            assert done.returncode != 0 and "stopping" in done.stderr, (command, done.stderr)
        release.touch()
        out, err = stopper.communicate(timeout=40)
        assert stopper.returncode == 0, out + err + daemon.report()
    finally:
        stopper.kill()
    assert daemon.wait_exit(10) == 0, daemon.report()
