"""What a worker knows of its sources beyond their messages: who they are, whether they are
all connected, and what the directory says of them.

- Start: a worker with inputs waits until every source said hello (DPorch's handshake rule),
  saying every STALL_WARNING_S which ones it still waits for (`wait_for_all`).
- Finished: a source the directory calls finished ends its stream here too, after a grace
  period for its last messages (its EOS may have been lost if it never had our acks). Local
  entries name their targets, so a source that ended for good before it ever connected
  (os._exit, or it finished before this worker was restarted) is known by name: it counts as
  connected, and its stream ends after the same grace period.
- Down: a source that failed or was stopped for good is said once (a log line) and shown in
  status's warning until it comes back: the pipeline waits for it.
- Replicas: the processes NAME#TAG-K of a replicated source are one source NAME (connected once
  one of them said hello). Each one's finish counts as above; NAME's stream ends once every
  replica the directory lists as live has ended (workers/scheduler.py FanIn.set_live): one gone
  from the directory (scaled away), withdrawn, or down for good does not hold it open. NAME is
  down (and waited for) only when none of its replicas is live.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from porch import logs
from porch.control import WorkerState
from porch.directory import DirectoryEntry, Withdrawn
from porch.names import is_replica, pipeline_of
from workers.inbox import Inbox
from workers.scheduler import TooManySources
from workers.signals import DRAIN_TIMEOUT_S, StopSignals
from workers.targets import STALL_WARNING_S

log = logs.get("porch.worker")

POLL_MS = 1000  # one wait for sources (a hello, a control message or a signal wakes it)


def named_sources(pipelines: Mapping[str, DirectoryEntry], me: str) -> list[str]:
    """The pipelines of a directory that name `me` among their targets (local entries list
    their targets; a worker knows only how many sources it has, not which)."""
    return [name for name, entry in pipelines.items() if me in entry.targets]


def down_for_good(entry: DirectoryEntry) -> bool:
    """Whether the directory says a pipeline failed or was stopped for good."""
    return entry.final and (entry.state is WorkerState.FAILED or entry.state is WorkerState.STOPPED)


def live_replicas(
    pipelines: Mapping[str, DirectoryEntry], sources: set[str]
) -> dict[str, set[str]]:
    """The replicas of each replicated source in `sources` that the directory lists as live:
    neither withdrawn nor down for good (a finished one is live until its stream ended)."""
    live: dict[str, set[str]] = {}
    for name, entry in pipelines.items():
        if not is_replica(name) or (pipeline := pipeline_of(name)) not in sources:
            continue
        replicas = live.setdefault(pipeline, set())
        if entry.state is not Withdrawn.WITHDRAWN and not down_for_good(entry):
            replicas.add(name)
    return live


class SourceWatch:
    """A worker's sources as the directory shows them (module doc)."""

    def __init__(
        self,
        pipeline: str,
        inbox: Inbox,
        stop: StopSignals,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.me = pipeline_of(pipeline)  # what our sources name as their target
        self.inbox = inbox
        self.stop = stop
        self.named: list[str] = []  # local pipelines that name us as a target
        # sources that failed or were stopped for good: name -> state (said once, in status)
        self.down: dict[str, WorkerState] = {}
        # sources the directory calls finished: name -> (when to treat it as ended, seq seen)
        self._finished: dict[str, tuple[float, int]] = {}
        self._clock = clock

    def wait_for_all(self, wait: Callable[[int], None], expected: int) -> bool:
        """Wait (`wait` serves the sockets) until every source said hello; False when a stop
        came first. True also when a source ended for good before the others came."""
        fanin = self.inbox.fanin
        log.info("waiting_for_sources", pipeline=self.pipeline, expected=expected)
        next_warning = self._clock() + STALL_WARNING_S
        while not fanin.all_connected():
            if self.stop.requested:
                return False
            if fanin.exhausted():
                break  # a source ended for good before the others came: no input set can form
            wait(POLL_MS)
            if self._clock() > next_warning:
                next_warning += STALL_WARNING_S
                absent = sorted({pipeline_of(n) for n in self.named} - set(fanin.sources))
                log.warning("still_waiting_for_sources", pipeline=self.pipeline,
                            expected=expected, connected=fanin.sources,
                            not_connected=absent)  # fmt: skip
        return True

    def note(self, pipelines: Mapping[str, DirectoryEntry]) -> None:
        """Read a directory: sources down for good, finished, or finished before they came."""
        fanin = self.inbox.fanin
        self.named = named_sources(pipelines, self.me)
        sources = {*fanin.sources, *(pipeline_of(name) for name in self.named)}
        live = live_replicas(pipelines, sources)
        for pipeline, replicas in live.items():
            fanin.set_live(pipeline, replicas)
            self._note_replicas(pipeline, replicas, pipelines)
        for name in dict.fromkeys([*fanin.sources, *self.named, *self._replicas_of(live)]):
            entry = pipelines.get(name)
            if entry is None:
                continue
            state, final = entry.state, entry.final
            if is_replica(name):  # a replicated source is down as one (_note_replicas)
                pass
            elif final and (state is WorkerState.FAILED or state is WorkerState.STOPPED):
                self._say_down(name, state)
            else:
                self.down.pop(name, None)
            if state is not WorkerState.FINISHED:
                continue
            if name not in fanin:
                if not final:
                    continue
                try:
                    fanin.connect(name)
                except TooManySources:
                    continue  # more pipelines target us than we expect: validate says so
                log.info("source_already_finished", pipeline=self.pipeline, source=name)
            self._finished.setdefault(name, (0.0, -1))

    @staticmethod
    def _replicas_of(live: Mapping[str, set[str]]) -> list[str]:
        return sorted(name for replicas in live.values() for name in replicas)

    def _note_replicas(
        self, pipeline: str, live: set[str], pipelines: Mapping[str, DirectoryEntry]
    ) -> None:
        """A replicated source is down only when none of its replicas is live."""
        if live:
            self.down.pop(pipeline, None)
            return
        states = [
            entry.state
            for name, entry in pipelines.items()
            if is_replica(name) and pipeline_of(name) == pipeline and down_for_good(entry)
        ]
        if states:
            failed = WorkerState.FAILED in states
            self._say_down(pipeline, WorkerState.FAILED if failed else WorkerState.STOPPED)

    def _say_down(self, name: str, state: WorkerState) -> None:
        if self.down.get(name) == state or self.stop.requested:
            return
        self.down[name] = state  # not silent: say whom we wait for
        say = log.warning if state is WorkerState.FAILED else log.info
        say(f"source_{state.value}", pipeline=self.pipeline, source=name,
            hint=f"waiting for it; porchctl start {name}")  # fmt: skip

    def end_overdue(self) -> None:
        """End the stream of each finished source whose last messages stopped arriving
        DRAIN_TIMEOUT_S ago (or that never came)."""
        now = self._clock()
        for name, (due, seen) in list(self._finished.items()):
            source = self.inbox.sources.get(name)
            received = source.received if source is not None else 0
            if received != seen:  # still arriving: its last messages are in flight
                self._finished[name] = (now + DRAIN_TIMEOUT_S, received)
            elif now >= due:
                del self._finished[name]
                if self.inbox.fanin.has_ended(name):
                    continue
                if source is None:  # it ended before this instance of ours started
                    log.info("source_ended_earlier", pipeline=self.pipeline, source=name)
                else:
                    log.warning("source_finished_without_eos", pipeline=self.pipeline,
                                source=name)  # fmt: skip
                self.inbox.fanin.end(name)

    def warnings(self) -> list[str]:
        """The sources the pipeline waits for, for `porchctl status`."""
        return [
            f"source {name!r} {state.value}; waiting for it"
            for name, state in sorted(self.down.items())
        ]
