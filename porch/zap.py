"""ZAP for a worker's CURVE sockets without an asyncio event loop.

pyzmq's ThreadAuthenticator runs its ZAP handler in an asyncio event loop on a thread of its
own; every worker with a cluster key runs one, and the loop's machinery (the loop, its
selector, asyncio sockets and futures, the code they run) cost each worker ~1 MB of its own
memory. PlainAuthenticator is that authenticator (the same ZAP checks and replies, start and
stop) served from a plain thread that polls its two sockets. Our credentials callback
(porch/security.py LinkSecurity.callback) answers at once, so the ZAP handler, a coroutine,
finishes without waiting; if it ever waited, the thread fails loudly rather than leave a client
unanswered. Imported by the fork server's template (its pages shared by the workers).
"""

from __future__ import annotations

import threading
from typing import Any

import zmq
from zmq.auth.base import Authenticator
from zmq.auth.thread import ThreadAuthenticator

from porch.security import SecurityError


class PlainThread(threading.Thread):
    """The ZAP socket and the stop pipe, polled and answered in turn."""

    def __init__(self, auth: Authenticator, pipe: zmq.Socket[Any]) -> None:
        super().__init__(daemon=True, name="porch-zap")
        self.auth = auth
        self.pipe = pipe
        self.started = threading.Event()

    def run(self) -> None:
        try:
            self._serve()
        finally:
            self.pipe.close()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pipe, zmq.POLLIN)
        poller.register(self.auth.zap_socket, zmq.POLLIN)
        self.started.set()
        while True:
            events = dict(poller.poll())
            if self.pipe in events and self.pipe.recv_multipart()[0] == b"TERMINATE":
                return
            if self.auth.zap_socket in events:
                handler = self.auth.handle_zap_message(self.auth.zap_socket.recv_multipart())
                try:
                    handler.send(None)
                except StopIteration:
                    continue
                handler.close()
                raise SecurityError("the ZAP handler waited: a client went unanswered")


class PlainAuthenticator(ThreadAuthenticator):
    """ThreadAuthenticator whose thread is a PlainThread (module doc)."""

    def start(self) -> None:
        """Bind the ZAP socket (before any data socket binds) and start the thread."""
        Authenticator.start(self)
        self.pipe = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        self.pipe.linger = 1
        self.pipe.bind(self.pipe_endpoint)
        thread_pipe = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        thread_pipe.linger = 1
        thread_pipe.connect(self.pipe_endpoint)
        thread = PlainThread(self, thread_pipe)
        self.thread = thread  # type: ignore[assignment]
        thread.start()
        if not thread.started.wait(timeout=10):
            raise SecurityError("the ZAP authenticator did not start")
