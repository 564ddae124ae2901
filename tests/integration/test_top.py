"""`porchctl top` in a pseudo-terminal (pexpect): it shows the pipelines, refreshes, quits on
`q` and on Ctrl+C, and gives the terminal back (leaves the alternate screen)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pexpect
import pytest

from tests.integration.conftest import PORCHCTL, Porchd
from tests.integration.test_porchd import chain

pytestmark = [pytest.mark.integration]

Start = Callable[..., Porchd]
EXPECT_TIMEOUT_S = 15
LEAVE_ALTERNATE_SCREEN = "\x1b[?1049l"  # xterm's rmcup: curses gave the terminal back


def spawn_top(daemon: Porchd) -> pexpect.spawn:
    """`porchctl top` on an 40x160 xterm-like pty, against this daemon."""
    env = {**daemon.env, "TERM": "xterm"}
    return pexpect.spawn(
        str(PORCHCTL), ["--control", str(daemon.control), "top", "--interval", "0.3"],
        env=env, dimensions=(40, 160), encoding="utf-8", codec_errors="replace",
        timeout=EXPECT_TIMEOUT_S,
    )  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("quit_key", ["q", "\x03"], ids=["q", "ctrl-c"])
def test_top_shows_the_pipelines_and_quits(tmp_path: Path, porchd: Start, quit_key: str) -> None:
    daemon = porchd(*chain(tmp_path))
    daemon.wait_running("ticker", "printer")
    top = spawn_top(daemon)
    try:
        top.expect("PIPELINE")
        top.expect("ticker")
        top.expect("printer")
        top.expect("running")
        top.expect("q: quit")
        top.send(quit_key)
        top.expect(pexpect.EOF)
        top.close()
        assert top.exitstatus == 0, top.before
        assert LEAVE_ALTERNATE_SCREEN in (top.before or "")
    finally:
        if top.isalive():
            top.terminate(force=True)


@pytest.mark.timeout(60)
def test_top_without_a_terminal_prints_one_frame(tmp_path: Path, porchd: Start) -> None:
    daemon = porchd(*chain(tmp_path))
    daemon.wait_running("ticker", "printer")
    done = daemon.ctl("top")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"porchd pid {daemon.proc.pid}")
    assert lines[2].split()[:3] == ["PIPELINE", "STATE", "PID"]
    assert [line.split()[0] for line in lines[3:]] == ["ticker", "printer"]


@pytest.mark.timeout(30)
def test_top_without_porchd_says_so(tmp_path: Path) -> None:
    top = pexpect.spawn(str(PORCHCTL), ["--control", str(tmp_path / "none.sock"), "top"],
                        encoding="utf-8", timeout=EXPECT_TIMEOUT_S)  # fmt: skip
    top.expect("cannot reach porchd")
    top.expect(pexpect.EOF)
    top.close()
    assert top.exitstatus == 1
