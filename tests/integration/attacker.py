"""What a second unix user of the host tries against Porch (test_local_attacker.py runs it).

Standard library only: it runs under another user's system Python, copied to a folder that
user can read (the checkout and its virtualenv may be closed to it). The test prepares every
payload (beacons, ZMTP frames, pickles) and passes them as files; this script only does the
socket and file work an attacker would, and prints what it saw as one JSON object.

    attacker.py zmtp PORT FRAMES.json      NULL-mechanism ZeroMQ peer: greet, READY, send
    attacker.py bind PORT                  try to share the discovery port every way
    attacker.py beacon PORT LISTEN DATA    send a forged beacon, count who connects to LISTEN
    attacker.py flood PORT SECONDS DATA... send these datagrams in a loop
    attacker.py http URL...                GET each URL, report the status codes
    attacker.py read PATH                  try to read a file
    attacker.py plant FOLDER NAME BLOB     an outbox database holding BLOB under FOLDER
    attacker.py unix PATH FRAMES.json      a worker's Unix socket: connect, list, replace, squat
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

TIMEOUT_S = 5.0


def _greeting() -> bytes:
    """ZMTP 3.0: signature, version 3.0, mechanism NULL, as-server 0, filler."""
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def _frame(body: bytes, flags: int) -> bytes:
    if len(body) < 256:
        return bytes((flags, len(body))) + body
    return bytes((flags | 0x02,)) + len(body).to_bytes(8, "big") + body


def _ready() -> bytes:
    prop = bytes((11,)) + b"Socket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    return _frame(bytes((5,)) + b"READY" + prop, 0x04)


def _read_some(sock: socket.socket, wait_s: float) -> tuple[bytes, bool]:
    """What the server sends within `wait_s`, and whether it closed the connection."""
    got = b""
    deadline = time.monotonic() + wait_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def zmtp(port: int, frames_file: str) -> dict[str, object]:
    """Connect as a ZeroMQ DEALER without any key and send the given messages."""
    messages = [[bytes.fromhex(f) for f in m] for m in json.loads(Path(frames_file).read_text())]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        # As libzmq does: signature and major version first, read the server's greeting
        # (it names the server's mechanism), then the rest of ours.
        sock.sendall(_greeting()[:11])
        greeting, closed = _read_some(sock, 0.5)
        sock.sendall(_greeting()[11:])
        mechanism = greeting[12:32].rstrip(b"\x00").decode(errors="replace")
        sent = 0
        try:
            sock.sendall(_ready())
            for message in messages:
                for i, part in enumerate(message):
                    sock.sendall(_frame(part, 0x01 if i < len(message) - 1 else 0x00))
                sent += 1
        except OSError:
            pass
        rest, closed = _read_some(sock, 1.0)
    return {"server_mechanism": mechanism, "server_ready": b"READY" in greeting + rest,
            "sent": sent, "closed": closed}  # fmt: skip


def bind(port: int) -> dict[str, object]:
    """Every way a user might try to share (or shadow) a UDP port."""
    results = {}
    options = {"reuseaddr": [socket.SO_REUSEADDR], "reuseport": [socket.SO_REUSEPORT],
               "both": [socket.SO_REUSEADDR, socket.SO_REUSEPORT]}  # fmt: skip
    for address in ("", "127.0.0.1"):
        for name, opts in options.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for opt in opts:
                sock.setsockopt(socket.SOL_SOCKET, opt, 1)
            try:
                sock.bind((address, port))
                results[f"{address or '*'}/{name}"] = "bound"
            except OSError as exc:
                results[f"{address or '*'}/{name}"] = exc.strerror or str(exc)
            sock.close()
    return results


def beacon(port: int, listen_port: int, data_file: str) -> dict[str, object]:
    """Announce a forged beacon (pointing at our own TCP port) and count who connects."""
    data = Path(data_file).read_bytes()
    accepted = 0
    with socket.create_server(("127.0.0.1", listen_port)) as server:
        server.settimeout(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                udp.sendto(data, ("127.0.0.1", port))
                try:
                    conn, _ = server.accept()
                    accepted += 1
                    conn.close()
                except TimeoutError:
                    pass
    return {"accepted": accepted}


def flood(port: int, seconds: float, files: list[str]) -> dict[str, object]:
    """Send these datagrams to the port, round and round, for `seconds`."""
    payloads = [Path(f).read_bytes() for f in files]
    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        while time.monotonic() < deadline:
            try:
                udp.sendto(payloads[sent % len(payloads)], ("127.0.0.1", port))
                sent += 1
            except OSError:
                time.sleep(0.001)
    return {"sent": sent}


def http(urls: list[str]) -> dict[str, object]:
    """GET each URL; the status code (or the error) of each."""
    codes: dict[str, object] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
                codes[url] = reply.status
        except urllib.error.HTTPError as exc:
            codes[url] = exc.code
        except OSError as exc:
            codes[url] = str(exc)
    return codes


def read(path: str) -> dict[str, object]:
    """Try to read a file; the error class when we may not."""
    try:
        return {"read": len(Path(path).read_bytes()), "error": None}
    except OSError as exc:
        return {"read": 0, "error": type(exc).__name__}


def plant(folder: str, name: str, blob_file: str) -> dict[str, object]:
    """What a durable outbox left behind, with our pickle in it, where root's will be looked for."""
    outbox = Path(folder) / "run" / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    for made in (outbox.parent, outbox):
        os.chmod(made, 0o755)
    db = sqlite3.connect(str(outbox / f"{name}.sqlite"))
    db.execute("CREATE TABLE IF NOT EXISTS outbox (target TEXT NOT NULL, seq INTEGER NOT NULL, "
               "payload BLOB NOT NULL, PRIMARY KEY (target, seq))")  # fmt: skip
    db.execute("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?)",
               ("victim_sink", 1, Path(blob_file).read_bytes()))  # fmt: skip
    db.commit()
    db.close()
    os.chmod(outbox / f"{name}.sqlite", 0o644)
    return {"planted": str(outbox / f"{name}.sqlite")}


def _try(action: Callable[[], object]) -> str:
    """Run `action`: "ok", or the class of the error it raised."""
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"


def unix(path: str, frames_file: str) -> dict[str, object]:
    """Everything another user could try on a worker's ipc:// socket in its supervisor's run
    folder: send it ZMTP and pickles, list the folder, plant a file or a symlink there, remove
    or rename the socket, bind our own socket in its place (a squatter after a restart)."""
    messages = [[bytes.fromhex(f) for f in m] for m in json.loads(Path(frames_file).read_text())]
    folder = os.path.dirname(path)

    def connect_and_send() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT_S)
            sock.connect(path)
            sock.sendall(_greeting() + _ready())
            for message in messages:
                for i, part in enumerate(message):
                    sock.sendall(_frame(part, 0x01 if i < len(message) - 1 else 0))

    def squat() -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path + ".new")
            os.rename(path + ".new", path)

    return {
        "connect": _try(connect_and_send),
        "list": _try(lambda: os.listdir(folder)),
        "create": _try(lambda: Path(folder, "planted").write_bytes(b"x")),
        "symlink": _try(lambda: os.symlink("/tmp", os.path.join(folder, "link"))),
        "unlink": _try(lambda: os.unlink(path)),
        "rename": _try(lambda: os.rename(folder, folder + ".moved")),
        "squat": _try(squat),
    }


def main(argv: list[str]) -> dict[str, object]:
    """Dispatch one command."""
    command, args = argv[0], argv[1:]
    if command == "zmtp":
        return zmtp(int(args[0]), args[1])
    if command == "bind":
        return bind(int(args[0]))
    if command == "beacon":
        return beacon(int(args[0]), int(args[1]), args[2])
    if command == "flood":
        return flood(int(args[0]), float(args[1]), args[2:])
    if command == "http":
        return http(args)
    if command == "read":
        return read(args[0])
    if command == "plant":
        return plant(args[0], args[1], args[2])
    if command == "unix":
        return unix(args[0], args[1])
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    result = main(sys.argv[1:])
    result["uid"] = os.geteuid()
    print(json.dumps(result))
