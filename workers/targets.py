"""A worker's targets: where the directory says they are (each output link connected,
withdrawn, retired or marked down), each link's state for status, and the warnings about
targets that keep the pipeline from making progress.

A target the directory has not shown a few seconds after the start is reported missing (a
misspelled name blocks silently once queue_limit values are held), with what is held for it
and the closest name the directory knows; again every STALL_WARNING_S while it lasts. A
target withdrawn by discovery is in the warning with since when and what is held.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict

from porch import logs
from porch.control import WorkerState
from porch.directory import DirectoryEntry, DirectoryError, Withdrawn, decode_directory
from porch.health import LinkState
from porch.wire import decode_ack
from workers.links import OutputLink

log = logs.get("porch.worker")

MISSING_TARGET_S = 3.0  # a target the directory has not shown by then is reported missing
STALL_WARNING_S = 10.0  # how often a pipeline that cannot make progress says why
ACK_GRACE_MS = 200  # how long a finished target's final ack may still be on its way
DOWN_STATES = frozenset(
    {WorkerState.STOPPING, WorkerState.STOPPED, WorkerState.FAILED, WorkerState.BACKOFF}
)
# a target in these states is coming back
RESTARTING_STATES = frozenset({WorkerState.BACKOFF, WorkerState.STARTING})


class LinkStatus(TypedDict):
    """What status shows of one output link (a health report's `targets` entry)."""

    name: str
    state: LinkState
    since: float | None  # unix s it became unreachable
    held: int  # messages it holds unacknowledged


def link_state(link: OutputLink) -> LinkState:
    """The state status shows of one output link."""
    if link.gone:
        return LinkState.FINISHED
    if link.withdrawn_since is not None:
        return LinkState.UNREACHABLE
    if link.socket is None:
        return LinkState.NOT_FOUND
    if link.down:
        return LinkState.DOWN
    if link.handshaken:
        return LinkState.CONNECTED
    return LinkState.HANDSHAKE_FAILING if link.handshakes_failed else LinkState.CONNECTING


def link_status(link: OutputLink) -> LinkStatus:
    """What status shows of one output link: its state, since when (unix s), messages held."""
    return {
        "name": link.target,
        "state": link_state(link),
        "since": link.withdrawn_since,
        "held": link.data_held(),
    }


def missing_target(target: str, held: int, limit: int, known: Mapping[str, str]) -> tuple[str, str]:
    """What to say of a target without an endpoint, and the closest known name ("" if none):
    a listed one is not up yet; an unlisted one may be a misspelling of a listed one."""
    state = known.get(target)
    if state is not None:
        close, text = "", f"target {target!r} is {state}, no endpoint yet"
    else:
        found = difflib.get_close_matches(target, list(known), n=1)
        close, text = (found[0] if found else ""), f"target {target!r} not found"
    text += f"; {held} held (queue_limit {limit})"
    return text + (f"; did you mean {close!r}?" if close else ""), close


class TargetWatch:
    """Notices targets that are missing or unreachable, and says so (module doc)."""

    def __init__(
        self,
        pipeline: str,
        outputs: Sequence[OutputLink],
        started_s: float,
        localtime: Callable[[float], time.struct_time] = time.localtime,
    ) -> None:
        self.pipeline = pipeline
        self.outputs = outputs
        self.started_s = started_s  # monotonic
        self._next_warning: dict[str, float] = {}  # missing target -> when to warn again
        self._missing: dict[str, str] = {}  # missing target -> what we said of it
        self._localtime = localtime

    def check(self, now: float, known: Mapping[str, str]) -> None:
        """Warn of the targets still missing (`known`: every pipeline the directory lists, by
        name, with its state), once MISSING_TARGET_S have passed since the start."""
        if now - self.started_s < MISSING_TARGET_S:
            return
        for link in self.outputs:
            if link.socket is not None or link.gone:
                self._next_warning.pop(link.target, None)
                self._missing.pop(link.target, None)
                continue
            state = known.get(link.target)
            due = self._next_warning.get(link.target, 0.0)
            if now < due or (state is not None and not link.full()):
                continue  # a listed target that is slow to start is worth a word once we block
            self._next_warning[link.target] = now + STALL_WARNING_S
            held, limit = link.data_held(), link.settings.limit
            text, close = missing_target(link.target, held, limit, known)
            self._missing[link.target] = text
            log.warning("target_missing", pipeline=self.pipeline, target=link.target,
                        state=state, held=held, queue_limit=limit, closest=close or None,
                        known=len(known))  # fmt: skip

    def warnings(self) -> list[str]:
        """What keeps the targets from taking our output, for `porchctl status`."""
        parts = list(self._missing.values())
        parts += [
            f"target {link.target!r} unreachable since "
            f"{time.strftime('%H:%M:%S', self._localtime(link.withdrawn_since))}; "
            f"{link.data_held()} held"
            for link in self.outputs
            if link.withdrawn_since is not None and not link.gone
        ]
        return parts


class TargetDirectory:
    """What the last directory said of every pipeline, applied to our output links: connect to
    a target's endpoint, hold the output of one withdrawn by discovery, retire a finished one,
    mark one that is down for good or restarting."""

    def __init__(self, pipeline: str, outputs: Sequence[OutputLink]) -> None:
        self.pipeline = pipeline
        self.outputs = outputs
        self.known: dict[str, str] = {}  # every other pipeline the directory lists: its state
        self._names: tuple[str, ...] = ()  # every pipeline's name (sent when they change)

    def read(self, message: Mapping[str, object]) -> Mapping[str, DirectoryEntry] | None:
        """Take one DIRECTORY message: its entries, or None (said) when it cannot be read."""
        try:
            directory = decode_directory(message)
        except DirectoryError as exc:
            log.error("bad_directory", pipeline=self.pipeline, reason=str(exc))
            return None
        if directory.malformed:
            log.warning("bad_directory_entry", pipeline=self.pipeline,
                        entries=list(directory.malformed[:10]))  # fmt: skip
        if directory.names is not None:
            self._names = directory.names
        pipelines = directory.pipelines
        self.known = dict.fromkeys(self._names, "?")
        self.known.update({name: e.state.value for name, e in pipelines.items()})
        self.known.pop(self.pipeline, None)
        return pipelines

    def apply(self, pipelines: Mapping[str, DirectoryEntry]) -> None:
        """Point each output link where the directory says its target is."""
        for link in self.outputs:
            entry = pipelines.get(link.target)
            if entry is None:
                continue
            state = entry.state
            if state is WorkerState.FINISHED:  # its stream is over; stopped or failed may return
                self.retire(link)
                continue
            if state is Withdrawn.WITHDRAWN:  # its host fell silent: hold the output till back
                link.withdraw(entry.since if entry.since is not None else time.time())
                continue
            if entry.endpoint is not None:
                link.connect(
                    entry.endpoint,
                    entry.instance,
                    entry.key,
                    force=link.withdrawn_since is not None,  # rediscovered: don't wait on TCP
                )
            link.down = state in DOWN_STATES and state not in RESTARTING_STATES
            link.restarting = state in RESTARTING_STATES

    def retire(self, link: OutputLink) -> None:
        """The target finished: take its last acks, then drop (and say) what it never took."""
        if link.gone:
            return
        # the target's last ack (TCP) can arrive after the directory's "finished" (IPC)
        link.read_acks(decode_ack)
        if link.socket is not None and link.data_held() and link.socket.poll(ACK_GRACE_MS):
            link.read_acks(decode_ack)
        held = link.data_held()
        if held:
            log.warning("target_finished", pipeline=self.pipeline, target=link.target,
                        dropped=held)  # fmt: skip
        link.retire()
