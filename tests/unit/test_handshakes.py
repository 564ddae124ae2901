"""Failed CURVE handshakes are counted and logged on both ends (issue 20.4), in-process over
loopback: a serving input link, and a client or an output link with the wrong keys."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from structlog.testing import capture_logs

from porch.security import KeyRing, LinkSecurity, new_key
from porch.wire import HeaderEncoder
from workers.links import InputLink, LinkSettings, OutputLink

pytestmark = pytest.mark.timeout(30)

Context = zmq.Context[zmq.Socket[bytes]]
DEADLINE_S = 10.0


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


def serving(ctx: Context) -> tuple[LinkSecurity, InputLink]:
    security = LinkSecurity(KeyRing((new_key(),)))
    security.start_authenticator(ctx)
    return security, InputLink(ctx, "127.0.0.1", 16, security)


def until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_client_without_an_accepted_key_is_denied_counted_and_logged(ctx: Context) -> None:
    security, link = serving(ctx)
    client = ctx.socket(zmq.DEALER)
    public, secret = zmq.curve_keypair()
    client.setsockopt(zmq.CURVE_SERVERKEY, security.server_keys.public)
    client.setsockopt(zmq.CURVE_PUBLICKEY, public)
    client.setsockopt(zmq.CURVE_SECRETKEY, secret)
    client.setsockopt(zmq.LINGER, 0)
    try:
        with capture_logs() as logged:
            client.connect(link.endpoint)
            client.send(b"hello")

            def refused() -> bool:
                link.check_events("vault")
                return security.denied > 0 and link._refused > 0

            until(refused, "the ZAP denial")
        assert link.handshakes_failed == 0  # counted once, as `denied`
        events = [e for e in logged if e["event"] == "handshake_rejected"]
        assert events and events[0]["reason"] == "auth", logged
    finally:
        client.close()
        link.close()
        security.stop()


def test_a_target_serving_a_key_we_lack_fails_on_both_ends(ctx: Context) -> None:
    security, link = serving(ctx)
    ours = LinkSecurity(KeyRing((new_key(),)))  # a client only: no authenticator needed
    output = OutputLink(ctx, "vault", HeaderEncoder(1, 5, "thief"), LinkSettings(), security=ours)
    try:
        with capture_logs() as logged:
            output.connect(link.endpoint, 9, security.key_id)  # a key id our ring lacks

            def failed() -> bool:
                output.check_events("thief")
                link.check_events("vault")
                return output.handshakes_failed > 0 and link.handshakes_failed > 0

            until(failed, "a failed handshake on both ends")
        assert not output.handshaken
        sent = [e for e in logged if e["event"] == "handshake_failed"]
        assert sent and sent[0]["target"] == "vault" and sent[0]["key"] == security.key_id
        assert "copy the newest key file" in sent[0]["hint"]
        got = [e for e in logged if e["event"] == "handshake_rejected"]
        assert got and got[0]["reason"] != "auth", logged
    finally:
        output.close(linger_ms=0)
        link.close()
        security.stop()
