"""scripts/porchd.service and `porchd unit`'s units pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from porch import systemd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "scripts" / "porchd.service"
BIN = Path(sys.executable).parent
INSTALLED_BIN = "/usr/local/bin"
VERIFY_TIMEOUT_S = 30


def systemd_analyze() -> str:
    """The systemd-analyze binary; skip without it (fail on CI, which must install it)."""
    found = shutil.which("systemd-analyze")
    if found is None:
        reason = "systemd-analyze not found: install systemd to check scripts/porchd.service"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must have it)")
        pytest.skip(reason)
    return found


def local_unit(tmp_path: Path, text: str) -> Path:
    """The unit with its /usr/local/bin programs replaced by this venv's (verify checks them)."""
    for program in ("porchd", "porchctl"):
        assert (BIN / program).exists(), f"{BIN / program} is missing: run `pip install -e .`"
        text = text.replace(f"{INSTALLED_BIN}/{program}", str(BIN / program))
    path = tmp_path / "porchd.service"
    path.write_text(text, encoding="utf-8")
    return path


def verify(unit: Path) -> tuple[int, list[str]]:
    """Exit code, and the stderr lines about `unit` itself (not other units on the system)."""
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    return done.returncode, [line for line in done.stderr.splitlines() if unit.name in line]


def settings(text: str) -> dict[str, str]:
    """KEY=value lines of a unit (the last one wins), comments left out."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert f"{INSTALLED_BIN}/porchd start" in text
    code, complaints = verify(local_unit(tmp_path, text))
    assert complaints == []
    assert code == 0


def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    # Guards the filter above: a bad key and a missing program are reported on the unit's lines.
    text = UNIT.read_text(encoding="utf-8").replace("[Service]", "[Service]\nNoSuchKey=1")
    code, complaints = verify(local_unit(tmp_path, text.replace("porchctl reload", "nope")))
    assert code != 0
    assert any("NoSuchKey" in line for line in complaints), complaints
    assert any(f"{INSTALLED_BIN}/nope" in line for line in complaints), complaints


def test_shipped_unit_is_what_porchd_unit_writes_for_usr_local_bin() -> None:
    assert UNIT.read_text(encoding="utf-8") == systemd.unit_text(Path(INSTALLED_BIN))


@pytest.mark.parametrize("user", [None, "daemon"])
def test_porchd_unit_verifies_for_this_installation(tmp_path: Path, user: str | None) -> None:
    # A virtualenv's porchd (this one) is not at /usr/local/bin: the unit names the real one.
    configs = tmp_path / "my pipelines"
    configs.mkdir()
    args = [str(BIN / "porchd"), "unit", str(configs), *(["--user", user] if user else [])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S,
                          check=True, cwd=tmp_path)  # fmt: skip
    # only a warning when `user` cannot reach this venv's python (e.g. under root's 0700 home)
    assert all(" cannot enter " in line for line in done.stderr.splitlines()), done.stderr
    unit = tmp_path / "porchd.service"
    unit.write_text(done.stdout, encoding="utf-8")
    found = settings(done.stdout)
    assert found["ExecStart"] == f'{BIN / "porchd"} start "{configs}"'
    assert found["ExecReload"] == f"{BIN / 'porchctl'} reload"
    assert found.get("User") == user
    assert verify(unit) == (0, [])


def test_unit_comments_do_not_promise_other_users_the_socket() -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert "other users pass --control" not in text
    assert "mode 0600" in text and "only root can" in text


def test_unit_runs_porchd_in_the_foreground_and_stops_it_gracefully() -> None:
    unit = settings(UNIT.read_text(encoding="utf-8"))
    assert unit["Type"] == "simple"
    assert unit["ExecStart"] == f"{INSTALLED_BIN}/porchd start /etc/porch/pipelines"
    assert unit["ExecReload"] == f"{INSTALLED_BIN}/porchctl reload"
    assert "ExecStop" not in unit  # SIGTERM is porchd's `porchctl stop`
    assert (unit["KillMode"], unit["TimeoutStopSec"]) == ("mixed", "30")
    assert (unit["Restart"], unit["RestartSec"]) == ("on-failure", "2")
    assert (unit["RuntimeDirectory"], unit["StateDirectory"]) == ("porch", "porch")
    assert unit["Environment"] == "PORCH_RUNTIME_DIR=/run/porch PORCH_STATE_DIR=/var/lib/porch"
