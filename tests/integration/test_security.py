"""The cluster key end to end: `porch keygen`, keyed runs and daemons that link over CURVE,
a daemon with another key that can neither be heard nor connect, key rotation, the refusal to
leave loopback without a key, and porchctl from another unix user."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import porch
from porch.security import KeyRing, new_key, read_keyring, write_keyring
from tests.integration.conftest import PORCH, REPO_ROOT, Porchd, PorchRun
from tests.integration.test_discovery import COUNTER, counter, pipeline, printer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

StartRun = Callable[..., PorchRun]
StartDaemon = Callable[..., Porchd]
WAIT_S = 20.0


def keyfile(path: Path, ring: KeyRing | None = None) -> str:
    write_keyring(path, ring or KeyRing((new_key(),)), replace=True)
    return str(path)


def discovery(daemon: Porchd) -> dict[str, object]:
    found: dict[str, object] = daemon.status()["daemon"]["discovery"]
    return found


def test_keygen_writes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"

    def keygen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PORCH), "keygen", str(path), *args], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip

    assert keygen().returncode == 0 and (path.stat().st_mode & 0o777) == 0o600
    first = read_keyring(path)
    again = keygen()
    assert again.returncode != 0 and "--force" in again.stderr
    assert read_keyring(path) == first
    assert keygen("--add").returncode == 0 and len(read_keyring(path).keys) == 2
    assert keygen("--promote").returncode == 0
    assert read_keyring(path).current.id != first.current.id
    assert keygen("--force").returncode == 0 and read_keyring(path).current.id != first.current.id


def test_keyed_runs_link_over_curve(tmp_path: Path, porch_cli: StartRun) -> None:
    key = keyfile(tmp_path / "k.key")
    sink = porch_cli("run", printer(tmp_path / "b", "keyed_sink", "keyed_src"), "--key-file", key)
    source = porch_cli("run", counter(tmp_path / "a", "keyed_src", "keyed_sink"),
                       "--iterations", "5", "--key-file", key)  # fmt: skip
    assert source.wait_exit(WAIT_S) == 0, source.report()
    assert sink.wait_exit(WAIT_S) == 0, sink.report()
    assert sink.lines_of("keyed_sink") == [f"got {n}" for n in range(1, 6)]


def test_a_daemon_with_another_key_is_not_heard_and_cannot_send(
    tmp_path: Path, porchd: StartDaemon
) -> None:
    good = porchd(printer(tmp_path / "c1", "vault", "thief"), home=tmp_path / "d1",
                  extra=("--key-file", keyfile(tmp_path / "good.key")))  # fmt: skip
    bad = porchd(counter(tmp_path / "c2", "thief", "vault"), home=tmp_path / "d2",
                 extra=("--key-file", keyfile(tmp_path / "bad.key")))  # fmt: skip
    good.wait_running()
    good.wait_until(lambda: discovery(good)["rejected"]["unknown_key"] >= 2,  # type: ignore[index]
                    WAIT_S, "the other key's beacons rejected")  # fmt: skip
    bad.wait_until(lambda: bad.pipeline("thief")["iterations"] >= 20, WAIT_S, "thief running")
    status = good.status()
    assert [r for r in status["remote"] if r["name"] == "thief"] == []
    assert good.pipeline("vault", status)["msgs_in"] == 0 and good.output("vault") == []
    assert "unknown_key" in good.ctl("status").stdout  # the table's discovery line says why


def test_rotation_window_old_and_new_key_work_together(tmp_path: Path, porchd: StartDaemon) -> None:
    """Step 1 on one host (new key accepted), step 2 on the other (new key current)."""
    added = KeyRing((new_key(),)).add()
    promoted = added.promote()
    d1 = porchd(printer(tmp_path / "c1", "rot_sink", "rot_src"), home=tmp_path / "d1",
                extra=("--key-file", keyfile(tmp_path / "added.key", added)))  # fmt: skip
    porchd(counter(tmp_path / "c2", "rot_src", "rot_sink"), home=tmp_path / "d2",
           extra=("--key-file", keyfile(tmp_path / "promoted.key", promoted)))  # fmt: skip
    d1.wait_running()
    d1.wait_until(lambda: len(d1.output("rot_sink")) >= 5, WAIT_S, "data across the rotation")
    assert d1.output("rot_sink")[:5] == [f"got {n}" for n in range(1, 6)]
    assert discovery(d1)["key_ids"] == list(added.ids)


def test_leaving_loopback_without_a_key_says_how_to_make_one(
    tmp_path: Path, porch_cli: StartRun
) -> None:
    config = counter(tmp_path, "lonely", "nobody", sleep_s=0.2)
    run = porch_cli("run", config, "--peer", "198.51.100.7:5557")
    assert run.wait_exit(WAIT_S) == 2, run.report()
    text = "\n".join(run.stderr)
    assert "porch keygen" in text and "--key-file" in text and "--insecure" in text, text
    # with a key the same peer is allowed, no --insecure needed (a source without targets: one
    # that waits for a missing target would not end by itself)
    alone = pipeline(tmp_path / "alone", "lonely", COUNTER.format(sleep_s=0.05))
    keyed = porch_cli("run", alone, "--peer", "198.51.100.7:5557", "--no-broadcast",
                      "--key-file", keyfile(tmp_path / "k.key"), "--iterations", "2")  # fmt: skip
    assert keyed.wait_exit(WAIT_S) == 0, keyed.report()


def test_an_open_key_file_is_refused(tmp_path: Path, porch_cli: StartRun) -> None:
    key = keyfile(tmp_path / "k.key")
    os.chmod(key, 0o644)
    run = porch_cli("run", counter(tmp_path, "opened", "nobody"), "--key-file", key)
    assert run.wait_exit(WAIT_S) == 2, run.report()
    assert any("chmod 600" in line for line in run.stderr), run.report()


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("checking porchctl as another user needs root; CI=true requires it")
        pytest.skip("checking porchctl as another user needs root")
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return ["runuser", "-u", "nobody", "--"]


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder in /tmp that every user may enter and read (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="porch-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _porchctl_for_anyone(folder: Path) -> list[str]:
    """porchctl as a command another user can run wherever this checkout lives: the packages it
    imports are copied into `folder`, run by the base interpreter (not the venv's link)."""
    lib = folder / "lib"
    lib.mkdir()
    probe = (
        "import sys, porch.porchctl\nfor m in list(sys.modules.values()): "
        "print(getattr(m, '__file__', None))"
    )
    files = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True, timeout=30).stdout.split()  # fmt: skip
    roots = {Path(p) for p in site.getsitepackages()} | {Path(porch.__file__).parents[1]}
    for source in sorted({_top_level(Path(f), roots) for f in files} - {None, REPO_ROOT / ".venv"}):
        if not (lib / source.name).exists():
            shutil.copytree(source, lib / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    for packages in site.getsitepackages():  # compiled dependencies' own libraries (pyzmq.libs)
        for libs in Path(packages).glob("*.libs"):
            shutil.copytree(libs, lib / libs.name, dirs_exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    python = os.path.realpath(sys.executable)
    return [python, "-s", "-c", "from porch.porchctl import main; main()"]


def _top_level(path: Path, roots: set[Path]) -> Path | None:
    """The top-level package folder of a module under site-packages or the checkout, if any."""
    for root in sorted(roots, key=lambda r: len(r.parts), reverse=True):  # a venv in a checkout
        if root in path.parents and len(path.relative_to(root).parts) > 1:
            return root / path.relative_to(root).parts[0]
    return None


def test_porchctl_of_another_user_is_refused(
    tmp_path: Path, porchd: StartDaemon, open_folder: Path
) -> None:
    # Everything up to porchd's socket is open to `nobody`, so only porchd's protection of its
    # socket can refuse it, wherever the checkout and pytest's (0700) tmp_path live.
    prefix = _as_nobody()
    porchctl = _porchctl_for_anyone(open_folder)
    env = {**os.environ, "HOME": "/", "PYTHONPATH": str(open_folder / "lib")}
    runs = subprocess.run([*prefix, *porchctl, "--version"], capture_output=True, text=True,
                          timeout=30, check=False, env=env, cwd="/")  # fmt: skip
    if runs.returncode != 0:
        pytest.skip(f"nobody cannot run {porchctl[0]} here: {runs.stderr.strip()[-200:]}")
    daemon = porchd(printer(tmp_path / "c", "private_sink", "nobody_src"), home=open_folder / "d")
    daemon.wait_running()
    # the socket's folder is open (0755): only the socket's own mode (0600) can refuse nobody
    assert daemon.control.stat().st_mode & 0o777 == 0o600
    done = subprocess.run([*prefix, *porchctl, "--control", str(daemon.control), "status"],
                          capture_output=True, text=True, timeout=30, check=False, env=env,
                          cwd="/")  # fmt: skip
    assert done.returncode != 0, done
    assert "permission denied" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert daemon.ctl("status").returncode == 0  # its owner still gets in


def test_a_tmpdir_too_long_for_unix_sockets_puts_the_run_folder_in_tmp_and_links_stay_local(
    tmp_path: Path,
) -> None:
    """One porch run's pipelines link over Unix sockets in its run folder ($TMPDIR/porch-run-*);
    a socket path holds at most 107 bytes. With a $TMPDIR long enough that the workers' sockets
    would not fit there, the run folder goes to /tmp instead (before, the links fell back to
    TCP, and a deeper TMPDIR made porchd die on its own worker socket): the pipelines still
    link over Unix sockets, nothing says local links are unavailable, every value arrives."""
    deep = Path(tempfile.mkdtemp(prefix="porch-deep-"))
    try:
        tmpdir = deep / ("d" * (72 - len(str(deep)) - 1))  # run folder there: 92 to 99 bytes
        tmpdir.mkdir(mode=0o700)
        env = {**os.environ, "TMPDIR": str(tmpdir), "PORCH_STATE_DIR": str(tmp_path / "state"),
               "PORCH_LOG_FORMAT": "json"}  # fmt: skip
        env.pop("PORCH_LOCAL_LINKS", None)
        configs = [counter(tmp_path, "deep_src", "deep_sink", sleep_s=0.01),
                   printer(tmp_path, "deep_sink", "deep_src")]  # fmt: skip
        run = PorchRun(["run", *configs, "--iterations", "5"], env)
        try:
            code = run.wait_exit(WAIT_S)
        finally:
            run.kill()
        assert code == 0, run.report()
        assert run.lines_of("deep_sink") == [f"got {n}" for n in range(1, 6)], run.report()
        assert not [line for line in run.stderr if "local_links_unavailable" in line], run.report()
        assert not list(tmpdir.glob("porch-run-*")), "the run folder was made in the long TMPDIR"
    finally:
        shutil.rmtree(deep, ignore_errors=True)
