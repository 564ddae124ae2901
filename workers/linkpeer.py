"""What an output link does when its connection to the target changes: the first connect and
every reconnect (hello, everything unacknowledged sent again, a restarted target's replay and
its poison message), a connection found dead (heartbeats), a target discovery lost, and an
at-most-once end of stream whose connection dropped before the target confirmed it.

These operate on one OutputLink (workers/links.py): its LinkSocket, SendQueue and StreamEnd.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import zmq

from porch import logs
from porch.wire import HELLO_NO_ACKS, HELLO_REPLAY, HELLO_WINDOW, FrameKind, decode_ack

if TYPE_CHECKING:
    from workers.links import OutputLink

log = logs.get("porch.worker")

MAX_DELIVERY_ATTEMPTS = 3  # a message its target crashed on this often is dead-lettered
HELLO_AGAIN_S = 5.0  # a link waiting this long for an ack on a live connection says HELLO again


def connect(
    link: OutputLink,
    endpoint: str,
    instance: int | None = None,
    key_id: str | None = None,
    *,
    force: bool = False,
) -> None:
    """(Re)connect to the target, say hello, and send everything not yet acknowledged.

    `force` reopens even an unchanged endpoint: after a dead connection or a rediscovery,
    a fresh socket connects at once instead of waiting on TCP's or ZeroMQ's backoff; what
    the old connection may have lost is sent again (the target drops what it has seen).
    """
    conn, outbox = link.conn, link.outbox
    same = (endpoint, instance, key_id) == (conn.endpoint, conn.instance, conn.key_id)
    # at-most-once has nothing to send again, and a new socket would drop what ZeroMQ
    # still queues: its socket reconnects by itself (heartbeats, bounded backoff)
    if same and conn.socket is not None and not (force and link.settings.acked):
        conn.withdrawn_since = None
        return
    if conn.socket is not None:
        # the old instance's last acks may still wait unread: a graceful restart of the
        # target acknowledged them, and replaying those messages would duplicate them
        link.read_acks(decode_ack)
    restarted = (
        conn.instance is not None and instance != conn.instance and len(outbox) > outbox.unsent
    )
    reopened = conn.socket is not None
    sock = conn.open(endpoint, instance, key_id, link.settings)
    # an at-most-once sender must not be acked: unread acks in its TCP receive buffer
    # would make the kernel reset the connection (losing the tail) when it exits
    flags = (0 if link.settings.acked else HELLO_NO_ACKS) | (HELLO_REPLAY if restarted else 0)
    sock.send(link.framer.headers.encode(FrameKind.HELLO, flags | window(link)))
    link.gone = link.down = False
    if restarted:  # it acks one by one after a restart; its crashes on our head count
        link.replayed += outbox.held
        poison = outbox.replay(link.framer.headers, MAX_DELIVERY_ATTEMPTS)
        if poison is not None and link.on_dead_letter is not None:
            reason = f"{link.target} crashed {MAX_DELIVERY_ATTEMPTS} times while it was delivered"
            link.on_dead_letter(link.target, poison, reason)
    elif reopened:
        conn.reconnects += 1
    outbox.resend_all()
    if link.end.unconfirmed and not link.outbox:  # a new connection: our BYE again
        link.end.bye_pending = True
    link.pump()


def withdraw(link: OutputLink, since: float) -> None:
    """Discovery lost the target (its host fell silent): hold everything until it is back.

    The socket stays: ZeroMQ keeps trying the old endpoint, and a rediscovery reopens it.
    """
    if link.conn.withdrawn_since is None:
        link.conn.withdrawn_since = since


def check_events(link: OutputLink, pipeline: str) -> None:
    """React to the socket's events: reopen a connection that died (heartbeats), send an
    unconfirmed end again on a new connection, count and log failed handshakes (at most
    every HANDSHAKE_LOG_INTERVAL_S)."""
    conn = link.conn
    for kind, lost in conn.events(pipeline):
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if link.end.lost:
                send_end_again(link)
            continue
        link.end.lost = link.end.unconfirmed
        if not (lost and link.settings.acked and conn.endpoint is not None):
            continue
        log.info("link_reconnecting", pipeline=pipeline, target=link.target,
                 endpoint=conn.endpoint, reason="connection lost")  # fmt: skip
        # still withdrawn until rediscovered, still down (failed, stopped) until the directory
        # says otherwise: a stopping sender does not wait for a target that is down
        withdrawn_since, down = conn.withdrawn_since, link.down
        connect(link, conn.endpoint, conn.instance, conn.key_id, force=True)
        conn.withdrawn_since, link.down = withdrawn_since, down
        return  # the old monitor is closed; the new socket reports on its own
    hello_again(link, time.monotonic())


def hello_again(link: OutputLink, now: float) -> None:
    """An acknowledged link that holds sent messages and heard no ack for HELLO_AGAIN_S on a
    connection that is up says HELLO again: the target acknowledges on the connection of the
    HELLO it read last, which after a reconnect while it was not reading can be the dead one
    (both HELLOs waited unread); ours again brings its acks back (it re-acknowledges what it
    processed). Not after our BYE: the target let us go (a stopping source)."""
    conn, outbox = link.conn, link.outbox
    waiting = (
        link.settings.acked
        and conn.handshaken
        and len(outbox) > outbox.unsent
        and not link.end.said_bye
    )
    since = conn.quiet_since
    if since is None or not waiting or link.acked_seq != conn.quiet_ack:
        conn.quiet_since, conn.quiet_ack = now, link.acked_seq
        return
    if now - since < HELLO_AGAIN_S or conn.socket is None:
        return
    conn.quiet_since = now
    with contextlib.suppress(zmq.ZMQError):
        conn.socket.send(link.framer.headers.encode(FrameKind.HELLO, window(link)), zmq.NOBLOCK)


def window(link: OutputLink) -> int:
    """HELLO's flags that say an acknowledged link's window (its queue_limit): the target
    acknowledges often enough for it (Inbox._on_presence), not only for a window of its own
    limit (a window smaller than that filled before an ack was due, and waited for the
    target's idle ack)."""
    return link.settings.limit << HELLO_WINDOW if link.settings.acked else 0


def send_end_again(link: OutputLink) -> None:
    """At-most-once: the connection that carried our EOS or BYE dropped before the target
    confirmed it; say hello on the new one and send the end again (the target confirms a
    repeated end too), instead of waiting for a confirmation that cannot come."""
    link.end.lost = False
    sock = link.conn.socket
    if sock is None or not link.end.unconfirmed:
        return
    with contextlib.suppress(zmq.ZMQError):
        sock.send(link.framer.headers.encode(FrameKind.HELLO, HELLO_NO_ACKS), zmq.NOBLOCK)
    if link.outbox:
        link.outbox.resend_all()  # the kept EOS
    else:
        link.end.bye_pending = True
    link.pump()
