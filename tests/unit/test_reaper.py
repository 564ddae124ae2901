"""Stale run folders: only this user's, only when their supervisor is gone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from porch.reaper import RUN_DIR_PREFIX, remove_stale_run_dirs

pytestmark = pytest.mark.timeout(30)


def never_a_pid() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_only_folders_of_dead_supervisors_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"{RUN_DIR_PREFIX}{never_a_pid()}-abc"
    alive = tmp_path / f"{RUN_DIR_PREFIX}{os.getpid()}-abc"
    other = tmp_path / "porch-0"  # a runtime folder of porchd sockets, not a run folder
    for folder in (dead, alive, other):
        folder.mkdir()
    (dead / "workers").write_text("")
    link = tmp_path / f"{RUN_DIR_PREFIX}{never_a_pid()}-link"
    link.symlink_to(other)

    assert remove_stale_run_dirs(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, link.name])


def test_a_missing_folder_is_no_error(tmp_path: Path) -> None:
    assert remove_stale_run_dirs(tmp_path / "nothing") == []
