"""Help and flags of porch, porchd and porchctl, run in-process with click's CliRunner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import structlog
from click.testing import CliRunner

from porch.cli import porch
from porch.porchctl import porchctl
from porch.porchd import porchd

pytestmark = pytest.mark.timeout(30)

CLIS = {"porch": porch, "porchctl": porchctl, "porchd": porchd}


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PORCH_LOG_LEVEL", "warning")  # restored after the test
    yield
    structlog.reset_defaults()


def commands_section(text: str) -> list[str]:
    return text.split("Commands:\n", 1)[1].splitlines()


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_help_lists_every_command_without_cutting_its_description(prog: str) -> None:
    group = CLIS[prog]
    assert isinstance(group, click.Group)
    result = CliRunner().invoke(group, ["--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    listed = commands_section(result.output)
    assert not [line for line in listed if "..." in line], result.output
    assert sorted(line.split()[0] for line in listed if line.strip()) == sorted(group.commands)
    assert all(len(line) <= 80 for line in result.output.splitlines())


def test_porchctl_help_names_graph_and_top() -> None:
    result = CliRunner().invoke(porchctl, ["--help"], terminal_width=80)
    summary = result.output.split("Options:")[0]
    for command in ("status", "top", "graph", "logs", "start", "stop", "restart", "reload"):
        assert command in summary, summary


def test_porchd_start_takes_configs_not_sources() -> None:
    result = CliRunner().invoke(porchd, ["start", "--help"], terminal_width=80)
    assert "porchd start [OPTIONS] CONFIGS..." in result.output
    assert "SOURCES" not in result.output


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["run", "-v", "missing.json"], "info"),
        (["run", "--verbose", "missing.json"], "info"),
        (["run", "--debug", "missing.json"], "debug"),
        (["-v", "run", "missing.json"], "info"),
        (["validate", "-v", "missing.json"], "info"),
        (["-v", "run", "--debug", "missing.json"], "debug"),
    ],
)
def test_log_flags_work_before_and_after_the_command(args: list[str], level: str) -> None:
    result = CliRunner().invoke(porch, args)
    assert "No such option" not in result.output
    assert "missing.json: file: does not exist" in result.output
    assert os.environ["PORCH_LOG_LEVEL"] == level  # what the workers inherit


def test_debug_after_the_command_shows_tracebacks_of_porch_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORCH_PREFS", str(tmp_path / "prefs.toml"))
    # A bad --peer is a PorchError: one line normally, the traceback with --debug anywhere.
    plain = CliRunner().invoke(porch, ["prefs", "--peer", "nope"])
    assert plain.exit_code != 0 and plain.exception is not None
    assert isinstance(plain.exception, SystemExit)
    debug = CliRunner().invoke(porch, ["prefs", "--debug", "--peer", "nope"])
    assert debug.exception is not None and not isinstance(debug.exception, SystemExit)


def test_porchctl_accepts_debug_after_the_command() -> None:
    result = CliRunner().invoke(porchctl, ["--control", "/nonexistent/x.sock", "status", "--debug"])
    assert "No such option" not in result.output
    assert result.exception is not None and not isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("prog", "args"),
    [
        ("porch", ["run", "x.json", "--stop-timeout", "inf"]),
        ("porch", ["run", "x.json", "--stop-timeout", "nan"]),
        ("porchd", ["start", "x.json", "--stop-timeout", "1e300"]),
        ("porchctl", ["--timeout", "inf", "status"]),
        ("porchctl", ["--timeout", "1e300", "status"]),
        ("porchctl", ["top", "--interval", "nan"]),
        ("porchctl", ["stop", "--wait-timeout", "-1"]),
    ],
)
def test_durations_past_what_timers_hold_are_usage_errors(prog: str, args: list[str]) -> None:
    # `porchctl --timeout inf` was an OverflowError traceback from socket.settimeout
    result = CliRunner().invoke(CLIS[prog], args)
    assert result.exit_code == 2, result.output
    assert "is not between" in result.output and "seconds" in result.output
    assert isinstance(result.exception, SystemExit)
