"""porchd's HTTP side: the dashboard page, its JSON API and Prometheus metrics.

A ThreadingHTTPServer on its own thread serves what porchd's loop last published (a snapshot
replaced whole every ~0.5 s, never mutated), so no request ever touches the supervisor.

Exposure: loopback by default; any other address needs the cluster key configured. Every data
endpoint asks for a token, on loopback too (other unix users share it), given or generated at
start like Jupyter's: `Authorization: Bearer TOKEN` or `?token=TOKEN`. porchd prints the page's
address with it and writes it to `<state>/http.token` (0600), where its owner's porchctl and a
Prometheus `credentials_file` read it. The page shell and its script are public package files
and carry no data. On loopback, requests must also name a loopback host (DNS rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from porch import graph, logs, metrics
from porch.errors import PorchError, UsageError
from porch.status import STATE_PRECEDENCE, Snapshot

log = logs.get("porch.web")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
REQUEST_TIMEOUT_S = 10.0

NO_KEY_HINT = (
    "the dashboard leaves loopback only with a cluster key (and then with a token): configure "
    "one (--key-file, or `porch prefs --key-file PATH`), or serve on 127.0.0.1:PORT"
)


@dataclass(frozen=True)
class HttpPlan:
    """Where the dashboard listens and the token it asks for (None: none on loopback)."""

    host: str
    port: int
    token: str | None
    loopback: bool
    generated: bool = False


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `PORT` (on 127.0.0.1); UsageError when it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise UsageError(f"--http: expected HOST:PORT or PORT, got {text!r}")
    return host, number


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def plan(address: str, key_file: str | None, token: str | None) -> HttpPlan:
    """Check the exposure rules; generate a token for a non-loopback address without one."""
    host, port = parse_address(address)
    loopback = is_loopback(host)
    if not loopback and not key_file:
        raise UsageError(f"refusing to serve the dashboard on {host}:{port}: {NO_KEY_HINT}")
    if token:
        return HttpPlan(host, port, token, loopback=loopback)
    return HttpPlan(host, port, secrets.token_urlsafe(24), loopback=loopback, generated=True)


TOKEN_FILE = "http.token"


def write_token(path: Path, token: str) -> None:
    """The token for its owner's tools: mode 0600, a fresh file (never through a symlink)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")


def static_file(name: str) -> bytes:
    """One of the page's files, shipped in the package (porch/static)."""
    data = resources.files("porch").joinpath("static", name).read_bytes()
    if name == "index.html":  # the state colours of `porchctl graph`, so both look the same
        colors = {state: graph.COLORS[graph.state_class(state)] for state in graph.STATE_CLASSES}
        colors["unknown"] = graph.COLORS[graph.UNKNOWN]
        data = data.replace(b"__PORCH_COLORS__", json.dumps(colors).encode())
        # how a replicated pipeline's state is derived from its replicas', as porchctl does
        data = data.replace(b"__PORCH_STATE_ORDER__", json.dumps(STATE_PRECEDENCE).encode())
    return data


class DashboardServer:
    """The HTTP server thread; `read()` gives the latest snapshot (None before the first)."""

    def __init__(self, http: HttpPlan, read: Callable[[], Snapshot | None],
                 token_file: Path | None = None) -> None:  # fmt: skip
        self.plan = http
        self.read = read
        self.token_file = token_file
        self.registry = metrics.registry(read)
        try:
            self.httpd = _Server((http.host, http.port), _Handler)
        except OSError as exc:
            where = f"{http.host}:{http.port}"
            raise PorchError(f"--http: cannot listen on {where}: {exc.strerror or exc}") from None
        self.httpd.app = self
        self.thread = threading.Thread(target=self._serve, name="porch-http", daemon=True)

    @property
    def url(self) -> str:
        """The page's address (with the token, when there is one)."""
        host, port = self.plan.host, self.httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        query = f"/?token={self.plan.token}" if self.plan.token else "/"
        return f"http://{shown}:{port}{query}"

    def start(self) -> None:
        """Write the token file, then serve on the background thread."""
        if self.token_file is not None and self.plan.token is not None:
            write_token(self.token_file, self.plan.token)
        self.thread.start()
        log.info("http_started", url=self.url if not self.plan.token else self.url.split("?")[0])

    def _serve(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        except Exception:  # the one catch-all of this thread: porchd keeps running without it
            log.exception("http_failed")

    def close(self) -> None:
        """Stop serving, release the port, remove the token file."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=REQUEST_TIMEOUT_S)
        self.httpd.server_close()
        if self.token_file is not None:
            self.token_file.unlink(missing_ok=True)

    def status(self) -> dict[str, object]:
        """Where the dashboard is and where its token is kept, for `porchctl status --json`."""
        token_file = str(self.token_file) if self.token_file is not None else None
        return {"url": self.url.split("?")[0], "token_file": token_file}

    # ---- what each route answers ---------------------------------------------------------

    def authorized(self, authorization: str | None, query: Mapping[str, list[str]]) -> bool:
        """Whether a request carries the token (always true without one)."""
        token = self.plan.token
        if token is None:
            return True
        given = authorization or ""
        bearer = given[7:].strip() if given.lower().startswith("bearer ") else ""
        candidates = [bearer, *query.get("token", [])]
        return any(hmac.compare_digest(c.encode(), token.encode()) for c in candidates if c)

    def host_allowed(self, host_header: str | None) -> bool:
        """On loopback, only a loopback Host header (DNS rebinding)."""
        if not self.plan.loopback:
            return True
        if not host_header:
            return False
        name = urlsplit(f"//{host_header}").hostname or ""
        return name in LOOPBACK_NAMES or name == self.plan.host

    def api(self, path: str) -> tuple[HTTPStatus, bytes, str]:
        """The data routes: /api/status, /api/graph, /metrics."""
        snapshot = self.read()
        if snapshot is None:
            return _json_error(HTTPStatus.SERVICE_UNAVAILABLE, "not_ready", "porchd is starting")
        if path == "/metrics":
            body = metrics.exposition(self.registry)
            return HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8"
        data = snapshot.status.encode() if path == "/api/status" else dict(snapshot.graph)
        return HTTPStatus.OK, json.dumps(data).encode(), "application/json"


def _json_error(status: HTTPStatus, code: str, message: str) -> tuple[HTTPStatus, bytes, str]:
    body = {"ok": False, "error": {"code": code, "message": message}}
    return status, json.dumps(body).encode(), "application/json"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: DashboardServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


DATA_ROUTES = ("/api/status", "/api/graph", "/metrics")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "porchd"

    def do_GET(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        if not app.host_allowed(self.headers.get("Host")):
            self._send(*_json_error(HTTPStatus.FORBIDDEN, "bad_host", "not a loopback Host"))
        elif url.path in STATIC:
            name, kind = STATIC[url.path]
            self._send(HTTPStatus.OK, static_file(name), kind)
        elif url.path not in DATA_ROUTES:
            self._send(*_json_error(HTTPStatus.NOT_FOUND, "not_found", f"no route {url.path}"))
        elif not app.authorized(self.headers.get("Authorization"), parse_qs(url.query)):
            self._send(*_json_error(HTTPStatus.UNAUTHORIZED, "unauthorized", "token required"),
                       extra={"WWW-Authenticate": 'Bearer realm="porchd"'})  # fmt: skip
        else:
            self._send(*app.api(url.path))

    def _send(self, status: HTTPStatus, body: bytes, kind: str,
              extra: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http_request", client=self.client_address[0], line=format % args)
