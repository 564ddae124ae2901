"""Configs the runtime cannot carry are refused before anything starts, by every command, in one
line per problem naming the file, the field and the fix; configs DPorch accepts (its names,
UTF-16 files from Windows) run."""

from __future__ import annotations

import codecs
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import PORCH, REPO_ROOT, Porchd, PorchRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

STEP = "def step():\n    return 1\n"
SINK = "def step(input_data):\n    print('got', input_data)\n"


def write(folder: Path, filename: str, config: dict[str, object], codec: str = "utf-8") -> Path:
    (folder / "step.py").write_text(STEP, encoding="utf-8")
    path = folder / filename
    path.write_bytes(json.dumps({"scripts": ["step.py"], **config}, ensure_ascii=False)
                     .encode(codec))  # fmt: skip
    return path


def bad_configs(folder: Path) -> dict[Path, str]:
    """Config files that crashed the runtime (or could not be read) -> the line each must get."""
    return {
        write(folder, "long.json", {"name": "n" * 260}): "name: is 260 bytes long in UTF-8",
        write(folder, "hwm.json", {"name": "hwm", "queue_limit": 3_000_000_000}):
            "queue_limit: must be from 1 to 1,000,000,000, got 3000000000",
        write(folder, "bytes.json", {"name": "bytes", "queue_limit_bytes": 2**64}):
            "queue_limit_bytes: must be from 1,024 to 1,099,511,627,776",
        write(folder, "beat.json", {"name": "beat", "heartbeat_timeout_s": 0.01}):
            "heartbeat_timeout_s: must be from 2 to 86400",
        write(folder, "slash.json", {"name": "a/b/c"}): "name: must not contain '/'",
        write(folder, "latin.json", {"name": "caf\u00e9"}, "latin-1"):
            "file: is not UTF-8 (byte 0xE9 on line 1",
        write(folder, "utf16.json", {"name": "bom_less"}, "utf-16-le"):
            "file: looks like UTF-16 without a byte order mark",
    }  # fmt: skip


def assert_refused(lines: list[str], expected: dict[Path, str], report: str) -> None:
    text = "\n".join(lines)
    assert "Traceback" not in text, report
    for path, problem in expected.items():
        assert f"{path}: {problem}" in text, report


def test_validate_run_and_porchd_refuse_out_of_bound_configs_in_one_line_each(
    tmp_path: Path, porch_cli: Callable[..., PorchRun], porchd: Callable[..., Porchd]
) -> None:
    expected = bad_configs(tmp_path)
    files = [str(p) for p in expected]
    done = subprocess.run([str(PORCH), "validate", *files], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert_refused(done.stdout.splitlines(), expected, done.stdout + done.stderr)

    run = porch_cli("run", *files)
    assert run.wait_exit(30) == 2, run.report()
    assert_refused(run.stderr, expected, run.report())
    assert "porch: not starting" in run.stderr[-1], run.report()

    daemon = porchd(*files)
    assert daemon.wait_exit(30) == 2, daemon.report()
    assert_refused(daemon.stderr, expected, daemon.report())
    assert not any("discovery_started" in line or "worker_spawned" in line
                   for line in daemon.stderr), daemon.report()  # fmt: skip


def test_dporch_names_and_a_utf16_config_run(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
) -> None:
    # What Windows PowerShell's `>` writes (UTF-16 with a BOM), names DPorch allows.
    source = write(
        tmp_path,
        "first.json",
        {"name": "1st_stage", "target_pipeline_names": ["stage.one"]},
        "utf-16",
    )
    (tmp_path / "sink.py").write_text(SINK, encoding="utf-8")
    sink = tmp_path / "sink.json"
    sink.write_bytes(
        codecs.BOM_UTF8
        + json.dumps(
            {"name": "stage.one", "scripts": ["sink.py"], "source_pipeline_count": 1}
        ).encode()
    )
    run = porch_cli("run", str(source), str(sink), "--iterations", "3")
    assert run.wait_exit(60) == 0, run.report()
    assert run.lines_of("stage.one") == ["got {'1st_stage': 1}"] * 3, run.report()
