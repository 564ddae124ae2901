"""Every way a pipeline ends reaches its targets (issue 11 items 6, 7, 12): sys.exit and
os._exit in scripts, a misspelled target, a restarted target whose sources have finished."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Porchd, PorchRun
from tests.integration.test_porchd import write_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RunStart = Callable[..., PorchRun]
DaemonStart = Callable[..., Porchd]

SINK = """
    def step(input_data):
        print("got", input_data["{source}"])
    def end():
        print("{name} end ran")
"""


def sink(folder: Path, name: str = "sink", source: str = "src") -> str:
    """A pipeline printing `got V` for every value from `source`, and `NAME end ran`."""
    return str(write_pipeline(folder, name, SINK.format(name=name, source=source), sources=1))


# ---- porch run: a script's exit ends its stream or fails the run -------------------------


def test_sys_exit_zero_in_a_sources_first_step_ends_its_stream(tmp_path: Path, porch_cli: RunStart):
    src = write_pipeline(
        tmp_path,
        "src",
        """
        import sys
        def step():
            sys.exit(0)
        def end():
            print("src end ran")
        """,
        targets=("sink",),
    )
    run = porch_cli("run", str(src), sink(tmp_path))

    assert run.wait_exit(30) == 0, run.report()
    assert run.lines_of("src") == ["src end ran"], run.report()
    assert run.lines_of("sink") == ["sink end ran"], run.report()
    err = "\n".join(run.stderr)
    assert "porch: src: finished" in err and "porch: sink: finished" in err, run.report()


def test_nonzero_sys_exit_in_step_fails_naming_the_line_and_end_hooks_run(
    tmp_path: Path, porch_cli: RunStart
):
    src = write_pipeline(
        tmp_path,
        "src",
        """
        import time
        n = 0
        def step():
            global n
            n += 1
            time.sleep(0.02)
            return n
        def end():
            print("src end ran")
        """,
        targets=("sink",),
    )
    quitter = write_pipeline(
        tmp_path,
        "sink",
        """
        import sys
        def step(input_data):
            print("got", input_data["src"])
            if input_data["src"] == 2:
                sys.exit(3)
        def end():
            print("sink end ran")
        """,
        sources=1,
    )
    run = porch_cli("run", str(src), str(quitter))

    assert run.wait_exit(30) == 1, run.report()
    assert run.lines_of("sink") == ["got 1", "got 2", "sink end ran"], run.report()
    assert run.lines_of("src")[-1] == "src end ran", run.report()
    err = "\n".join(run.stderr)
    assert f"step() called sys.exit(3) ({tmp_path / 'sink.py'}:6)" in err, run.report()
    assert "porch: pipeline sink failed" in err, run.report()


def test_os_exit_before_connecting_ends_the_stream_for_its_targets(
    tmp_path: Path, porch_cli: RunStart
):
    # os._exit bypasses Python: no EOS, no end(), and the source never reached its target.
    src = write_pipeline(
        tmp_path,
        "src",
        """
        import os
        os._exit(0)
        def step():
            return 1
        """,
        targets=("sink",),
    )
    run = porch_cli("run", str(src), sink(tmp_path))

    assert run.wait_exit(30) == 0, run.report()
    assert run.lines_of("sink") == ["sink end ran"], run.report()
    err = "\n".join(run.stderr)
    assert "porch: src: finished" in err, run.report()
    assert "without ending its stream" in err, "the lost output is not silent\n" + run.report()


def test_a_crash_before_connecting_fails_the_run(tmp_path: Path, porch_cli: RunStart):
    src = write_pipeline(tmp_path, "src", "import os\nos._exit(3)\ndef step():\n    return 1\n",
                         targets=("sink",))  # fmt: skip
    run = porch_cli("run", str(src), sink(tmp_path))

    assert run.wait_exit(30) == 1, run.report()
    err = "\n".join(run.stderr)
    assert "porch: pipeline src failed: exited with code 3" in err, run.report()
    assert "porch: sink: stopped" in err, run.report()  # stopped while waiting: no hang


# ---- a misspelled target is named, with what is held and the closest name -------------------


def test_misspelled_target_is_named_with_held_count_and_closest_name(
    tmp_path: Path, porch_cli: RunStart
):
    src = write_pipeline(
        tmp_path,
        "src",
        """
        n = 0
        def step():
            global n
            n += 1
            return n
        """,
        targets=("snik",),
        queue_limit=20,
    )
    run = porch_cli("run", str(src), sink(tmp_path))

    def warning() -> dict[str, object] | None:
        for line in list(run.stderr):
            if line.startswith("src | ") and '"target_missing"' in line:
                found: dict[str, object] = json.loads(line[len("src | ") :])
                return found
        return None

    # the warning comes 3 s after the worker's start (the deadline allows for a loaded machine)
    run.wait_until(lambda: warning() is not None, 15, "the missing target warning")
    found = warning()
    assert found is not None
    assert (found["target"], found["held"], found["closest"]) == ("snik", 20, "sink"), found
    run.interrupt()
    run.wait_exit(20)
    err = "\n".join(run.stderr)
    assert "warning: target 'snik' not found; 20 held" in err, run.report()
    assert "did you mean 'sink'?" in err, run.report()


# ---- porchd: targets of pipelines that ended for good ----------------------------------


TICKER = """
    import time
    def step():
        time.sleep(0.05)
        return 1
"""

FINITE = """
    import porch
    n = 0
    def step():
        global n
        n += 1
        if n > 3:
            raise porch.Stop
        return n
"""


@pytest.mark.timeout(90)
def test_restarted_target_whose_sources_finished_finishes_too(tmp_path: Path, porchd: DaemonStart):
    src = write_pipeline(tmp_path, "src", FINITE, targets=("sink",))
    daemon = porchd(src, sink(tmp_path))
    daemon.wait_running()

    def states() -> dict[str, str]:
        return {p["name"]: p["state"] for p in daemon.status()["pipelines"]}

    daemon.wait_until(lambda: "sink end ran" in daemon.output("sink"), 20, "the sink to end")
    assert daemon.output("sink") == ["got 1", "got 2", "got 3", "sink end ran"]
    daemon.wait_until(lambda: set(states().values()) == {"finished"}, 20, "both to finish")

    done = daemon.ctl("restart", "sink")
    assert done.returncode == 0, done.stderr

    # it learns from the directory that its one source has finished for good
    daemon.wait_until(
        lambda: daemon.output("sink").count("sink end ran") == 2, 20, "the new sink to end"
    )
    daemon.wait_until(lambda: states()["sink"] == "finished", 10, "the new sink to finish")


@pytest.mark.timeout(90)
def test_status_names_a_missing_target_and_a_source_that_failed_for_good(
    tmp_path: Path, porchd: DaemonStart
):
    typo = write_pipeline(tmp_path, "typo", TICKER, targets=("sinc",))
    boom = write_pipeline(
        tmp_path, "boom", "def step():\n    raise RuntimeError('boom')\n", targets=("sink",),
        restart="never",
    )  # fmt: skip
    daemon = porchd(typo, boom, sink(tmp_path, source="boom"))
    daemon.wait_running()

    def warnings() -> dict[str, str]:
        return {p["name"]: p.get("warning", "") for p in daemon.status()["pipelines"]}

    daemon.wait_until(
        lambda: "did you mean 'sink'?" in warnings()["typo"], 30, "typo's missing target"
    )
    assert "target 'sinc' not found" in warnings()["typo"]
    daemon.wait_until(lambda: "source 'boom' failed" in warnings()["sink"], 30, "sink's warning")
    table = daemon.ctl("status")
    assert "warning: target 'sinc' not found" in table.stdout, table.stdout
    assert "warning: source 'boom' failed" in table.stdout, table.stdout


@pytest.mark.timeout(90)
def test_restarted_target_learns_that_a_source_on_another_daemon_finished(
    tmp_path: Path, porchd: DaemonStart
):
    """The same across two porchd (loopback discovery): beacons carry targets and the end."""
    here = porchd(sink(tmp_path / "d2"), home=tmp_path / "d2")
    there = porchd(write_pipeline(tmp_path / "d1", "src", FINITE, targets=("sink",)),
                   home=tmp_path / "d1")  # fmt: skip
    here.wait_until(lambda: "sink end ran" in here.output("sink"), 30, "the sink to end")
    assert here.output("sink") == ["got 1", "got 2", "got 3", "sink end ran"], there.report()
    there.wait_until(lambda: there.pipeline("src")["state"] == "finished", 10, "src finished")

    done = here.ctl("restart", "sink")
    assert done.returncode == 0, done.stderr

    here.wait_until(lambda: here.output("sink").count("sink end ran") == 2, 20, "the new sink")
    here.wait_until(lambda: here.pipeline("sink")["state"] == "finished", 10, "it to finish")
