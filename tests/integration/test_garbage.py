"""Garbage on a worker's data port is dropped and counted; the pipeline keeps running.

Without a cluster key the links are CURVE with the user's local secret: a stranger's bytes never
get past the handshake (test_local_attacker.py), so the garbage here comes from a peer that
holds the secret (this test runs as the same user): what a buggy member could send."""

from __future__ import annotations

import json
import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import zmq

from porch.security import LinkSecurity, local_keyring
from porch.wire import FrameKind, encode_header
from tests.integration.conftest import PorchRun, is_worker_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class _Exploit:
    """Unpickling this creates a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _listening_port(run: PorchRun, config: Path) -> int:
    for child in psutil.Process(run.proc.pid).children(recursive=True):
        if is_worker_of(child, config):
            ports = [c.laddr.port for c in child.net_connections("tcp") if c.status == "LISTEN"]
            if ports:
                return ports[0]
    raise AssertionError(f"no listening worker for {config}\n{run.report()}")


def _write(folder: Path) -> tuple[Path, Path]:
    (folder / "gen.py").write_text(
        "import time\nn = 0\ndef step():\n    global n\n    n += 1\n    time.sleep(0.02)\n"
        "    return n\n"
    )
    (folder / "show.py").write_text("def step(d):\n    print('got', d['generator'])\n")
    src = folder / "gen.json"
    src.write_text(
        json.dumps(
            {"name": "generator", "scripts": ["gen.py"], "target_pipeline_names": ["shower"]}
        )
    )
    sink = folder / "show.json"
    sink.write_text(
        json.dumps({"name": "shower", "scripts": ["show.py"], "source_pipeline_count": 1})
    )
    return src, sink


def _send_garbage(port: int, exploit: Path) -> None:
    for size in (1, 64, 4096):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(os.urandom(size))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 2000
    _, ring = local_keyring(Path(os.environ["PORCH_STATE_DIR"]))
    LinkSecurity(ring).client(dealer)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"short")
    dealer.send(b"\x09" + os.urandom(40))  # wrong wire version
    dealer.send_multipart([encode_header(FrameKind.DATA, 1, 7, 1, "generator"), b"\x80not pickle"])
    intruder = encode_header(FrameKind.DATA, 1, 7, 1, "intruder")
    dealer.send_multipart([intruder, pickle.dumps(_Exploit(exploit))])
    dealer.close()
    ctx.term()


def test_garbage_is_dropped_counted_and_never_unpickled_from_strangers(
    tmp_path: Path, porch_cli: Callable[..., PorchRun]
) -> None:
    src, sink = _write(tmp_path)
    run = porch_cli("run", str(src), str(sink))
    run.wait_for_line("shower", "got 3", 20)
    exploit = tmp_path / "exploited"
    _send_garbage(_listening_port(run, sink), exploit)

    def dropped() -> int:
        return sum("bad_frame_dropped" in line for line in run.stderr)

    run.wait_until(lambda: dropped() >= 3, 15, "three bad frames reported")
    seen = len(run.lines_of("shower"))
    run.wait_until(lambda: len(run.lines_of("shower")) >= seen + 10, 15, "the stream to go on")
    run.interrupt()
    assert run.wait_exit(15) == 0, run.report()
    assert not exploit.exists(), "a payload from an unexpected sender was unpickled"
    values = [int(line.split()[1]) for line in run.lines_of("shower")]
    assert values == list(range(1, len(values) + 1)), "garbage must not disturb the real stream"
    assert any("unexpected source 'intruder'" in line for line in run.stderr), run.report()
