"""Links between one supervisor's pipelines over ipc:// (porch/localsock.py), in-process: where
a worker's Unix socket may live, and that only it, not the TCP listeners, goes without CURVE."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from structlog.testing import capture_logs

from porch.errors import UsageError
from porch.localsock import (
    MAX_SOCKET_PATH,
    NAME_MAX,
    LocalUnavailable,
    folder_problem,
    local_links_enabled,
    remove_socket,
    socket_name,
    socket_path,
    too_long,
)
from porch.security import KeyRing, LinkSecurity, new_key
from porch.wire import FrameKind, HeaderEncoder, decode_ack, decode_prefix
from workers.links import InputLink, LinkSettings, OutputLink

pytestmark = pytest.mark.timeout(30)

Context = zmq.Context[zmq.Socket[bytes]]
DEADLINE_S = 10.0


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A run folder as the supervisor makes it (mkdtemp: 0700), with a short path."""
    folder = Path(tempfile.mkdtemp(prefix="porch-run-test-"))
    yield folder
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()


def until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def bound_unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


# ---- where the socket may live ------------------------------------------------------------


def test_a_private_run_folder_gives_a_path_in_it(run_dir: Path) -> None:
    assert socket_path(run_dir, "1-a.in") == run_dir / "1-a.in"


def test_a_folder_open_to_others_or_a_symlink_to_one_is_refused(
    run_dir: Path, tmp_path: Path
) -> None:
    run_dir.chmod(0o750)
    with pytest.raises(LocalUnavailable, match="mode 0700"):
        socket_path(run_dir, "1-a.in")
    run_dir.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(run_dir)
    with pytest.raises(LocalUnavailable, match="not a folder of this user"):
        socket_path(link, "1-a.in")


def test_a_folder_whose_parent_others_may_write_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)  # not sticky: another user could rename our folder away
    folder = parent / "run"
    folder.mkdir(mode=0o700)
    with pytest.raises(LocalUnavailable, match="writable by other users"):
        socket_path(folder, "1-a.in")
    problem = folder_problem(folder)  # the supervisor finds it once, before any worker
    assert problem is not None and "writable by other users" in problem


def test_a_path_too_long_for_a_unix_socket_is_refused(run_dir: Path) -> None:
    name = "x" * (MAX_SOCKET_PATH - len(os.fsencode(run_dir)))  # one byte too many
    with pytest.raises(LocalUnavailable, match=f"at most {MAX_SOCKET_PATH}"):
        socket_path(run_dir, name)
    assert socket_path(run_dir, name[1:]) == run_dir / name[1:]


def test_a_run_folder_too_long_for_every_socket_name_is_known_before_any_worker_starts(
    run_dir: Path,
) -> None:
    longest = socket_name(4_194_304, 2**63 - 1)  # Linux's largest pid
    assert len(longest) == NAME_MAX and socket_name(7, 1) == "7-00000001.in"
    assert too_long(run_dir) is None and folder_problem(run_dir) is None
    deep = Path("/" + "d" * (MAX_SOCKET_PATH - NAME_MAX - 2))  # "/d..d/" + name: 107 bytes
    assert too_long(deep) is None
    problem = too_long(Path(str(deep) + "d"))
    assert problem is not None and f"at most {MAX_SOCKET_PATH}" in problem


def test_a_file_at_the_path_is_refused_unless_it_is_our_own_socket(run_dir: Path) -> None:
    (run_dir / "file.in").write_bytes(b"")
    (run_dir / "link.in").symlink_to(run_dir / "file.in")
    for name in ("file.in", "link.in"):
        with pytest.raises(LocalUnavailable, match="not a socket of this user"):
            socket_path(run_dir, name)
    bound_unix_socket(run_dir / "stale.in")  # a worker of ours killed with kill -9
    assert socket_path(run_dir, "stale.in") == run_dir / "stale.in"


def test_a_dead_workers_socket_is_removed_only_in_our_folder(run_dir: Path, tmp_path: Path) -> None:
    bound_unix_socket(run_dir / "dead.in")
    elsewhere = tmp_path / "other.in"
    bound_unix_socket(elsewhere)
    (run_dir / "file.in").write_bytes(b"")
    remove_socket(f"ipc://{elsewhere}", run_dir)
    remove_socket(f"ipc://{run_dir / 'file.in'}", run_dir)
    remove_socket("tcp://127.0.0.1:1", run_dir)
    remove_socket(None, run_dir)
    assert elsewhere.exists() and (run_dir / "file.in").exists()
    remove_socket(f"ipc://{run_dir / 'dead.in'}", run_dir)
    assert not (run_dir / "dead.in").exists()


def test_porch_local_links_is_ipc_by_default_tcp_on_request_and_else_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PORCH_LOCAL_LINKS", raising=False)
    assert local_links_enabled()
    monkeypatch.setenv("PORCH_LOCAL_LINKS", "TCP")
    assert not local_links_enabled()
    monkeypatch.setenv("PORCH_LOCAL_LINKS", "unix")
    with pytest.raises(UsageError, match="PORCH_LOCAL_LINKS='unix': must be 'ipc'"):
        local_links_enabled()


# ---- only the Unix socket goes without CURVE ------------------------------------------------


def test_the_unix_socket_takes_plain_zmtp_while_tcp_stays_curve(
    ctx: Context, run_dir: Path
) -> None:
    security = LinkSecurity(KeyRing((new_key(),)))
    security.start_authenticator(ctx)
    link = InputLink(ctx, "127.0.0.1", 16, security, run_dir / "1-a.in")
    try:
        assert link.local_endpoint == f"ipc://{run_dir}/1-a.in"
        assert link.endpoints == [link.endpoint] and link.endpoint.startswith("tcp://")
        received: list[list[Any]] = []
        for endpoint, payload in ((link.endpoint, b"over tcp"), (link.local_endpoint, b"ipc")):
            plain = ctx.socket(zmq.DEALER)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(endpoint)
            plain.send(payload)
            if endpoint == link.local_endpoint:
                received = until(lambda: link.receive(4), "the plain message over ipc")
            plain.close()
        assert [m[1] for m in received] == [b"ipc"]
        assert link.receive(4) == [], "a plain peer got through on TCP"
        sender = ctx.socket(zmq.DEALER)  # a CURVE client of the key still gets in on TCP
        sender.setsockopt(zmq.LINGER, 0)
        security.client(sender)
        sender.connect(link.endpoint)
        sender.send(b"curve")
        assert [m[1] for m in until(lambda: link.receive(4), "the CURVE message")] == [b"curve"]
        sender.close()
    finally:
        link.close()
        security.stop()


def test_a_unix_socket_that_cannot_be_bound_leaves_tcp_only_and_says_so(
    ctx: Context, tmp_path: Path
) -> None:
    with capture_logs() as logged:
        link = InputLink(ctx, "127.0.0.1", 16, None, tmp_path / "missing" / "1-a.in")
    try:
        assert link.local_endpoint is None and link.endpoint.startswith("tcp://")
        [event] = [e for e in logged if e["event"] == "local_link_unavailable"]
        assert event["path"] == str(tmp_path / "missing" / "1-a.in"), event
    finally:
        link.close()


def test_an_output_link_to_a_unix_socket_connects_without_curve(
    ctx: Context, run_dir: Path
) -> None:
    security = LinkSecurity(KeyRing((new_key(),)))
    security.start_authenticator(ctx)
    target = InputLink(ctx, "127.0.0.1", 16, security, run_dir / "2-b.in")
    headers = HeaderEncoder(1, 7, "src")
    link = OutputLink(ctx, "sink", headers, LinkSettings(), security=security)
    try:
        assert target.local_endpoint is not None
        link.connect(target.local_endpoint, 9, security.key_id)
        assert link.socket is not None
        assert link.socket.getsockopt(zmq.MECHANISM) == zmq.NULL
        link.offer(FrameKind.DATA, [b"x" * 20_000])  # large enough to travel alone
        got = until(lambda: target.receive(4), "the hello and the value")
        while len(got) < 2:
            got += until(lambda: target.receive(4), "the value")
        kinds = [decode_prefix(m[1])[0].kind for m in got]
        assert kinds == [FrameKind.HELLO, FrameKind.DATA]
        target.ack(got[1][0], HeaderEncoder(0, 9, "sink").encode(FrameKind.ACK, 1))
        until(lambda: link.read_acks(decode_ack) or link.delivered, "the ack over ipc")
    finally:
        link.close(linger_ms=0)
        target.close()
        security.stop()
