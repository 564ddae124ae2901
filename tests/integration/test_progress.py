"""`porch run` progress: a live footer per pipeline on a terminal (pty via pexpect) that never
mixes into the `NAME | line` output, and a summary at the end (a short one without a TTY)."""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from tests.integration.conftest import PORCH, REPO_ROOT, PorchRun

pytestmark = [pytest.mark.integration]

DIAMOND = [str(REPO_ROOT / "examples" / "diamond" / f"pipeline_{x}.json") for x in "abcd"]
RUN_TIMEOUT_S = 45
SET_SCROLL_REGION = re.compile(r"\x1b\[1;\d+r")
RESET_SCROLL_REGION = "\x1b7\x1b[r"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\x1b[78]")


@pytest.mark.timeout(60)
def test_summary_without_a_terminal(porch_cli: Callable[..., PorchRun]) -> None:
    run = porch_cli("run", *DIAMOND, "--iterations", "5")
    assert run.wait_exit(RUN_TIMEOUT_S) == 0, run.report()
    for name in ("pipeline_a", "pipeline_b", "pipeline_c", "pipeline_d"):
        assert any(re.fullmatch(rf"porch: {name}: finished, 5 items in [\d.]+ s \([\d.]+/s\).*",
                                line) for line in run.stderr), run.report()  # fmt: skip
    assert not any("\x1b" in line for line in run.stderr + run.stdout), run.report()


@pytest.mark.timeout(60)
def test_a_step_error_is_said_once_after_its_traceback(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
) -> None:
    (tmp_path / "crash.py").write_text(
        textwrap.dedent("""
        n = 0
        def step():
            global n
            n += 1
            if n == 3:
                raise ValueError("third time")
            return n
    """)
    )
    config = {"name": "crasher", "scripts": ["crash.py"]}
    (tmp_path / "crasher.json").write_text(json.dumps(config))
    run = porch_cli("run", str(tmp_path / "crasher.json"))
    assert run.wait_exit(RUN_TIMEOUT_S) == 1, run.report()
    summary = [line for line in run.stderr if line.startswith("porch: crasher: failed, 2 items")]
    assert summary and "error" not in summary[0], run.report()  # said just above, once
    said = [line for line in run.stderr if "ValueError: third time" in line]
    assert said == [
        "crasher | ValueError: third time",  # the traceback's last line
        "porch: pipeline crasher failed: step() raised ValueError: third time "
        f"({tmp_path / 'crash.py'}:7)",
    ], run.report()


FOOTER_DRAW = re.compile(r"\x1b7.*?\x1b8", re.S)


@pytest.mark.timeout(60)
def test_live_footer_on_a_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "TERM": "xterm", "PORCH_EXAMPLE_OUT": str(tmp_path)}
    child = pexpect.spawn(str(PORCH), ["run", *DIAMOND, "--iterations", "8"], env=env,
                          cwd=str(REPO_ROOT), dimensions=(24, 120), encoding="utf-8",
                          codec_errors="replace", timeout=RUN_TIMEOUT_S)  # fmt: skip
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    out = child.before or ""
    assert child.exitstatus == 0, out
    assert SET_SCROLL_REGION.search(out), "no footer region was set"
    assert re.search(r"pipeline_d +running +\d+ items +[\d.]+/s", out), out[-2000:]
    assert RESET_SCROLL_REGION in out, "the terminal's scroll region was not given back"
    # pipeline output stays whole lines: the footer is drawn between them, never inside one
    # a footer redraw is "save cursor, draw at the bottom, restore": not part of any line
    scrolled = FOOTER_DRAW.sub("", out.split(RESET_SCROLL_REGION)[0])
    lines = ANSI.sub("", scrolled).split("\r\n")
    sums = [line for line in lines if "pipeline_d | pipeline_d: Received" in line]
    assert len(sums) == 8 and all(line.startswith("pipeline_d | ") for line in sums), sums
    tail = ANSI.sub("", out.split(RESET_SCROLL_REGION)[-1]).splitlines()
    assert tail[0].startswith("porch: summary after")
    assert tail[1].split() == ["PIPELINE", "STATE", "ITEMS", "TIME", "RATE", "ERRORS"]
    assert [row.split()[:3] for row in tail[2:6]] == [
        [f"pipeline_{x}", "finished", "8"] for x in "abcd"]  # fmt: skip
