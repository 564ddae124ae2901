"""Where porchd puts its socket and files: env vars, root and user defaults, per-daemon folders."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from porch import paths
from porch.errors import UsageError

pytestmark = pytest.mark.timeout(30)

ENV = (
    "PORCH_RUNTIME_DIR",
    "PORCH_STATE_DIR",
    "PORCH_CONTROL",
    "XDG_RUNTIME_DIR",
    "XDG_STATE_HOME",
)
REAL_UID = os.geteuid()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No porch or XDG variables, a fake home, a normal user, in an empty folder."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    as_user(monkeypatch, 1000)


def as_user(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    monkeypatch.setattr(os, "getuid", lambda: uid)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Runtime folder and control socket


def test_runtime_dir_prefers_porch_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_RUNTIME_DIR", "/srv/porch-run")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert paths.runtime_dir() == Path("/srv/porch-run")


def test_runtime_dir_then_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert paths.runtime_dir() == Path("/run/user/1000/porch")


def test_runtime_dir_for_root_is_run_porch(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 0)
    assert paths.runtime_dir() == Path("/run/porch")


def test_runtime_dir_for_a_user_without_xdg_is_in_tmp() -> None:
    assert paths.runtime_dir() == Path("/tmp/porch-1000")


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_RUNTIME_DIR", "")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert paths.runtime_dir() == Path("/tmp/porch-1000")


def test_relative_runtime_dir_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PORCH_RUNTIME_DIR", "run")
    assert paths.runtime_dir() == tmp_path / "run"


def test_default_control_is_in_the_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_RUNTIME_DIR", "/srv/r")
    assert paths.default_control() == Path("/srv/r/porchd.sock")


def test_control_address_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_RUNTIME_DIR", "/srv/r")
    assert paths.control_address(None) == (Path("/srv/r/porchd.sock"), "ipc:///srv/r/porchd.sock")


def test_control_address_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_CONTROL", "ipc:///srv/other.sock")
    assert paths.control_address(None) == (Path("/srv/other.sock"), "ipc:///srv/other.sock")


def test_control_address_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_CONTROL", "/srv/env.sock")
    assert paths.control_address("/srv/flag.sock")[0] == Path("/srv/flag.sock")


@pytest.mark.parametrize("value", ["/srv/x.sock", "ipc:///srv/x.sock", "/srv/sub/../x.sock"])
def test_control_address_accepts_paths_and_ipc(value: str) -> None:
    assert paths.control_address(value) == (Path("/srv/x.sock"), "ipc:///srv/x.sock")


def test_relative_control_path_is_made_absolute(tmp_path: Path) -> None:
    for value in ("my.sock", "ipc://my.sock"):
        path, address = paths.control_address(value)
        assert path == tmp_path / "my.sock"
        assert address == f"ipc://{tmp_path}/my.sock"


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:5555", "ipc://", ""])
def test_control_address_rejects_other_transports(value: str) -> None:
    with pytest.raises(UsageError, match="control"):
        paths.control_address(value)


# State folder


def test_state_dir_prefers_porch_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_STATE_DIR", "/srv/state")
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/xdg")
    assert paths.state_dir(paths.default_control()) == Path("/srv/state/default")


def test_state_dir_for_root_is_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 0)
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/xdg")
    assert paths.state_dir(paths.default_control()) == Path("/var/lib/porch/default")


def test_state_dir_for_a_user_is_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/xdg")
    assert paths.state_dir(paths.default_control()) == Path("/srv/xdg/porch/default")


def test_state_dir_falls_back_to_local_state(tmp_path: Path) -> None:
    expected = tmp_path / "home" / ".local" / "state" / "porch" / "default"
    assert paths.state_dir(paths.default_control()) == expected


def test_default_daemon_follows_the_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_STATE_DIR", "/srv/state")
    monkeypatch.setenv("PORCH_RUNTIME_DIR", "/srv/r")
    assert paths.state_dir(Path("/srv/r/porchd.sock")).name == "default"
    assert paths.state_dir(Path("/srv/r/../r/porchd.sock")).name == "default"


def test_other_control_paths_get_their_own_subfolder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_STATE_DIR", "/srv/state")
    one = paths.state_dir(Path("/srv/a.sock"))
    two = paths.state_dir(Path("/srv/b.sock"))
    assert one != two
    assert one.parent == two.parent == Path("/srv/state")
    digest = hashlib.sha256(b"/srv/a.sock").hexdigest()[:10]
    assert one.name == f"ctl-{digest}"


def test_one_socket_one_state_dir_however_it_is_spelled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spellings = ["x.sock", "./x.sock", f"ipc://{tmp_path}/x.sock", f"{tmp_path}/sub/../x.sock"]
    dirs = {paths.state_dir(paths.control_address(value)[0]) for value in spellings}
    assert len(dirs) == 1


def test_log_dir_is_inside_the_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORCH_STATE_DIR", "/srv/state")
    assert paths.log_dir(paths.default_control()) == Path("/srv/state/default/logs")


# Private folders


@pytest.fixture
def real_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back to the user running the tests, who owns what tmp_path holds."""
    as_user(monkeypatch, REAL_UID)


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_creates_parents_with_mode_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert paths.ensure_private_dir(target) == target
    assert target.is_dir()
    assert mode_of(target) == 0o700


def needs_root() -> None:
    if REAL_UID != 0:
        pytest.skip("giving a file to another user needs root")


@pytest.mark.usefixtures("real_user")
@pytest.mark.parametrize("mode", [0o755, 0o700, 0o1777])
def test_ensure_private_dir_never_changes_the_mode_of_a_folder_it_finds(
    tmp_path: Path, mode: int
) -> None:
    """`--control /tmp/x.sock` used to turn /tmp into 0700: a found folder is used as it is."""
    target = tmp_path / "found"
    target.mkdir()
    target.chmod(mode)
    assert paths.ensure_private_dir(target) == target
    assert mode_of(target) == mode


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_refuses_a_folder_others_may_write_without_sticky_bit(
    tmp_path: Path,
) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    with pytest.raises(paths.UnsafePathError, match=r"open: writable by other users.*sticky"):
        paths.ensure_private_dir(target)
    with pytest.raises(paths.UnsafePathError, match="open: writable"):
        paths.ensure_private_dir(target / "sub")  # nor a new folder inside it
    assert mode_of(target) == 0o777 and not (target / "sub").exists()


@pytest.mark.usefixtures("real_user")
def test_a_group_writable_folder_is_fine_only_when_the_group_is_this_users_alone(
    tmp_path: Path,
) -> None:
    needs_root()
    home = tmp_path / "home"  # user-private groups: homes are often 0775
    home.mkdir()
    home.chmod(0o775)
    assert paths.ensure_private_dir(home / "porch").is_dir()
    os.chown(home, -1, 4242)  # a group this user is not alone in (here: unknown)
    with pytest.raises(paths.UnsafePathError, match="home: writable by other users"):
        paths.ensure_private_dir(home / "other")


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_makes_a_private_subfolder_of_a_sticky_folder(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    made = paths.ensure_private_dir(shared / "porch-1000")
    assert mode_of(made) == 0o700 and mode_of(shared) == 0o1777


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_refuses_a_folder_of_another_user(tmp_path: Path) -> None:
    needs_root()
    target = tmp_path / "planted"
    target.mkdir(mode=0o700)
    os.chown(target, 4242, 4242)
    with pytest.raises(paths.UnsafePathError, match="planted: owned by uid 4242"):
        paths.ensure_private_dir(target)


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_refuses_a_symlink_planted_by_another_user(tmp_path: Path) -> None:
    needs_root()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    os.lchown(link, 4242, 4242)
    with pytest.raises(paths.UnsafePathError, match="link: a symlink owned by uid 4242"):
        paths.ensure_private_dir(link)


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(OSError):
        paths.ensure_private_dir(target)


@pytest.mark.usefixtures("real_user")
def test_ensure_private_dir_accepts_a_symlink_to_an_own_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert paths.ensure_private_dir(link) == link
    assert mode_of(real) == 0o750


@pytest.mark.usefixtures("real_user")
def test_open_private_file_refuses_symlinks_and_files_of_others(tmp_path: Path) -> None:
    needs_root()
    planted = tmp_path / "planted.sqlite"
    planted.write_bytes(b"x")
    os.chown(planted, 4242, 4242)
    with pytest.raises(paths.UnsafePathError, match=r"planted\.sqlite: not a regular file of this"):
        paths.open_private_file(planted, os.O_RDONLY)
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(paths.UnsafePathError, match=r"link\.jsonl: is a symlink"):
        paths.open_private_file(link, os.O_WRONLY | os.O_CREAT)
    assert not (tmp_path / "elsewhere").exists()
