"""The worker channel and directory publishing.

Workers connect a DEALER to the supervisor's ROUTER (porch/control.py messages, identity = the
process name) and report hello (where they serve), state changes and health. The supervisor
answers with directories (porch/directory.py), one entry per worker process (a replica's is
NAME#TAG-K): each worker gets the entries it uses (itself, every entry of its target
pipelines, every entry naming its pipeline among its targets) when they changed, and every
entry's name when the names changed (for its `did you mean` on a missing target). A burst of
changes (1,000 workers starting) is coalesced into a few directories, at most one per
DIRECTORY_GAP_S.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import zmq

from porch import logs
from porch.broker import Broker
from porch.control import MessageType, WorkerState, decode, readable
from porch.directory import LOCAL_HOST, DirectoryEntry, Entry, encode_directory
from porch.errors import ControlError, UsageError
from porch.localsock import IPC_PREFIX, MAX_SOCKET_PATH
from porch.names import pipeline_of
from porch.worker_handle import Announcement, WorkerHandle, WorkerProcess

log = logs.get("porch.supervisor")

DIRECTORY_GAP_S = 0.02  # directories to the workers: at most one per this (a burst coalesces)

Report = tuple[WorkerHandle, MessageType, Mapping[str, object]]


class WorkerChannel:
    """The ROUTER socket the workers report to."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        path = endpoint.removeprefix(IPC_PREFIX)
        if endpoint.startswith(IPC_PREFIX) and len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"the supervisor's socket {path} is {len(os.fsencode(path))} bytes long, over "
                f"the {MAX_SOCKET_PATH} a Unix socket's path may have: its run folder is in "
                "TMPDIR; set TMPDIR to a shorter folder (such as /tmp)"
            )
        self.endpoint = endpoint
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        # each worker's last health report, as sent and decoded: an idle worker sends the
        # same one every second (decoding it cost porch run ~30% of its idle CPU)
        self._health: dict[bytes, tuple[bytes, Mapping[str, object]]] = {}

    def receive(self, find: Callable[[str], WorkerHandle | None]) -> Iterator[Report]:
        """The reports waiting now, from workers `find` knows and that are alive; a message
        that cannot be decoded is logged and skipped."""
        while readable(self.socket):
            try:
                identity, data = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            handle = find(identity.decode("utf-8", "replace"))
            if handle is None or not handle.alive:
                continue
            last = self._health.get(identity)
            if last is not None and last[0] == data:
                yield handle, MessageType.HEALTH, last[1]  # (the same dict: apply_report)
                continue
            try:
                kind, message = decode(data)
            except ControlError as exc:
                log.warning("bad_control_message", pipeline=handle.name, reason=str(exc))
                continue
            if kind is MessageType.HEALTH:
                self._health[identity] = (data, message)
            yield handle, kind, message

    def send(self, pipeline: str, data: bytes) -> None:
        """Send one message to a pipeline's worker (dropped by the ROUTER before its hello)."""
        self.socket.send_multipart([pipeline.encode("utf-8"), data])

    def close(self) -> None:
        """Close the socket."""
        self.socket.close(linger=0)


@dataclass
class _Sent:
    """What one worker instance, greeted (it said hello: the router can reach it), was sent."""

    process: WorkerProcess | None  # the instance that said hello
    part: Mapping[str, DirectoryEntry] | None = None  # its last directory's entries
    names_version: int = -1  # the version of the names it was last sent


class DirectoryPublisher:
    """Sends each greeted worker its part of the directory when it changed, coalesced."""

    def __init__(
        self,
        send: Callable[[str, bytes], None],
        workers: Mapping[str, WorkerHandle],
        key_id: str | None = None,
        gap_s: float = DIRECTORY_GAP_S,
    ) -> None:
        self.send = send
        self.workers = workers  # the supervisor's pipelines (it adds and removes them)
        self.key_id = key_id  # the cluster key local workers serve with unless they say
        self.broker: Broker | None = None  # discovery: remote pipelines join the directory
        self.gap_s = gap_s
        self._sent: dict[str, _Sent] = {}
        self._names: list[str] = []
        self._names_version = 0
        self._sent_s = -gap_s  # when the last directory went out (monotonic)
        self.due_s: float | None = None  # when a held-back directory goes out

    def hello(self, handle: WorkerHandle) -> None:
        """Its worker said hello: its route exists, so what is sent now reaches it (a directory
        sent before was dropped: it gets everything again). A new worker instance gets
        nothing until its own hello."""
        self._sent[handle.name] = _Sent(handle.process)

    def forget(self, pipeline: str) -> None:
        """The pipeline was removed."""
        self._sent.pop(pipeline, None)

    def changed(self, now: float | None = None) -> None:
        """The directory changed (at `now`, monotonic s; default: now): send it now, or (one
        was just sent) at due_s."""
        now = time.monotonic() if now is None else now
        if now - self._sent_s >= self.gap_s:
            self.due_s, self._sent_s = None, now
            self.publish()
        elif self.due_s is None:
            self.due_s = self._sent_s + self.gap_s

    def flush(self, now: float) -> None:
        """Send a held-back directory once it is due."""
        if self.due_s is not None and now >= self.due_s:
            self.due_s, self._sent_s = None, now
            self.publish()

    def directory(self) -> dict[str, DirectoryEntry]:
        """Where every pipeline lives: local ones, then the remote ones discovery resolved."""
        return directory(list(self.workers.values()), self.broker, self.key_id)

    def local_entries(self) -> list[Entry]:
        """The local pipelines as discovery announces them to other hosts."""
        return local_entries(self.workers.values())

    def publish(self) -> None:
        """Send each alive worker the entries it uses, when they or the names changed since
        it was last sent them."""
        pipelines = self.directory()
        recipients = [h for h in self.workers.values() if h.alive]
        names = sorted(pipelines)
        if names != self._names:
            self._names = names
            self._names_version += 1
        sources: dict[str, list[str]] = {}  # pipeline -> the entries naming it a target
        processes: dict[str, list[str]] = {}  # pipeline -> its entries (its replicas)
        for name, entry in pipelines.items():
            processes.setdefault(pipeline_of(name), []).append(name)
            for target in entry.targets:
                sources.setdefault(target, []).append(name)
        for handle in recipients:
            sent = self._sent.get(handle.name)
            if sent is None or sent.process is not handle.process:  # no hello yet: dropped
                continue
            part = {n: pipelines[n] for n in wanted_entries(handle, processes, sources)}
            fresh_names = sent.names_version != self._names_version
            if part == sent.part and not fresh_names:
                continue
            self.send(handle.name, encode_directory(part, names if fresh_names else None))
            sent.part, sent.names_version = part, self._names_version


def wanted_entries(
    handle: WorkerHandle, processes: Mapping[str, Sequence[str]],
    sources: Mapping[str, Sequence[str]],
) -> list[str]:  # fmt: skip
    """The directory entries a worker uses, in order: its own, every entry (every replica) of
    each of its target pipelines, and every entry whose targets name its pipeline."""
    names = [handle.name]
    for target in handle.config.target_pipeline_names:
        names.extend(processes.get(target, ()))
    names.extend(sources.get(handle.pipeline, ()))
    return list(dict.fromkeys(names))


def apply_report(
    handle: WorkerHandle, kind: MessageType, message: Mapping[str, object], now: float,
    key_id: str | None = None,
) -> bool:  # fmt: skip
    """Apply one report of `handle`'s worker at `now`; True when the directory changed (a
    hello, or a state that ended it). `key_id`: the key the daemon serves with."""
    assert handle.process is not None  # only alive workers' reports come here
    handle.process.heartbeat_s = now
    if kind is MessageType.HELLO:
        handle.announced = Announcement.from_hello(message)
        worker_key = handle.announced.key_id
        if worker_key is not None and worker_key != key_id:
            log.info("worker_key_differs", pipeline=handle.name, worker_key=worker_key,
                     daemon_key=key_id,
                     detail="the key file changed since porchd started; peers are told "
                     "the key this worker serves with")  # fmt: skip
        log.info("worker_endpoint", pipeline=handle.name, endpoint=handle.announced.endpoint,
                 local=handle.announced.local_endpoint)  # fmt: skip
        return True
    if kind is MessageType.STATE:
        return _set_state(handle, message)
    if kind is MessageType.HEALTH:
        handle.health.take(message, now)
    return False


def _set_state(handle: WorkerHandle, message: Mapping[str, object]) -> bool:
    try:
        state = WorkerState(str(message.get("state")))
    except ValueError:
        return False
    handle.state = state
    if message.get("error"):
        handle.last_error = str(message["error"])
    log.debug("worker_state", pipeline=handle.name, state=state.value)
    return state.ended


def local_entries(handles: Iterable[WorkerHandle]) -> list[Entry]:
    """The local pipelines as discovery announces them to other hosts."""
    return [Entry(h.name, h.announced.endpoint, h.state, h.announced.instance, h.announced.key_id,
                  h.announced.endpoints if h.announced.endpoint else (),
                  h.config.target_pipeline_names, h.final, *_replica_fields(h))
            for h in handles]  # fmt: skip


def _replica_fields(handle: WorkerHandle) -> tuple[bool, str | None]:
    """A replica entry's `ordered` and `partition_by` (a plain pipeline's: False, None)."""
    config = handle.config
    return (config.ordered, config.partition_by) if config.replica_of else (False, None)


def directory(
    handles: Sequence[WorkerHandle], broker: Broker | None, key_id: str | None
) -> dict[str, DirectoryEntry]:
    """Where every pipeline lives: local ones, then the remote ones discovery resolved (a local
    pipeline's key is its worker's, else the one `key_id` names)."""
    pipelines: dict[str, DirectoryEntry] = {}
    if broker is not None:
        pipelines.update(broker.directory([h.name for h in handles]))
    for h in handles:
        a = h.announced
        # our workers reach ours over ipc:// (no CURVE); the broker announces TCP
        ordered, partition_by = _replica_fields(h)
        pipelines[h.name] = DirectoryEntry(h.state, a.local_endpoint or a.endpoint, LOCAL_HOST,
                                           a.instance, a.key_id or key_id,
                                           h.config.target_pipeline_names, h.final,
                                           ordered=ordered,
                                           partition_by=partition_by)  # fmt: skip
    return pipelines
