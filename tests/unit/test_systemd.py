"""`porchd unit`'s text and its warning when the unit's user could not reach porchd."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from porch import systemd

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def open_tree() -> Iterator[Path]:
    """/tmp/x (0755) with a 0755 and a 0700 folder in it (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    root.chmod(0o755)
    for name, mode in (("open", 0o755), ("closed", 0o700)):
        (root / name).mkdir(mode=mode)
        (root / name).chmod(mode)
        (root / name / "porchd").write_text("#!/opt/venv/bin/python3\n", encoding="utf-8")
    yield root
    shutil.rmtree(root)


def test_a_user_who_cannot_enter_a_folder_on_the_way_is_told(open_tree: Path) -> None:
    found = systemd.unreachable("daemon", [open_tree / "open" / "porchd",
                                           open_tree / "closed" / "porchd"])  # fmt: skip
    assert found == [
        f"{open_tree / 'closed' / 'porchd'}: user daemon cannot enter {open_tree / 'closed'} "
        "(mode 700)"
    ]
    assert systemd.unreachable("root", [open_tree / "closed" / "porchd"]) == []


def test_the_interpreter_of_a_script_is_its_shebang(open_tree: Path) -> None:
    assert systemd.interpreter_of(open_tree / "open" / "porchd") == Path("/opt/venv/bin/python3")
    assert systemd.interpreter_of(open_tree / "nope") is None


def test_exec_arguments_are_quoted_and_escaped() -> None:
    assert systemd.quote("/opt/porch/bin/porchd") == "/opt/porch/bin/porchd"
    assert systemd.quote("/srv/my pipelines") == '"/srv/my pipelines"'
    assert systemd.quote("/srv/100%/$HOME") == '"/srv/100%%/$$HOME"'
    unit = systemd.unit_text(Path("/opt/p/bin"), ["/srv/a b"], "porch")
    assert 'ExecStart=/opt/p/bin/porchd start "/srv/a b"\n' in unit
    assert "\nUser=porch\n" in unit and "sudo -u porch /opt/p/bin/porchctl" in unit
