"""First-hour polish of porchd (issue 16), with real processes: a second porchd on one socket
starts nothing, stopped pipelines move nothing, and an old error reads as past."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Porchd, PorchRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Start = Callable[..., Porchd]

STEADY = """
    import time
    def step():
        time.sleep(0.02)
        return 1
"""

# Fails its first run (before step()), then runs: porchd restarts it after a 0.5 s backoff.
FLAKY = """
    import pathlib
    import time
    marker = pathlib.Path(__file__).with_suffix(".ran")
    if not marker.exists():
        marker.touch()
        raise RuntimeError("flaky boom")
    def step():
        time.sleep(0.02)
"""


def write(folder: Path, name: str, script: str) -> Path:
    (folder / f"{name}.py").write_text(textwrap.dedent(script), encoding="utf-8")
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, "scripts": [f"{name}.py"]}), encoding="utf-8")
    return path


def test_second_porchd_stopped_rates_and_past_errors(tmp_path: Path, porchd: Start) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    write(configs, "steady", STEADY)
    write(configs, "flaky", FLAKY)
    daemon = porchd(configs, home=tmp_path / "first")
    daemon.wait_running("steady")

    def both_moving() -> dict[str, Any] | None:
        status = daemon.status()
        by_name = {p["name"]: p for p in status["pipelines"]}
        if by_name["steady"]["rate_per_s"] > 0 and by_name["flaky"]["state"] == "running":
            return status
        return None

    status = daemon.wait_until(both_moving, 30, "steady moving and flaky running again")

    # A second porchd on the same socket refuses before it starts discovery, HTTP or workers.
    second = porchd(configs, home=tmp_path / "second", extra=("--control", str(daemon.control)))
    assert second.wait_exit(30) == 1, second.report()
    assert any("another porchd is already running" in line for line in second.stderr)
    started = ("discovery_started", "worker_spawned", "porchd_started", "dashboard at")
    assert not [line for line in second.stderr if any(word in line for word in started)], (
        second.report()
    )

    # The recovered pipeline's error is past: said with its age, not as its state.
    flaky = daemon.pipeline("flaky", status)
    assert "flaky boom" in flaky["last_error"]
    assert flaky["error_current"] is False and flaky["last_error_age_s"] >= 0
    table = daemon.ctl("status").stdout
    row = next(line for line in table.splitlines() if line.startswith("flaky "))
    assert " ago: " in row and "flaky boom" in row, table

    # A stopped pipeline has no process, so it moves nothing.
    assert daemon.ctl("stop", "steady").returncode == 0
    stopped = daemon.wait_until(
        lambda: daemon.pipeline("steady")["state"] == "stopped" and daemon.status(),
        30,
        "steady stopped",
    )
    steady = daemon.pipeline("steady", stopped)
    assert steady["pid"] is None and steady["iterations"] > 0
    assert (steady["rate_per_s"], steady["msgs_in_per_s"], steady["msgs_out_per_s"]) == (0, 0, 0)
    row = next(line for line in daemon.ctl("status").stdout.splitlines() if "steady" in line)
    assert "0.0" in row.split() and row.split()[8] == "0.0", row


# ---- porch run: one truthful message per failure ---------------------------------------------

SLEEPER = """
    import time
    def step():
        print("sleeping", flush=True)
        time.sleep(60)
    def end():
        print("end ran")
"""

SELF_KILLER = """
    import os
    import signal
    def step():
        os.kill(os.getpid(), signal.SIGKILL)
"""


def run_config(folder: Path, name: str, script: str) -> str:
    return str(write(folder, name, script))


def test_a_worker_killed_by_a_signal_is_named_by_it(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
) -> None:
    run = porch_cli("run", run_config(tmp_path, "killer", SELF_KILLER))
    assert run.wait_exit(30) == 1, run.report()
    assert "porch: pipeline killer failed: killed by SIGKILL" in run.stderr, run.report()
    assert not any("code -9" in line for line in run.stderr), run.report()


def test_ctrl_c_with_a_step_that_does_not_stop_says_killed_everywhere(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
) -> None:
    run = porch_cli("run", run_config(tmp_path, "hanger", SLEEPER), "--stop-timeout", "1")
    run.wait_for_line("hanger", "sleeping", 20)
    run.interrupt()
    assert run.wait_exit(30) == 1, run.report()
    said = [line for line in run.stderr if "did not stop" in line]
    assert said == [
        "porch: pipeline hanger failed: killed: did not stop within 1 s of SIGTERM "
        "(--stop-timeout); its end() hooks did not run or finish"
    ], run.report()
    summary = [line for line in run.stderr if line.startswith("porch: hanger: ")]
    assert summary and summary[0].startswith("porch: hanger: failed, "), run.report()
    assert "end ran" not in run.lines_of("hanger")


# ---- names: what DPorch accepts is carried everywhere a name goes ----------------------------

ODD = '<b>&"x"'  # valid (no whitespace, control character or '/'), awkward: every output escapes it
SOURCE = """
    import time
    def step():
        time.sleep(0.05)
        return 1
"""
SINK = """
    def step(input_data):
        print("got", sum(input_data.values()))
"""


def test_odd_names_reach_logs_metrics_api_and_graphs_escaped(tmp_path: Path, porchd: Start) -> None:
    from tests.integration.test_dashboard import api_base, fetch, samples

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "src.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    (configs / "sink.py").write_text(textwrap.dedent(SINK), encoding="utf-8")
    for filename, config in (
        ("a.json", {"name": "1st_stage", "scripts": ["src.py"], "target_pipeline_names": [ODD]}),
        ("b.json", {"name": ODD, "scripts": ["sink.py"], "source_pipeline_count": 1}),
    ):
        (configs / filename).write_text(json.dumps(config), encoding="utf-8")
    daemon = porchd(configs, extra=("--http", "127.0.0.1:0"))
    base, auth = api_base(daemon)
    daemon.wait_running("1st_stage", ODD)
    assert any("name: warning: " in line and "'<'" in line for line in daemon.stderr)

    daemon.wait_until(lambda: "got 1" in daemon.output(ODD), 20, "the sink's log")
    assert daemon.log_path(ODD).name == f"{ODD}.log"
    logs = daemon.ctl("logs", ODD, "-n", "5")
    assert logs.returncode == 0 and "got 1" in logs.stdout, logs.stderr

    status, body = fetch(base + "/metrics", auth)
    assert status == 200
    values = samples(body)  # prometheus-client's parser reads the escaped label back
    assert ("porch_iterations_total", (("pipeline", ODD),)) in values
    assert '{pipeline="<b>&\\"x\\""}' in body
    status, body = fetch(base + "/api/status", auth)
    assert ODD in [p["name"] for p in json.loads(body)["pipelines"]]

    mermaid = daemon.ctl("graph").stdout
    label = next(line for line in mermaid.splitlines() if "#lt;b#gt;" in line)
    assert label.strip().endswith('["#lt;b#gt;&#quot;x#quot;<br/>running"]'), mermaid
    dot = daemon.ctl("graph", "--format", "dot").stdout
    assert '"<b>&\\"x\\"" [label="<b>&\\"x\\"\\nrunning"' in dot, dot
    assert '"1st_stage" -> "<b>&\\"x\\"";' in dot, dot
