"""Stale run folders: only this user's, only when their supervisor is gone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from porch.reaper import RUN_DIR_PREFIX, make_run_dir, remove_stale_run_dirs

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


def test_a_temp_folder_too_long_for_socket_paths_puts_run_folders_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_tmp = tmp_path / ("d" * 60)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    run_dir = make_run_dir()
    try:
        assert run_dir.parent == Path("/tmp")
        assert len(os.fsencode(run_dir / "workers")) <= 107
    finally:
        run_dir.rmdir()
    short_tmp = Path(tempfile.mkdtemp(dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    short = make_run_dir()
    assert short.parent == short_tmp
    short.rmdir()
    short_tmp.rmdir()
