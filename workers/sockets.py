"""A worker's ZeroMQ context and sockets: the control channel to its supervisor, its input
(the inbox, when the pipeline has sources: on TCP, and on a Unix socket in the supervisor's
run folder for its other pipelines) and one output link per target, under the cluster key when
there is one (CURVE on every data link). Made in the order the security model needs
(the ZAP authenticator runs before the input socket binds), closed in one place.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import zmq

from porch import logs
from porch.config import Delivery, FanIn, Overflow, PipelineConfig
from porch.control import ControlClient, MessageType
from porch.localsock import LocalUnavailable, socket_name, socket_path
from porch.security import LinkSecurity
from porch.serializers import Serializer
from porch.wire import HeaderEncoder
from workers.deadletter import LinkLetters
from workers.inbox import Inbox
from workers.links import LinkSettings, OutputLink
from workers.replicas import Output

log = logs.get("porch.worker")


def link_settings(config: PipelineConfig) -> LinkSettings:
    """The output link behaviour a config asks for."""
    return LinkSettings(
        limit=config.queue_limit,
        limit_bytes=config.queue_limit_bytes,
        drop_oldest=config.overflow is Overflow.DROP_OLDEST,
        acked=config.delivery is Delivery.AT_LEAST_ONCE,
    )


class WorkerSockets:
    """Everything one worker process connects and binds (module doc)."""

    def __init__(
        self,
        config: PipelineConfig,
        control: str,
        bind_host: str,
        serializer: Serializer,
        letters: LinkLetters,
        key_file: Path | None = None,
        ipc_dir: Path | None = None,
    ) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.instance = random.getrandbits(63)  # which start of this pipeline's worker we are
        # the ZAP authenticator must run on this context before the input socket binds
        security = LinkSecurity.start(self.ctx, key_file) if key_file else None
        self.security = security
        self.control = ControlClient(self.ctx, control, config.name)
        self.inbox = (
            Inbox(
                self.ctx,
                bind_host,
                name=config.name,
                instance=self.instance,
                expected=config.source_pipeline_count,
                any_input=config.fan_in is FanIn.ANY,
                serializer=serializer,
                limit=config.queue_limit,
                security=security,
                local=self._local_socket(config.name, ipc_dir),
            )
            if config.source_pipeline_count
            else None
        )
        headers = HeaderEncoder(serializer.id, self.instance, config.name)
        settings = link_settings(config)
        self.links = [  # one per target; a replicated one becomes a group (workers/replicas.py)
            OutputLink(self.ctx, target, headers, settings, letters, security=security)
            for target in config.target_pipeline_names
        ]
        self.outputs: list[Output] = list(self.links)

    def _local_socket(self, pipeline: str, ipc_dir: Path | None) -> Path | None:
        """Where our input listens for our supervisor's pipelines (porch/localsock.py), or None:
        they connect over TCP (with CURVE unless --insecure), as other supervisors' do."""
        if ipc_dir is None:
            return None
        try:
            return socket_path(ipc_dir, socket_name(os.getpid(), self.instance))
        except LocalUnavailable as exc:
            log.warning("local_link_unavailable", pipeline=pipeline, reason=str(exc),
                        detail="local pipelines connect over TCP")  # fmt: skip
            return None

    def hello(self) -> None:
        """Tell the supervisor who we are and where our input is (HELLO): TCP endpoints, and
        the Unix socket for its other pipelines when there is one."""
        inbox, security = self.inbox, self.security
        endpoint = inbox.endpoint if inbox is not None else None
        endpoints = inbox.link.endpoints if inbox is not None else []
        key_id = security.key_id if security is not None else None
        local = inbox.link.local_endpoint if inbox is not None else None
        self.control.send(MessageType.HELLO, pid=os.getpid(), endpoint=endpoint,
                          instance=self.instance, key=key_id, local=local,
                          endpoints=endpoints if len(endpoints) > 1 else [])  # fmt: skip

    def poller(self, wake: socket.socket) -> zmq.Poller:
        """What an idle worker waits on: control messages, input, `wake` (signals), and the
        input's socket monitor (failed handshakes: a wait that saw none needs no look at it,
        Housekeeping.tick)."""
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        if self.inbox is not None:
            poller.register(self.inbox.link.socket, zmq.POLLIN)
            if self.inbox.link.monitor is not None:
                poller.register(self.inbox.link.monitor, zmq.POLLIN)
        return poller

    def close(self) -> None:
        """Close the input and the control channel, stop CURVE, end the context (the output
        links are closed by the close protocol, workers/closing.py)."""
        if self.inbox is not None:
            self.inbox.close()
        self.control.close()
        if self.security is not None:
            self.security.stop()
        self.ctx.term()
