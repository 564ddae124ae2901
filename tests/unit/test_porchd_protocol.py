"""porchd's control protocol (porch/porchd_protocol.py): encodings and the ping probe."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import zmq

from porch.errors import ControlError
from porch.porchd_protocol import (
    STARTING_COMMANDS,
    Command,
    CommandError,
    CommandFailed,
    ErrorCode,
    Request,
    answers,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_reply,
    ok_reply,
    result_of,
)

pytestmark = pytest.mark.timeout(10)


def test_a_request_round_trips() -> None:
    data = encode_request(Command.STOP, {"names": ["a"]}, "id-1")
    assert json.loads(data) == {"id": "id-1", "command": "stop", "args": {"names": ["a"]}}
    assert decode_request(data) == Request("id-1", Command.STOP, {"names": ["a"]})


def test_a_request_without_args_has_empty_args() -> None:
    assert decode_request(b'{"id": 7, "command": "ping"}') == Request(7, Command.PING, {})


@pytest.mark.parametrize(
    ("data", "code", "message", "request_id"),
    [
        (b"{nope", ErrorCode.BAD_REQUEST, "request is not JSON", None),
        (b"\xff\xfe", ErrorCode.BAD_REQUEST, "request is not JSON", None),
        (b"[1, 2]", ErrorCode.BAD_REQUEST, "a request is {id, command, args}", None),
        (b'{"id": "x", "command": 3}', ErrorCode.BAD_REQUEST, "a request is {id, command, args}",
         None),
        (b'{"id": "x", "command": "fly"}', ErrorCode.UNKNOWN_COMMAND, "unknown command 'fly'",
         "x"),
        (b'{"id": "x", "command": "stop", "args": [1]}', ErrorCode.BAD_REQUEST,
         "args must be an object", "x"),
    ],
)  # fmt: skip
def test_a_bad_request_is_a_command_error_with_the_id_once_known(
    data: bytes, code: ErrorCode, message: str, request_id: str | None
) -> None:
    with pytest.raises(CommandError) as failed:
        decode_request(data)
    assert (failed.value.code, str(failed.value), failed.value.request_id) == (
        code,
        message,
        request_id,
    )


def test_replies_as_the_contract_spells_them() -> None:
    assert ok_reply("a", {"pid": 1}) == {"id": "a", "ok": True, "result": {"pid": 1}}
    assert error_reply("a", ErrorCode.UNKNOWN_PIPELINE, "no pipeline 'x'") == {
        "id": "a",
        "ok": False,
        "error": {"code": "unknown_pipeline", "message": "no pipeline 'x'"},
    }


def test_the_client_reads_what_the_server_encodes() -> None:
    ok = decode_reply(encode_reply(ok_reply("a", [1, 2])))
    assert result_of(ok) == [1, 2]
    failed = decode_reply(encode_reply(error_reply("a", ErrorCode.STOPPING, "porchd is stopping")))
    with pytest.raises(CommandFailed) as raised:
        result_of(failed)
    assert (raised.value.code, raised.value.message) == ("stopping", "porchd is stopping")


def test_an_error_code_this_client_does_not_know_is_kept_as_sent() -> None:
    with pytest.raises(CommandFailed) as raised:
        result_of({"id": "a", "ok": False, "error": {"code": "newer", "message": "m"}})
    assert raised.value.code == "newer"


@pytest.mark.parametrize("data", [b"not json", b"[1]", b'"text"'])
def test_a_reply_that_is_not_an_object_is_malformed(data: bytes) -> None:
    with pytest.raises(ControlError, match="malformed reply from porchd"):
        decode_reply(data)


def test_an_error_reply_without_an_error_object_is_malformed() -> None:
    with pytest.raises(ControlError, match="malformed reply from porchd"):
        result_of({"id": "a", "ok": False})


def test_every_error_code_and_command_is_the_contracts() -> None:
    assert {c.value for c in ErrorCode} == {
        "bad_request",
        "unknown_command",
        "unknown_pipeline",
        "invalid_config",
        "stopping",
        "internal",
    }
    assert {c.value for c in Command} == {
        "ping",
        "status",
        "stop",
        "start",
        "restart",
        "reload",
        "scale",
        "graph",
        "logs",
    }
    assert {c.value for c in STARTING_COMMANDS} == {"start", "restart", "reload", "scale"}


def test_answers_tells_a_porchd_that_replies_from_silence(tmp_path: Path) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    path = tmp_path / "porchd.sock"
    router.bind(f"ipc://{path}")
    seen: list[Request] = []

    def serve_one() -> None:
        if router.poll(5000):
            *envelope, data = router.recv_multipart()
            request = decode_request(data)
            seen.append(request)
            router.send_multipart([*envelope, encode_reply(ok_reply(request.id, {}))])

    try:
        assert not answers(ctx, path, timeout_s=0.05)  # nobody replies
        while router.poll(0):  # drop that unanswered ping
            router.recv_multipart()
        server = threading.Thread(target=serve_one, daemon=True)
        server.start()
        assert answers(ctx, path, timeout_s=5.0)
        server.join(5.0)
        assert [r.command for r in seen] == [Command.PING]
    finally:
        router.close()
        ctx.destroy(linger=0)
