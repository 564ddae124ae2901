"""What a pipeline sends and receives beyond plain data: types and functions defined in its
scripts travel by value; a payload its receiver cannot decode, and output its serializer
cannot encode, go through `on_error` like a failing step() instead of vanishing."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.netns import Cluster, StartIn, cluster, porchd_in
from tests.integration.test_reliability import StartPorch, write_pipeline

# fixtures, imported so that pytest finds them here
__all__ = ["cluster", "porchd_in"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXIT_S = 30.0

# ---- 1. script-defined types and functions travel by value -------------------------------

TYPES_SOURCE = """
    import collections
    import enum
    from dataclasses import dataclass

    import porch

    @dataclass
    class Point:
        x: int
        y: int

    class Color(enum.Enum):
        RED = 1
        BLUE = 2

    Pair = collections.namedtuple("Pair", "number label")

    class Box:
        def __init__(self, side):
            self.side = side

        def area(self):
            return self.side * self.side

    n = 0

    def step():
        global n
        n += 1
        if n == 3:
            porch.stop()
        color = Color.RED if n % 2 else Color.BLUE
        return {"point": Point(n, -n), "color": color, "pair": Pair(n, str(n)), "box": Box(n)}
"""
CODE_SOURCE = """
    import porch

    FACTOR = 10

    def scale(x):
        return x * FACTOR

    def adder(k):
        def add(x):
            return x + k
        return add

    n = 0

    def step():
        global n
        n += 1
        if n == 3:
            porch.stop()
        return {"scale": scale, "add": adder(n), "square": lambda x: x * x + n}
"""
BOTH_SINK = """
    seen = {}

    def same(key, value):
        # by value, yet one class per type: isinstance() works across messages
        return seen.setdefault(key, type(value)) is type(value)

    def step(input_data):
        data, code = input_data["typed"], input_data["coded"]
        point, color, pair, box = data["point"], data["color"], data["pair"], data["box"]
        print("got", point, color.name, color is type(color)[color.name], pair.label,
              box.area(), code["scale"](2), code["add"](1), code["square"](3),
              same("point", point) and same("color", color) and same("box", box))
"""


def test_script_defined_types_and_functions_arrive_by_value(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    # three folders: no script can import another's module, as on three hosts
    typed = write_pipeline(tmp_path / "a", "typed", TYPES_SOURCE, targets=("both",))
    coded = write_pipeline(tmp_path / "b", "coded", CODE_SOURCE, targets=("both",),
                           serializer="dill")  # fmt: skip
    both = write_pipeline(tmp_path / "c", "both", BOTH_SINK, sources=2)

    run = run_porch("run", str(typed), str(coded), str(both))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    assert run.lines_of("both") == [
        "got Point(x=1, y=-1) RED True 1 1 20 2 10 True",
        "got Point(x=2, y=-2) BLUE True 2 4 20 3 11 True",
        "got Point(x=3, y=-3) RED True 3 9 20 4 12 True",
    ], run.report()
    assert not any("bad_frame_dropped" in line for line in run.stderr), run.report()


POINT_PRINTER = """
    def step(input_data):
        data = input_data["typed_far"]
        print("got", data["point"], data["color"].name, data["box"].area())
"""


def test_script_defined_types_arrive_on_another_host(
    tmp_path: Path, cluster: Callable[[int], Cluster], porchd_in: StartIn
) -> None:
    h1, h2 = cluster(2).hosts
    porchd_in(h1, str(write_pipeline(tmp_path / "h1", "typed_far", TYPES_SOURCE,
                                     targets=("printer_far",))))  # fmt: skip
    d2 = porchd_in(h2, str(write_pipeline(tmp_path / "h2", "printer_far", POINT_PRINTER,
                                          sources=1)))  # fmt: skip

    d2.wait_until(lambda: len(d2.output("printer_far")) >= 3, 30, "three values from h1")
    assert d2.output("printer_far") == [
        "got Point(x=1, y=-1) RED 1",
        "got Point(x=2, y=-2) BLUE 4",
        "got Point(x=3, y=-3) RED 9",
    ]


# ---- 2. a payload the receiver cannot decode goes through on_error -----------------------

HELPER = """
    class Point:
        def __init__(self, x):
            self.x = x
"""
# Point comes from a module beside this script, which a receiver elsewhere cannot import
HELPER_SOURCE = """
    import porch
    import shapes

    n = 0

    def step():
        global n
        n += 1
        if n == 4:
            porch.stop()
        return shapes.Point(n) if n == 2 else n
"""
PRINTER = """
    def step(input_data):
        print("got", input_data["src"])
"""


def undecodable_graph(folder: Path, **sinks: str) -> list[str]:
    """src (1, shapes.Point(2), 3, 4) -> each sink NAME with on_error POLICY."""
    (folder / "a").mkdir()
    (folder / "a" / "shapes.py").write_text(textwrap.dedent(HELPER), encoding="utf-8")
    src = write_pipeline(folder / "a", "src", HELPER_SOURCE, targets=tuple(sinks))
    return [str(src)] + [
        str(write_pipeline(folder / "b", name, PRINTER, sources=1, on_error=policy))
        for name, policy in sinks.items()
    ]


def test_undecodable_payload_fails_the_receiver_naming_sender_type_and_fix(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    run = run_porch("run", *undecodable_graph(tmp_path, sink="stop"))

    assert run.wait_exit(EXIT_S) == 1, run.report()
    assert run.lines_of("sink") == ["got 1"], run.report()
    failed = [line for line in run.stderr if line.startswith("porch: pipeline sink failed:")]
    assert len(failed) == 1, run.report()
    assert "from 'src'" in failed[0] and "shapes.Point" in failed[0], failed[0]
    assert "No module named 'shapes'" in failed[0], failed[0]
    assert "on_error" in failed[0] and "importable" in failed[0], failed[0]  # the fix
    assert not any("Traceback" in line for line in run.stderr), run.report()


def test_undecodable_payload_is_skipped_or_dead_lettered_with_its_bytes(
    tmp_path: Path, run_porch: StartPorch, state_base: Path
) -> None:
    run = run_porch("run", *undecodable_graph(tmp_path, skipper="skip", keeper="dead-letter"))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    for sink in ("skipper", "keeper"):
        assert run.lines_of(sink) == ["got 1", "got 3", "got 4"], run.report()
    summary = "\n".join(run.stderr)
    assert "porch: skipper: finished, 3 items" in summary and "1 skipped" in summary, summary
    assert "1 dead-lettered" in summary, summary
    skipped = [json.loads(line.split(" | ", 1)[1]) for line in run.stderr
               if line.startswith("skipper | {") and "input_skipped" in line]  # fmt: skip
    assert len(skipped) == 1 and skipped[0]["source"] == "src", run.report()
    assert "shapes.Point" in skipped[0]["error"], skipped

    letters = (state_base / "run" / "dead-letter" / "keeper.jsonl").read_text().splitlines()
    assert len(letters) == 1, letters
    letter = json.loads(letters[0])
    assert letter["source"] == "src" and "shapes.Point" in letter["reason"], letter
    # the bytes are kept: where shapes is importable, they decode to the value that was sent
    payload = [base64.b64decode(frame) for frame in letter["payload_b64"]]
    decode = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).x)"
    done = subprocess.run([sys.executable, "-c", decode], input=payload[0],
                          cwd=tmp_path / "a", capture_output=True, timeout=30)  # fmt: skip
    assert done.stdout.strip() == b"2", done


# ---- 3. output the serializer cannot encode ----------------------------------------------

UNSENDABLE_SOURCE = """
    import porch

    n = 0

    def step():
        global n
        n += 1
        if n == 4:
            porch.stop()
        if n == 2:
            return {unsendable}
        return n
"""


def test_unsendable_output_is_one_error_naming_script_type_and_fix(
    tmp_path: Path, run_porch: StartPorch
) -> None:
    source = UNSENDABLE_SOURCE.format(unsendable='{"f": lambda x: x}')
    src = write_pipeline(tmp_path, "src", source, targets=("sink",))
    sink = write_pipeline(tmp_path, "sink", PRINTER, sources=1)

    run = run_porch("run", str(src), str(sink))

    assert run.wait_exit(EXIT_S) == 1, run.report()
    failed = [line for line in run.stderr if line.startswith("porch: pipeline src failed:")]
    assert len(failed) == 1, run.report()
    assert f"{tmp_path / 'src.py'}:" in failed[0] and "lambda" in failed[0], failed[0]
    assert '"serializer": "dill"' in failed[0], failed[0]
    assert not any("Traceback" in line or "porch/" in line for line in run.stderr), run.report()
    assert run.lines_of("sink") == ["got 1"], run.report()


def test_unsendable_output_is_dead_lettered_like_a_failing_step(
    tmp_path: Path, run_porch: StartPorch, state_base: Path
) -> None:
    source = UNSENDABLE_SOURCE.format(unsendable="open(__file__)")
    src = write_pipeline(tmp_path, "src", source, targets=("sink",), on_error="dead-letter")
    sink = write_pipeline(tmp_path, "sink", PRINTER, sources=1)

    run = run_porch("run", str(src), str(sink))

    assert run.wait_exit(EXIT_S) == 0, run.report()
    assert run.lines_of("sink") == ["got 1", "got 3", "got 4"], run.report()
    letters = (state_base / "run" / "dead-letter" / "src.jsonl").read_text().splitlines()
    assert len(letters) == 1, letters
    reason = json.loads(letters[0])["reason"]
    assert "src.py" in reason and "TextIOWrapper" in reason and "plain data" in reason, reason
    assert "1 dead-lettered" in "\n".join(run.stderr), run.report()
