"""porch.testing: the README's examples in-process (the outputs `porch run` prints, without a
process or a socket), and what run_pipeline / run_graph honour: SKIP, Stop, porch.stop(),
fan-in dicts, delta_time, on_error, async steps, unsendable output and aligned joins."""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from porch.testing import PipelineFailed, run_graph, run_pipeline

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples pace themselves with time.sleep; in a test that is only waiting."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def example(folder: str) -> list[Path]:
    return sorted((EXAMPLES / folder).glob("*.json"))


def test_tutorial_in_process() -> None:
    result = run_graph(example("tutorial"), iterations=3)

    assert result["pipeline_a"].lines == ["Sending: 1", "Sending: 2", "Sending: 3"]
    assert result["pipeline_b"].lines == ["Received: 1", "Received: 2", "Received: 3"]
    assert result["pipeline_a"].outputs == [1, 2, 3]


def test_diamond_in_process_prints_the_readme_sums() -> None:
    result = run_graph(example("diamond"), iterations=4)

    assert result["pipeline_a"].lines == [f"pipeline_a: Sending number {n}" for n in range(1, 5)]
    assert result["pipeline_b"].lines == [
        f"pipeline_b: Doubled {n} to {2 * n}" for n in range(1, 5)
    ]
    assert result["pipeline_c"].lines == [
        f"pipeline_c: Squared {n} to {n * n}" for n in range(1, 5)
    ]
    assert result["pipeline_d"].lines == [
        f"pipeline_d: Received doubled={2 * n} and squared={n * n}, sum={2 * n + n * n}"
        for n in range(1, 5)
    ]
    assert result["pipeline_d"].outputs == [3, 8, 15, 24]


def test_lifecycle_in_process() -> None:
    result = run_pipeline(EXAMPLES / "lifecycle" / "counter.json", iterations=3)

    assert result.lines == [
        "Initial counter value 0",
        "Counter value this iteration: 1",
        "1 is an odd number",
        "Counter value this iteration: 2",
        "2 is an even number",
        "Counter value this iteration: 3",
        "3 is an odd number",
    ]
    assert result.outputs == [1, 2, 3]
    assert result.modules["counter"].counter == 3


def test_one_stage_with_fan_in_dicts() -> None:
    result = run_pipeline(
        EXAMPLES / "diamond" / "pipeline_d.json",
        inputs=[{"pipeline_b": 2, "pipeline_c": 1}, {"pipeline_b": 4, "pipeline_c": 4}],
    )

    assert result.outputs == [3, 8]
    assert result.iterations == 2


def test_batch_example_ends_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_EXAMPLE_OUT", str(tmp_path))
    result = run_graph(example("batch"))

    assert result["read_csv"].stopped
    assert (tmp_path / "result.csv").exists()
    assert result["join"].lines[-1].startswith("wrote ")


def test_feedback_loop_runs_its_thousand_iterations() -> None:
    result = run_graph(example("feedback_loop"))

    assert result["controller"].stopped
    assert len(result["plant"].outputs) == 1000
    assert result["controller"].lines[-1].startswith("done: 1000 iterations")


def test_delta_time_with_a_fixed_step_interval() -> None:
    config = EXAMPLES / "delta_time" / "delta_time_printer.json"
    result = run_pipeline(config, iterations=3, step_interval_s=0.25)

    assert result.lines == [
        "Time since last step() call: 0.000 seconds",
        "Time since last step() call: 0.250 seconds",
        "Time since last step() call: 0.250 seconds",
    ]


# ---- what run_pipeline honours --------------------------------------------------------------


@pytest.fixture
def pipeline(tmp_path: Path) -> Callable[..., Path]:
    """Write a one-script pipeline; return its config's path."""

    def write(script: str, name: str = "stage", sources: int = 1, **config: object) -> Path:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(script), encoding="utf-8")
        path = tmp_path / f"{name}.json"
        body = {"name": name, "scripts": [f"{name}.py"], "source_pipeline_count": sources}
        path.write_text(json.dumps({**body, **config}), encoding="utf-8")
        return path

    return write


STEERING = """
    import porch

    def step(input_data):
        x = input_data["src"]
        if x == 2:
            return porch.SKIP
        if x == 4:
            porch.stop()
        return x * 10

    def end():
        print("end ran")
"""


def test_skip_and_stop_end_the_stream_after_that_output(pipeline: Callable[..., Path]) -> None:
    result = run_pipeline(pipeline(STEERING), inputs=[{"src": x} for x in range(1, 8)])

    assert result.outputs == [10, 30, 40]
    assert result.skipped == 1
    assert result.stopped and result.unprocessed == 3
    assert result.lines == ["end ran"]


RAISING = """
    import asyncio

    async def step(input_data):
        await asyncio.sleep(0)
        x = input_data["src"]
        if x % 3 == 0:
            raise ValueError(f"cannot handle {x}")
        return x

    async def end():
        await asyncio.sleep(0)
        print("async end ran")
"""


@pytest.mark.parametrize("on_error", ["skip", "dead-letter"])
def test_async_step_failures_go_through_on_error(
    pipeline: Callable[..., Path], on_error: str
) -> None:
    config = pipeline(RAISING, on_error=on_error, concurrency=4)
    result = run_pipeline(config, inputs=[{"src": x} for x in range(1, 8)])

    assert result.outputs == [1, 2, 4, 5, 7]
    assert [f.input for f in result.failures] == [{"src": 3}, {"src": 6}]
    assert "ValueError: cannot handle 3" in result.failures[0].error.user_traceback
    assert 'stage.py", line 8, in step' in result.failures[0].error.user_traceback
    assert result.lines == ["async end ran"]


def test_on_error_stop_raises_after_the_end_hooks(pipeline: Callable[..., Path]) -> None:
    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(pipeline(RAISING), inputs=[{"src": x} for x in range(1, 8)])

    assert "cannot handle 3" in str(failed.value)
    assert failed.value.result.outputs == [1, 2]
    assert failed.value.result.lines == ["async end ran"]


def test_unsendable_output_fails_as_in_a_worker(pipeline: Callable[..., Path]) -> None:
    config = pipeline("def step(input_data):\n    return lambda: 1\n", on_error="skip")
    result = run_pipeline(config, inputs=[{"src": 1}])

    assert result.outputs == []
    assert "lambda" in str(result.failures[0].error)


def test_outputs_are_what_a_target_receives(pipeline: Callable[..., Path]) -> None:
    config = pipeline("def step(input_data):\n    return (1, 2)\n", serializer="json")

    assert run_pipeline(config, inputs=[{"src": 1}]).outputs == [[1, 2]]


FILTER = """
    import porch

    def step(input_data):
        x = input_data["src"]
        return porch.SKIP if x % 3 == 0 else x
"""

PASS = "def step(input_data):\n    return input_data['src']\n"
JOIN = "def step(input_data):\n    return [input_data['filter'], input_data['pass']]\n"


def test_a_join_after_a_filter_pairs_the_same_source_value(pipeline: Callable[..., Path]) -> None:
    configs = [
        pipeline(
            "def step():\n    return 0\n",
            name="src",
            sources=0,
            target_pipeline_names=["filter", "pass"],
        ),
        pipeline(FILTER, name="filter", target_pipeline_names=["join"]),
        pipeline(PASS, name="pass", target_pipeline_names=["join"]),
        pipeline(JOIN, name="join", sources=2),
    ]
    result = run_graph(configs, inputs={"src": list(range(1, 10))})

    assert result["join"].outputs == [[x, x] for x in range(1, 10) if x % 3]
    assert result["src"].outputs == list(range(1, 10))


def test_the_readmes_pytest_example_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """README.md's porch.testing example, run as written (from the repository root)."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("# test_pipelines.py: run with pytest")
    code = readme[start : readme.index("```", start)]
    monkeypatch.chdir(EXAMPLES.parent)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    tests = {name: fn for name, fn in namespace.items() if name.startswith("test_")}
    assert len(tests) == 3
    for fn in tests.values():
        assert callable(fn)
        if "monkeypatch" in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
            fn(monkeypatch)
        else:
            fn()


def test_async_io_example_reports_in_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda seconds: real_sleep(0))  # the lookups' wait
    result = run_graph(example("async_io"))

    assert result["ids"].stopped
    assert result["report"].lines == [
        *(f"id {n}: square {n * n}" for n in range(1, 41)),
        "40 lookups",
    ]


def sensor_chain(sensor: int, readings: int = 20) -> str:
    """The replicas example's digest chain of one sensor, computed here from its description."""
    digest = b"start"
    for index in range(readings):
        message = f"s{sensor:02d} {index} {15 + (sensor * 7 + index) % 13}".encode()
        digest = hashlib.pbkdf2_hmac("sha256", message, digest, 4000)
    return digest.hex()[:16]


def test_replicas_example_chains_each_sensor_in_one_process() -> None:
    result = run_graph(example("replicas"))

    assert result["readings"].stopped
    assert result["report"].lines == [
        *(f"s{s:02d}: 20 readings, chain {sensor_chain(s)}" for s in range(16)),
        "320 readings from 16 sensors, digested in 1 process",
    ]
