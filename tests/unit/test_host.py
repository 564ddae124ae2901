"""The script host: each script its own module, step() chained, end() hooks, user tracebacks."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import porch
from porch.errors import ScriptError
from porch.host import ScriptHost, load_script
from porch.stream import clear_stop_request, stop_requested

pytestmark = pytest.mark.timeout(30)

HOST_FILE = "porch/host.py"


@pytest.fixture(autouse=True)
def clean_sys_path() -> Iterator[None]:
    """ScriptHost.load() puts script folders on sys.path; put it back as it was."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def clean_stop_request() -> Iterator[None]:
    clear_stop_request()
    yield
    clear_stop_request()


@pytest.fixture
def make_host(tmp_path: Path) -> Callable[..., ScriptHost]:
    """Write scripts (name -> source) and return a loaded ScriptHost over them, in order."""

    def make(*scripts: tuple[str, str], pipeline: str = "pipeline_a") -> ScriptHost:
        paths = []
        for name, source in scripts:
            path = tmp_path / name
            path.write_text(source, encoding="utf-8")
            paths.append(path)
        host = ScriptHost(paths, pipeline)
        host.load()
        return host

    return make


def test_scripts_are_isolated_modules(make_host: Callable[..., ScriptHost]) -> None:
    host = make_host(
        ("a.py", "counter = 'a'\n\ndef step(x):\n    return [counter]\n"),
        ("b.py", "counter = 'b'\n\ndef step(x):\n    return x + [counter]\n"),
    )

    assert host.step(None) == ["a", "b"]


def test_top_level_runs_once(make_host: Callable[..., ScriptHost], tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    source = (
        f"with open({str(log)!r}, 'a') as f:\n    f.write('top\\n')\n\ndef step():\n    return 1\n"
    )
    host = make_host(("once.py", source))

    for _ in range(3):
        host.step(None)

    assert log.read_text().splitlines() == ["top"]


def test_chaining_passes_each_return_value_to_the_next_step(
    make_host: Callable[..., ScriptHost],
) -> None:
    host = make_host(
        ("one.py", "def step(x):\n    return {'seen': x}\n"),
        ("two.py", "def step(x):\n    return [x, 'two']\n"),
        ("three.py", "def step(x):\n    return (x, 'three')\n"),
    )

    assert host.step({"src": 5}) == ([{"seen": {"src": 5}}, "two"], "three")


def test_source_pipeline_first_step_gets_none(make_host: Callable[..., ScriptHost]) -> None:
    host = make_host(("src.py", "def step(input_data):\n    return ('got', input_data)\n"))

    assert host.step(None) == ("got", None)


def test_none_returned_is_passed_on_like_any_value(
    make_host: Callable[..., ScriptHost],
) -> None:
    host = make_host(
        ("first.py", "def step(x):\n    return None\n"),
        ("second.py", "def step(x):\n    return ('second got', x)\n"),
    )

    assert host.step(1) == ("second got", None)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_step_without_params_works_in_any_position(
    make_host: Callable[..., ScriptHost], position: int
) -> None:
    scripts = [(f"s{i}.py", "def step(x):\n    return (x or 0) + 1\n") for i in range(3)]
    scripts[position] = (f"s{position}.py", "def step():\n    return 100\n")
    host = make_host(*scripts)

    expected = 100 + (2 - position)
    assert host.step(None) == expected


def test_skip_ends_the_iteration_early(
    make_host: Callable[..., ScriptHost], tmp_path: Path
) -> None:
    marker = tmp_path / "later_ran"
    host = make_host(
        ("filter.py", "import porch\n\ndef step(x):\n    return porch.SKIP\n"),
        ("later.py", f"def step(x):\n    open({str(marker)!r}, 'w').close()\n    return x\n"),
    )

    assert host.step(None) is porch.SKIP
    assert not marker.exists()


def test_raise_stop_propagates(make_host: Callable[..., ScriptHost]) -> None:
    host = make_host(("stopper.py", "import porch\n\ndef step(x):\n    raise porch.Stop\n"))

    with pytest.raises(porch.Stop):
        host.step(None)


def test_stop_sets_the_request_flag_and_output_is_kept(
    make_host: Callable[..., ScriptHost],
) -> None:
    host = make_host(
        ("stopper.py", "import porch\n\ndef step(x):\n    porch.stop()\n    return 7\n")
    )
    assert not stop_requested()

    assert host.step(None) == 7
    assert stop_requested()

    clear_stop_request()
    assert not stop_requested()


def test_delta_time_is_zero_first_then_positive(make_host: Callable[..., ScriptHost]) -> None:
    host = make_host(("timed.py", "delta_time = None\n\ndef step():\n    return delta_time\n"))

    first = host.step(None)
    time.sleep(0.01)  # let a measurable amount of time pass between steps
    second = host.step(None)

    assert first == 0.0
    assert isinstance(second, float)
    assert second > 0.0


def test_end_hooks_all_run_in_order_even_if_one_raises(
    make_host: Callable[..., ScriptHost], tmp_path: Path
) -> None:
    log = tmp_path / "end.log"

    def script(tag: str, fail: bool) -> str:
        body = f"    with open({str(log)!r}, 'a') as f:\n        f.write({tag!r} + '\\n')\n"
        if fail:
            body += f"    raise RuntimeError('end of {tag} failed')\n"
        return f"def step(x):\n    return x\n\ndef end():\n{body}"

    host = make_host(
        ("first.py", script("first", fail=False)),
        ("second.py", script("second", fail=True)),
        ("nohook.py", "def step(x):\n    return x\n"),
        ("third.py", script("third", fail=False)),
    )

    errors = host.end()

    assert log.read_text().splitlines() == ["first", "second", "third"]
    assert len(errors) == 1
    assert isinstance(errors[0], ScriptError)
    assert "end of second failed" in str(errors[0])
    assert f"{tmp_path / 'second.py'}" in errors[0].user_traceback


def test_raising_step_gives_user_traceback(
    make_host: Callable[..., ScriptHost], tmp_path: Path
) -> None:
    host = make_host(
        ("ok.py", "def step(x):\n    return x\n"),
        ("boom.py", "def helper(x):\n    return 1 / x\n\n\ndef step(x):\n    return helper(0)\n"),
    )

    with pytest.raises(ScriptError) as info:
        host.step(None)

    path = tmp_path / "boom.py"
    tb = info.value.user_traceback
    assert f'File "{path}", line 2' in tb
    assert f'File "{path}", line 6' in tb
    assert "ZeroDivisionError" in tb
    assert HOST_FILE not in tb
    assert "ZeroDivisionError" in str(info.value)
    assert f"{path}:2" in str(info.value)


def test_top_level_error_names_user_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "top.py"
    path.write_text("x = 1\ny = {}['missing']\n\ndef step():\n    return x\n", encoding="utf-8")

    with pytest.raises(ScriptError) as info:
        load_script(path, 0, "pipeline_a")

    tb = info.value.user_traceback
    assert f'File "{path}", line 2' in tb
    assert "KeyError" in tb
    assert HOST_FILE not in tb
    assert str(path) in str(info.value)


def test_syntax_error_names_user_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "syntax.py"
    path.write_text("x = 1\n\ndef step(:\n    return x\n", encoding="utf-8")

    with pytest.raises(ScriptError) as info:
        load_script(path, 0, "pipeline_a")

    assert f"{path}:3:" in str(info.value)
    tb = info.value.user_traceback
    assert f'File "{path}", line 3' in tb
    assert "SyntaxError" in tb
    assert HOST_FILE not in tb


def test_step_with_two_required_params_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "two.py"
    path.write_text("\ndef step(a, b):\n    return a\n", encoding="utf-8")

    with pytest.raises(ScriptError, match="0 or 1 parameters") as info:
        load_script(path, 0, "pipeline_a")

    assert f"{path}:2" in str(info.value)


def test_script_without_step_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "nostep.py"
    path.write_text("x = 1\n", encoding="utf-8")

    with pytest.raises(ScriptError, match=r"step\(\)"):
        load_script(path, 0, "pipeline_a")


def test_script_folder_is_importable(make_host: Callable[..., ScriptHost], tmp_path: Path) -> None:
    (tmp_path / "porch_test_helper_mod.py").write_text("VALUE = 42\n", encoding="utf-8")
    try:
        host = make_host(
            (
                "uses.py",
                "import porch_test_helper_mod\n\ndef step():\n"
                "    return porch_test_helper_mod.VALUE\n",
            )
        )
        assert host.step(None) == 42
    finally:
        sys.modules.pop("porch_test_helper_mod", None)


def test_script_can_define_a_dataclass(make_host: Callable[..., ScriptHost]) -> None:
    source = (
        "from dataclasses import dataclass\n\n\n"
        "@dataclass\nclass Point:\n    x: int\n\n\n"
        "def step():\n    return Point(1).x\n"
    )
    host = make_host(("points.py", source))

    assert host.step(None) == 1


@pytest.mark.parametrize("call", ["sys.exit()", "sys.exit(0)", "sys.exit(None)"])
def test_clean_sys_exit_in_step_ends_the_stream_like_stop(
    make_host: Callable[..., ScriptHost], call: str
) -> None:
    host = make_host(("quits.py", f"import sys\n\ndef step():\n    {call}\n"))

    with pytest.raises(porch.Stop):
        host.step(None)


def test_nonzero_sys_exit_in_step_is_a_script_error_with_file_and_line(
    make_host: Callable[..., ScriptHost], tmp_path: Path
) -> None:
    host = make_host(("fails.py", "import sys\n\ndef step():\n    sys.exit(3)\n"))

    with pytest.raises(ScriptError) as caught:
        host.step(None)

    assert f"step() called sys.exit(3) ({tmp_path / 'fails.py'}:4)" in str(caught.value)
    assert HOST_FILE not in caught.value.user_traceback


def test_sys_exit_in_top_level_or_end(make_host: Callable[..., ScriptHost], tmp_path: Path) -> None:
    path = tmp_path / "early.py"
    path.write_text("import sys\nsys.exit(0)\n", encoding="utf-8")
    with pytest.raises(porch.Stop):
        load_script(path, 0, "pipeline_a")
    path.write_text("import sys\nsys.exit('bad input')\n", encoding="utf-8")
    with pytest.raises(ScriptError, match=r"top-level code called sys.exit\('bad input'\)"):
        load_script(path, 0, "pipeline_a")

    host = make_host(
        ("a.py", "import sys\n\ndef step():\n    return 1\n\ndef end():\n    sys.exit(0)\n"),
        ("b.py", "import sys\n\ndef step(x):\n    return x\n\ndef end():\n    sys.exit(2)\n"),
    )
    errors = host.end()
    assert [str(e).split(" (")[0] for e in errors] == ["end() called sys.exit(2)"]


def test_async_steps_are_awaited_and_chain_with_sync_ones(
    make_host: Callable[..., ScriptHost],
) -> None:
    host = make_host(
        (
            "a.py",
            "import asyncio\n\nasync def step(x):\n    await asyncio.sleep(0)\n    return x + 1\n",
        ),
        ("b.py", "def step(x):\n    return x * 10\n"),
        (
            "c.py",
            "out = []\n\nasync def end():\n    out.append('end')\n\ndef step(x):\n    return x\n",
        ),
    )

    assert host.is_async
    assert host.step(1) == 20
    assert host.loop.run_until_complete(host.astep(2)) == 30
    assert host.end() == []
    assert host.scripts[2].module.out == ["end"]
    host.close()


def test_a_raising_async_step_names_the_users_line(make_host: Callable[..., ScriptHost]) -> None:
    host = make_host(("bad.py", "async def step(x):\n    return 1 / 0\n"))

    with pytest.raises(ScriptError) as caught:
        host.loop.run_until_complete(host.astep(1))
    assert 'bad.py", line 2, in step' in caught.value.user_traceback
    assert HOST_FILE not in caught.value.user_traceback
    host.close()
