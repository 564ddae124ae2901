"""Run every example with the real `porch` CLI and check what a user would see."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from porch.testing import run_graph

if TYPE_CHECKING:
    from tests.integration.conftest import PorchRun

    StartPorch = Callable[..., PorchRun]

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
PORCH = Path(sys.executable).parent / "porch"

EXIT_S = 30.0
LINE_S = 20.0


def example_configs(folder: str) -> list[str]:
    """The config files of one example folder, relative to the repository root (cwd of porch)."""
    return sorted(str(p.relative_to(REPO_ROOT)) for p in (EXAMPLES / folder).glob("*.json"))


def numbers(lines: list[str], pattern: str) -> list[int]:
    """The integer that `pattern`'s one group captures, for each line that matches it."""
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(pattern, line))]


def assert_no_traceback(run: PorchRun) -> None:
    assert not any("Traceback" in line for line in run.stderr), run.report()


@pytest.mark.timeout(60)
def test_diamond_sums_in_order_and_exits_by_itself(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("diamond"), "--iterations", "4")

    assert run.wait_exit(EXIT_S) == 0, run.report()
    assert run.lines_of("pipeline_a") == [f"pipeline_a: Sending number {n}" for n in range(1, 5)]
    assert run.lines_of("pipeline_b") == [
        f"pipeline_b: Doubled {n} to {2 * n}" for n in range(1, 5)
    ]
    assert run.lines_of("pipeline_c") == [
        f"pipeline_c: Squared {n} to {n * n}" for n in range(1, 5)
    ]
    assert run.lines_of("pipeline_d") == [
        f"pipeline_d: Received doubled={2 * n} and squared={n * n}, sum={2 * n + n * n}"
        for n in range(1, 5)
    ]
    assert numbers(run.lines_of("pipeline_d"), r".*sum=(\d+)") == [3, 8, 15, 24]
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_one_to_many_every_target_gets_every_message(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("one_to_many"), "--iterations", "3")

    assert run.wait_exit(EXIT_S) == 0, run.report()
    assert run.lines_of("pipeline_a") == [
        f"Sending {n} to pipeline_b and pipeline_c" for n in (1, 2, 3)
    ]
    expected = [f"I got a message from pipeline_a: {n}" for n in (1, 2, 3)]
    assert run.lines_of("pipeline_b") == expected
    assert run.lines_of("pipeline_c") == expected
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_many_to_one_pairs_inputs_in_order(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("many_to_one"), "--iterations", "3")

    assert run.wait_exit(EXIT_S) == 0, run.report()
    randoms = numbers(run.lines_of("pipeline_x"), r"pipeline_x generated: (\d+)")
    stamps = numbers(run.lines_of("pipeline_y"), r"pipeline_y generated timestamp: (\d+)")
    assert len(randoms) == len(stamps) == 3, run.report()
    assert all(1 <= n <= 100 for n in randoms)
    assert run.lines_of("pipeline_z") == [
        f"Received random number {n} and timestamp {t}"
        for n, t in zip(randoms, stamps, strict=True)
    ]
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_lifecycle_runs_top_level_once_then_chains_steps(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("lifecycle"), "--iterations", "3")

    assert run.wait_exit(EXIT_S) == 0, run.report()
    assert run.lines_of("counter") == [
        "Initial counter value 0",
        "Counter value this iteration: 1",
        "1 is an odd number",
        "Counter value this iteration: 2",
        "2 is an even number",
        "Counter value this iteration: 3",
        "3 is an odd number",
    ]
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_tutorial_runs_until_ctrl_c_then_drains(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("tutorial"))

    run.wait_for_line("pipeline_b", "Received: 2", LINE_S)
    run.interrupt()

    assert run.wait_exit(EXIT_S) == 0, run.report()
    sent = numbers(run.lines_of("pipeline_a"), r"Sending: (\d+)")
    received = numbers(run.lines_of("pipeline_b"), r"Received: (\d+)")
    assert sent == list(range(1, len(sent) + 1)), run.report()
    # A graceful stop drops nothing that was sent.
    assert received == sent, run.report()
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_end_hook_closes_resource_on_ctrl_c(porch_cli: StartPorch, out_dir: Path) -> None:
    run = porch_cli("run", *example_configs("end_hook"))

    run.wait_until(
        lambda: len(run.lines_of("end_hook")) >= 2, LINE_S, "two 'Running iteration' lines"
    )
    run.interrupt()

    assert run.wait_exit(EXIT_S) == 0, run.report()
    lines = run.lines_of("end_hook")
    assert lines[-1] == "Resource closed", run.report()
    iterations = numbers(lines, r"Running iteration (\d+)")
    assert iterations == list(range(1, len(iterations) + 1)), run.report()
    assert len(iterations) == len(lines) - 1, run.report()
    log = (out_dir / "end_hook.log").read_text(encoding="utf-8")
    assert log.splitlines() == [f"iteration {n}" for n in iterations]
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_delta_time_is_zero_first_then_the_step_interval(porch_cli: StartPorch) -> None:
    run = porch_cli("run", "examples/delta_time/delta_time_printer.json", "--iterations", "3")

    assert run.wait_exit(EXIT_S) == 0, run.report()
    deltas = [
        float(m.group(1))
        for line in run.lines_of("delta_time_printer")
        if (m := re.fullmatch(r"Time since last step\(\) call: (\d+\.\d{3}) seconds", line))
    ]
    assert len(deltas) == 3, run.report()
    assert deltas[0] == 0.0
    # Each step sleeps 0.2 s, so later deltas are at least about that, and not absurdly more.
    assert all(0.1 < d < 5.0 for d in deltas[1:]), run.report()
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_delta_time_counts_whole_seconds(porch_cli: StartPorch) -> None:
    run = porch_cli("run", "examples/delta_time/delta_time_sec.json")

    run.wait_for_line("delta_time_sec", "2 second(s) have passed", LINE_S)
    run.interrupt()

    assert run.wait_exit(EXIT_S) == 0, run.report()
    seconds = numbers(run.lines_of("delta_time_sec"), r"(\d+) second\(s\) have passed")
    assert seconds == list(range(1, len(seconds) + 1)), run.report()
    assert_no_traceback(run)


def expected_batch_result() -> list[list[str]]:
    """What examples/batch must write: each input row, its value times 10, high from 50 up."""
    with (EXAMPLES / "batch" / "data" / "readings.csv").open(newline="") as f:
        readings = list(csv.DictReader(f))
    rows = [["sensor", "value", "scaled", "label"]]
    for reading in readings:
        value = int(reading["value"])
        rows.append(
            [reading["sensor"], str(value), str(value * 10), "high" if value >= 50 else "low"]
        )
    return rows


@pytest.mark.timeout(60)
def test_batch_ends_by_itself_and_writes_every_row(porch_cli: StartPorch, out_dir: Path) -> None:
    run = porch_cli("run", *example_configs("batch"))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    result = out_dir / "result.csv"
    with result.open(newline="") as f:
        written = list(csv.reader(f))
    expected = expected_batch_result()
    assert written == expected
    assert run.lines_of("join") == [f"wrote {len(expected) - 1} rows to {result}"]
    assert_no_traceback(run)


@pytest.mark.timeout(60)
def test_replicas_example_prints_what_one_process_computes(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("replicas"))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    # the same graph in one process (porch.testing): one chain per sensor, never split
    alone = run_graph(sorted((EXAMPLES / "replicas").glob("*.json")))["report"].lines
    assert run.lines_of("report")[:-1] == alone[:-1]
    # 16 sensors over 2 replicas: all on one has a chance of 1 in 32,768
    assert run.lines_of("report")[-1] == "320 readings from 16 sensors, digested in 2 processes"
    assert_no_traceback(run)


GRAPHS = [p.name for p in sorted(EXAMPLES.iterdir()) if p.is_dir() and p.name != "delta_time"]
DELTA_TIME = ["delta_time_sec", "delta_time_printer"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "configs",
    [
        *(pytest.param(example_configs(name), id=name) for name in GRAPHS),
        *(pytest.param([f"examples/delta_time/{name}.json"], id=name) for name in DELTA_TIME),
    ],
)
def test_examples_validate_clean(configs: list[str]) -> None:
    done = subprocess.run(
        [str(PORCH), "validate", *configs],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stdout, done.stdout


@pytest.mark.timeout(60)
def test_feedback_loop_runs_1000_iterations_and_finishes(porch_cli: StartPorch) -> None:
    run = porch_cli("run", *example_configs("feedback_loop"))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    lines = run.lines_of("controller")
    progress = numbers(lines, r"iteration (\d+): .* C, heater at .*")
    assert progress == list(range(100, 1001, 100)), run.report()
    summary = re.fullmatch(
        r"done: 1000 iterations, room at (\d+\.\d\d) C \(setpoint 21\.0 C\)", lines[-1]
    )
    assert summary, run.report()
    assert abs(float(summary.group(1)) - 21.0) < 1.0  # the thermostat holds the setpoint
    assert run.lines_of("plant") == []
    assert_no_traceback(run)
    # it ends clean: no value left over for a finished pipeline, nothing dropped or warned
    assert not any("target_finished" in line or "dropped" in line for line in run.stderr), (
        run.report()
    )
    plant = r"porch: plant: finished, 1000 items in [\d.]+ s \([\d.]+/s\)"  # nothing after
    assert any(re.fullmatch(plant, line) for line in run.stderr), run.report()
