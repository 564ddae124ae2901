"""`porch run` behaviour with real processes: failures, signals, end of stream, bad input."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import PorchRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Start = Callable[..., PorchRun]


def pipeline(
    folder: Path,
    name: str,
    script: str,
    sources: int = 0,
    targets: tuple[str, ...] = (),
    **extra: object,
) -> str:
    """Write NAME.json and NAME.py into `folder`; return the config path."""
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
    return str(path)


COUNTER = """
    import time
    n = 0
    def step():
        global n
        n += 1
        time.sleep({delay})
        return n
    def end():
        print("end ran")
"""


def test_failing_step_shows_user_traceback_and_stops_the_others(tmp_path: Path, porch_cli: Start):
    src = pipeline(tmp_path, "source", COUNTER.format(delay=0.02), targets=("crasher",))
    bad = pipeline(
        tmp_path,
        "crasher",
        """
        def step(input_data):
            value = input_data["source"]
            print("got", value)
            if value == 3:
                return 1 / 0
        def end():
            print("crasher end ran")
    """,
        sources=1,
    )
    run = porch_cli("run", src, bad)
    assert run.wait_exit(30) == 1, run.report()
    err = "\n".join(run.stderr)
    assert f'crasher |   File "{tmp_path / "crasher.py"}", line 6, in step' in err, run.report()
    assert "crasher | ZeroDivisionError: division by zero" in err
    assert "porch/host.py" not in err and "workers/worker.py" not in err
    assert "porch: pipeline crasher failed: step() raised ZeroDivisionError" in err
    assert run.lines_of("crasher") == ["got 1", "got 2", "got 3", "crasher end ran"]
    assert run.lines_of("source")[-1] == "end ran"


def test_ctrl_c_runs_end_hooks_in_order_and_exits_zero(tmp_path: Path, porch_cli: Start):
    (tmp_path / "first.py").write_text(
        "def step(x):\n    return x\ndef end():\n    print('first end')\n"
    )
    src = pipeline(tmp_path, "ticker", COUNTER.format(delay=0.05), targets=("sink",))
    sink = tmp_path / "sink.json"
    (tmp_path / "second.py").write_text(
        textwrap.dedent("""
        def step(input_data):
            print("tick", input_data["ticker"])
        def end():
            print("second end")
    """)
    )
    sink.write_text(
        json.dumps(
            {"name": "sink", "scripts": ["first.py", "second.py"], "source_pipeline_count": 1}
        )
    )
    run = porch_cli("run", src, str(sink))
    run.wait_for_line("sink", "tick 3", 20)
    run.interrupt()
    assert run.wait_exit(15) == 0, run.report()
    lines = run.lines_of("sink")
    assert lines[-2:] == ["first end", "second end"], run.report()
    ticks = [int(line.split()[1]) for line in lines if line.startswith("tick")]
    assert ticks == list(range(1, len(ticks) + 1)), "every tick in order, none lost or repeated"
    assert "end ran" in run.lines_of("ticker")


def test_second_ctrl_c_exits_at_once(tmp_path: Path, porch_cli: Start):
    slow_end = pipeline(
        tmp_path,
        "stubborn",
        """
        import time
        def step():
            print("alive", flush=True)
            time.sleep(0.05)
        def end():
            print("end started", flush=True)
            time.sleep(60)
    """,
    )
    run = porch_cli("run", slow_end, "--stop-timeout", "60")
    run.wait_for_line("stubborn", "alive", 20)
    run.interrupt()
    run.wait_for_line("stubborn", "end started", 10)
    run.interrupt()
    assert run.wait_exit(10) == 130, run.report()


def test_dead_downstream_does_not_hang_upstream(tmp_path: Path, porch_cli: Start):
    """A fast producer with a tiny queue and a consumer that dies: porch exits, naming it."""
    src = pipeline(
        tmp_path,
        "producer",
        "def step():\n    return b'x' * 1000\n",
        targets=("consumer",),
        queue_limit=2,
    )
    sink = pipeline(
        tmp_path,
        "consumer",
        """
        n = 0
        def step(input_data):
            global n
            n += 1
            if n == 50:
                raise RuntimeError("consumer gave up")
    """,
        sources=1,
        queue_limit=2,
    )
    run = porch_cli("run", src, sink)
    assert run.wait_exit(30) == 1, run.report()
    assert any("porch: pipeline consumer failed" in line for line in run.stderr), run.report()


def test_end_of_stream_stop_call_and_stop_exception(tmp_path: Path, porch_cli: Start):
    """porch.stop() still sends that iteration's value; raise porch.Stop sends nothing."""
    calls = pipeline(
        tmp_path,
        "caller",
        """
        import porch
        n = 0
        def step():
            global n
            n += 1
            if n == 3:
                porch.stop()
            return n
    """,
        targets=("joiner",),
    )
    raiser = pipeline(
        tmp_path,
        "raiser",
        """
        import porch
        n = 0
        def step():
            global n
            n += 1
            if n == 4:
                raise porch.Stop
            return n * 10
    """,
        targets=("joiner",),
    )
    joiner = pipeline(
        tmp_path,
        "joiner",
        """
        seen = []
        def step(input_data):
            seen.append((input_data["caller"], input_data["raiser"]))
        def end():
            print("seen", seen)
    """,
        sources=2,
    )
    run = porch_cli("run", calls, raiser, joiner)
    assert run.wait_exit(30) == 0, run.report()
    assert run.lines_of("joiner") == ["seen [(1, 10), (2, 20), (3, 30)]"], run.report()


def test_skip_filters_and_none_is_a_value(tmp_path: Path, porch_cli: Start):
    src = pipeline(
        tmp_path,
        "numbers",
        """
        import porch
        n = 0
        def step():
            global n
            n += 1
            if n % 2:
                return porch.SKIP
            return None if n == 4 else n
    """,
        targets=("printer",),
    )
    sink = pipeline(
        tmp_path,
        "printer",
        """
        def step(input_data):
            print(repr(input_data))
    """,
        sources=1,
    )
    run = porch_cli("run", src, sink, "--iterations", "6")
    assert run.wait_exit(30) == 0, run.report()
    assert run.lines_of("printer") == ["{'numbers': 2}", "{'numbers': None}", "{'numbers': 6}"], (
        run.report()
    )


def test_invalid_config_is_refused_with_file_and_field(tmp_path: Path, porch_cli: Start):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "ab", "scripts": ["missing.py"], "colour": "red"}))
    run = porch_cli("run", str(bad))
    assert run.wait_exit(15) == 2, run.report()
    err = "\n".join(run.stderr)
    assert f"{bad}: colour: unknown key" in err, run.report()
    run2 = porch_cli("run", str(tmp_path / "nope.json"))
    assert run2.wait_exit(15) == 2
    assert any("nope.json: file: does not exist" in line for line in run2.stderr), run2.report()


def test_top_level_error_names_user_file_and_line(tmp_path: Path, porch_cli: Start):
    bad = pipeline(
        tmp_path,
        "broken",
        """
        import json
        settings = json.loads("{not json")
        def step():
            return 1
    """,
    )
    run = porch_cli("run", bad)
    assert run.wait_exit(30) == 1, run.report()
    err = "\n".join(run.stderr)
    assert f'broken |   File "{tmp_path / "broken.py"}", line 3, in <module>' in err, run.report()
    assert "porch: pipeline broken failed:" in err


def test_fan_out_gives_every_target_every_message(tmp_path: Path, porch_cli: Start):
    src = pipeline(tmp_path, "fanner", COUNTER.format(delay=0), targets=("left", "right"))
    printer = "def step(input_data):\n    print(input_data['fanner'])\n"
    left = pipeline(tmp_path, "left", printer, sources=1)
    right = pipeline(tmp_path, "right", printer, sources=1)
    run = porch_cli("run", src, left, right, "--iterations", "200")
    assert run.wait_exit(30) == 0, run.report()
    expected = [str(i) for i in range(1, 201)]
    assert run.lines_of("left") == expected
    assert run.lines_of("right") == expected
