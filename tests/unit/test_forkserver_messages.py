"""The fork server's messages, typed both ways (no fork, no subprocess)."""

from __future__ import annotations

import json

import pytest

from porch.forkserver import ForkServerError, Reply, SpawnRequest

pytestmark = pytest.mark.timeout(10)


def test_a_spawn_request_round_trips_and_garbage_is_refused() -> None:
    request = SpawnRequest("sink", ["--config", "sink.toml"], "/srv/p", {"PATH": "/bin"})

    assert SpawnRequest.decode(request.encode()) == request
    for bad in ({"name": "sink"}, {**json.loads(request.encode()), "argv": [1]}, ["sink"]):
        with pytest.raises(ValueError):
            SpawnRequest.decode(json.dumps(bad).encode())


def test_replies_keep_their_wire_format() -> None:
    assert json.loads(Reply(ready=True).encode()) == {"ready": True}
    assert json.loads(Reply(pid=42).encode()) == {"pid": 42}
    assert json.loads(Reply(exit=(42, -9)).encode()) == {"exit": 42, "code": -9}
    for reply in (Reply(ready=True), Reply(pid=42), Reply(error="no"), Reply(exit=(42, 0))):
        assert Reply.decode(reply.encode()) == reply
    with pytest.raises(ForkServerError, match="the fork server sent"):
        Reply.decode(b"[]")
