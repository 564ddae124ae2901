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
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from typing import Any, TypedDict

from porch import logs
from porch.control import WorkerState
from porch.directory import DirectoryEntry, DirectoryError, decode_directory
from porch.health import LinkState
from porch.names import is_replica, pipeline_of
from porch.wire import FrameKind
from workers.links import OutputLink
from workers.replicas import Keep, Output, TargetGroup, dissolve, finish, follow, shown_links

log = logs.get("porch.worker")

MISSING_TARGET_S = 3.0  # a target the directory has not shown by then is reported missing
STALL_WARNING_S = 10.0  # how often a pipeline that cannot make progress says why


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
        outputs: Sequence[Output],
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
        parts = list(self._missing.values()) if self._missing else []
        for output in self.outputs:  # (a loop, not shown_links: an idle worker's every second)
            if not isinstance(output, TargetGroup) and output.withdrawn_since is None:
                continue
            parts += [
                f"target {link.target!r} unreachable since "
                f"{time.strftime('%H:%M:%S', self._localtime(link.withdrawn_since))}; "
                f"{link.data_held()} held"
                for link in shown_links([output])
                if link.withdrawn_since is not None and not link.gone
            ]
        return parts


class TargetDirectory:
    """What the last directory said of every pipeline, applied to our output links: connect to
    a target's endpoint, hold the output of one withdrawn by discovery, retire a finished one,
    mark one that is down for good or restarting. A target the directory lists as replicas
    becomes a TargetGroup in `outputs` (workers/replicas.py), its link's values handed to it."""

    def __init__(
        self,
        pipeline: str,
        outputs: MutableSequence[Output],
        *,
        loads: Callable[[Sequence[Any]], Any] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.outputs = outputs
        self.loads = loads  # the serializer's (partition_by routes values taken out of a link)
        self.known: dict[str, str] = {}  # every other pipeline the directory lists: its state
        self._names: tuple[str, ...] = ()  # every pipeline's name (sent when they change)
        self.on_groups: Callable[[], None] | None = None  # the groups' routing may have changed
        self.keep: Keep | None = None  # a durable outbox's row for a value handed on

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
        # replicas are known by their pipeline's name (a running one's state, if any)
        self.known = dict.fromkeys(map(pipeline_of, self._names), "?")
        for name, listed in pipelines.items():
            known = pipeline_of(name)
            if known == name or self.known.get(known) != WorkerState.RUNNING.value:
                self.known[known] = listed.state.value
        self.known.pop(self.pipeline, None)
        self.known.pop(pipeline_of(self.pipeline), None)
        return pipelines

    def apply(self, pipelines: Mapping[str, DirectoryEntry]) -> None:
        """Point each output link where the directory says its target is."""
        replicas: dict[str, dict[str, DirectoryEntry]] = {}
        for name, entry in pipelines.items():
            if is_replica(name):
                replicas.setdefault(pipeline_of(name), {})[name] = entry
        grouped = False
        for index, output in enumerate(self.outputs):
            grouped = grouped or isinstance(output, TargetGroup)
            if isinstance(output, TargetGroup) and pipelines.get(output.target) is None:
                output.apply(replicas.get(output.target, {}))
                continue
            if isinstance(output, TargetGroup):  # it runs as one process again (a reload)
                link = self.outputs[index] = dissolve(output)
                log.info("target_unreplicated", pipeline=self.pipeline, target=link.target,
                         handed_on=link.data_held())  # fmt: skip
            else:
                link = output
            listed = pipelines.get(link.target)
            if listed is None:
                if link.target in replicas:
                    self.outputs[index] = self._group(link, replicas[link.target])
                    grouped = True
                continue
            if listed.state is WorkerState.FINISHED:  # over; stopped or failed may return
                self.retire(link)
                continue
            follow(link, listed)
        if grouped and self.on_groups is not None:
            self.on_groups()

    def _group(self, link: OutputLink, entries: Mapping[str, DirectoryEntry]) -> TargetGroup:
        """The target turned out to be replicas: a group of links like `link`, given what
        `link` held, in order (numbered then, for an ordered target)."""
        conn, framer = link.conn, link.framer

        def make_link(name: str) -> OutputLink:
            return OutputLink(conn.ctx, name, framer.headers, link.settings, link.on_dead_letter,
                              security=conn.security)  # fmt: skip

        group = TargetGroup(link.target, self.pipeline, make_link, link.settings, framer.stream,
                            loads=self.loads, keep=self.keep)  # fmt: skip
        group.apply(entries)
        ended = any(message.kind is FrameKind.EOS for message in link.outbox)
        held = link.take_data()
        link.retire()
        group.dropped += link.dropped  # (overflow drop_oldest before the directory came)
        # a value stored for it (durable outbox) while it waited on this link goes to the
        # group with a row of its own (Waiter.hand_over): this one's row goes too
        link.outbox.released = link.next_seq
        log.info("target_replicated", pipeline=self.pipeline, target=link.target,
                 replicas=len(entries), ordered=group.numbers.on,
                 partition_by=group.router.partition_by, handed_on=len(held))  # fmt: skip
        group.hand_on(held, renumber=True)
        if ended:  # the directory came while the worker was closing
            group.force(FrameKind.EOS, [])
        elif link.end.bye_pending or link.end.unconfirmed:
            group.say_bye()
        return group

    def retire(self, link: OutputLink) -> None:
        """The target finished: take its last acks, then drop (and say) what it never took."""
        finish(link, self.pipeline)
