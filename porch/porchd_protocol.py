"""porchd's control protocol, shared by porchd (the server) and porchctl (the client).

JSON over ZeroMQ IPC (porchctl DEALER -> porchd ROUTER), as in docs/supervisor-contract.md:
a request is `{"id", "command", "args"}`, a reply `{"id", "ok": true, "result"}` or
`{"id", "ok": false, "error": {"code", "message"}}`. porch/control.py is the worker channel's
counterpart. Commands, error codes and both encodings are named here once.
"""

from __future__ import annotations

import enum
import json
import pwd
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq

from porch.errors import ControlError, PorchError

# A reply and a command's result are JSON objects; their values are JSON (a str, number,
# bool, None, list or object) that the reader checks field by field.
Reply = Mapping[str, object]
Result = Mapping[str, object]
TIMEOUT_S = 5.0  # how long porchctl waits for a reply
PROBE_TIMEOUT_S = 1.0  # how long porchd waits for another porchd's answer to a ping
PROBE_ID = "probe"


class Command(enum.Enum):
    """The commands porchd answers."""

    PING = "ping"
    STATUS = "status"
    STOP = "stop"
    START = "start"
    RESTART = "restart"
    RELOAD = "reload"
    SCALE = "scale"  # args: name (a replicated pipeline), replicas (1..64)
    GRAPH = "graph"
    LOGS = "logs"


# refused once porchd is stopping: what they start would keep it from ever stopping
STARTING_COMMANDS = frozenset({Command.START, Command.RESTART, Command.RELOAD, Command.SCALE})


class ErrorCode(enum.Enum):
    """The `code` of an error reply."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_PIPELINE = "unknown_pipeline"
    INVALID_CONFIG = "invalid_config"
    STOPPING = "stopping"  # start, restart and reload once porchd is stopping
    INTERNAL = "internal"


@dataclass(frozen=True)
class Request:
    """One decoded request."""

    id: object  # whatever JSON value the client chose; it goes back in the reply
    command: Command
    args: Mapping[str, object]


class CommandError(PorchError):
    """porchd side: a request that cannot be carried out; becomes an error reply.

    `request_id` is the request's id when it could be read (it goes back in the reply)."""

    def __init__(self, code: ErrorCode, message: str, request_id: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class CommandFailed(ControlError):
    """porchctl side: porchd answered `ok: false`; `code` is one of ErrorCode's values (kept
    as a string: a newer porchd may send one this porchctl does not know)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- requests ----------------------------------------------------------------------------


def encode_request(command: Command | str, args: Mapping[str, object], request_id: str) -> bytes:
    """One request as sent on the wire."""
    name = command.value if isinstance(command, Command) else command
    return json.dumps({"id": request_id, "command": name, "args": dict(args)}).encode("utf-8")


def decode_request(data: bytes) -> Request:
    """Decode one request; raise CommandError (with the id once known) when it is not one."""
    try:
        request = json.loads(data)
    except ValueError:
        raise CommandError(ErrorCode.BAD_REQUEST, "request is not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise CommandError(ErrorCode.BAD_REQUEST, "a request is {id, command, args}")
    request_id = request.get("id")
    try:
        command = Command(request["command"])
    except ValueError:
        message = f"unknown command {request['command']!r}"
        raise CommandError(ErrorCode.UNKNOWN_COMMAND, message, request_id) from None
    args = request.get("args") or {}
    if not isinstance(args, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, "args must be an object", request_id)
    return Request(request_id, command, {str(k): v for k, v in args.items()})


# ---- replies -----------------------------------------------------------------------------


def ok_reply(request_id: object, result: object) -> Reply:
    """The reply carrying a command's result."""
    return {"id": request_id, "ok": True, "result": result}


def error_reply(request_id: object, code: ErrorCode, message: str) -> Reply:
    """The reply saying why a request failed."""
    return {"id": request_id, "ok": False, "error": {"code": code.value, "message": message}}


def encode_reply(reply: Reply) -> bytes:
    """One reply as sent on the wire."""
    return json.dumps(dict(reply)).encode("utf-8")


def decode_reply(data: bytes) -> Reply:
    """Decode one reply; raise ControlError when it is not a JSON object."""
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"malformed reply from porchd: {data[:120]!r}")
    return {str(k): v for k, v in reply.items()}


def result_of(reply: Reply) -> object:
    """A reply's result; raise CommandFailed for an error reply, ControlError when malformed."""
    if reply.get("ok") is True:
        return reply.get("result")
    error = reply.get("error")
    if not isinstance(error, dict):
        raise ControlError(f"malformed reply from porchd: {reply!r:.120}")
    default = ErrorCode.INTERNAL.value
    raise CommandFailed(str(error.get("code", default)), str(error.get("message", "")))


# ---- transport ---------------------------------------------------------------------------


class DaemonUnreachable(ControlError):
    """porchd does not answer on its control socket (no socket file, or no reply in time).

    `listening` is true when something accepted the connection but did not reply in time.
    """

    def __init__(self, path: Path, why: str, listening: bool = False) -> None:
        super().__init__(
            f"cannot reach porchd at {path} ({why}); is porchd running? start it with "
            "'porchd start CONFIG...', or point at another with --control PATH or PORCH_CONTROL"
        )
        self.path = path
        self.why = why
        self.listening = listening


class Client:
    """Sends one request at a time to porchd and waits up to `timeout_s` for its reply."""

    def __init__(self, address: str, path: Path, timeout_s: float) -> None:
        self.address = address
        self.path = path
        self.timeout_s = timeout_s

    def call(self, command: Command | str, **args: object) -> Result:
        """Run `command` on porchd; return its result or raise a ControlError."""
        self._probe()
        request_id = uuid.uuid4().hex
        reply = self._exchange(encode_request(command, args, request_id), request_id)
        result = result_of(reply)
        if not isinstance(result, dict):  # every command's result is an object
            raise ControlError(f"malformed reply from porchd: {reply!r:.120}")
        return {str(k): v for k, v in result.items()}

    def _probe(self) -> None:
        # ZeroMQ retries a connect forever in silence, so a missing or stale socket file, or
        # one we may not open, would only show as a timeout: a plain connect tells them apart.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(self.timeout_s)
        try:
            probe.connect(str(self.path))
        except FileNotFoundError:
            raise DaemonUnreachable(self.path, "no such socket") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(self.path, "nothing listening: stale socket") from None
        except PermissionError:
            raise ControlError(permission_denied(self.path)) from None
        except OSError as exc:
            raise ControlError(f"cannot use control socket {self.path}: {exc}") from exc
        finally:
            probe.close()

    def _exchange(self, request: bytes, request_id: str) -> Reply:
        dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(self.address)
            dealer.send(request, zmq.NOBLOCK)
            return self._receive(dealer, request_id)
        except zmq.Again:
            raise self._no_answer() from None
        except zmq.ZMQError as exc:
            raise ControlError(f"cannot use control socket {self.path}: {exc}") from exc
        finally:
            dealer.close()

    def _receive(self, dealer: zmq.Socket[bytes], request_id: str) -> Reply:
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or not dealer.poll(max(1, int(remaining_ms)), zmq.POLLIN):
                raise self._no_answer()
            reply = decode_reply(dealer.recv_multipart()[-1])
            if reply.get("id") == request_id:
                return reply

    def _no_answer(self) -> DaemonUnreachable:
        why = f"no answer within {self.timeout_s:g}s"
        return DaemonUnreachable(self.path, why, listening=True)


def answers(
    ctx: zmq.Context[zmq.Socket[bytes]], path: Path, timeout_s: float = PROBE_TIMEOUT_S
) -> bool:
    """Whether a porchd answers a ping on the socket at `path` within `timeout_s`."""
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{path}")
        sock.send_multipart([b"", encode_request(Command.PING, {}, PROBE_ID)])
        return bool(sock.poll(int(timeout_s * 1000)))
    finally:
        sock.close()


def permission_denied(path: Path) -> str:
    """Another user's control socket: say whose, and how to reach it legitimately."""
    try:
        owner = path.parent.stat().st_uid
        who = f"user {pwd.getpwuid(owner).pw_name} (uid {owner})"
    except (OSError, KeyError):
        who = "another user"
    return (
        f"permission denied: the control socket {path} belongs to {who}, and only its "
        "owner may use it; run porchctl as that user"
    )
