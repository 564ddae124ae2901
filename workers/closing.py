"""The close protocol: how a worker ends its output links and what it says of the rest.

Every link is ended (EOS when the stream finished, BYE when it stopped or failed), then the
worker serves its links until the targets have acknowledged what they were sent:
- a finished stream waits up to `finish_timeout_s`, also for targets that are down (they may
  come back and take it);
- a stopping worker waits until its stop deadline, and not for targets that are down;
- a failed worker waits as long as a stop would take, and not for targets that are down.
Past the deadline, what is held is lost (memory outbox: an error, counted as dropped) or kept
for the next start (durable outbox: a warning). A loss, or a finished stream that could not be
delivered, raises DeliveryError: the worker exits failed. A replicated target is waited for
replica by replica (its EOS goes out once no replica holds a value: workers/replicas.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from porch import logs
from porch.errors import DeliveryError
from porch.wire import FrameKind
from workers.links import OutputLink
from workers.replicas import Output, all_links
from workers.signals import StopSignals
from workers.targets import STALL_WARNING_S

log = logs.get("porch.worker")

FLUSH_TIMEOUT_S = 5.0  # at-most-once: how long ZeroMQ may keep writing out at the end
WAIT_MS = 50  # one wait for acknowledgements while closing


class OutputClose:
    """Ends a worker's output links and waits for their acknowledgements (module doc)."""

    def __init__(
        self,
        pipeline: str,
        outputs: Sequence[Output],
        stop: StopSignals,
        *,
        finish_timeout_s: float,
        stop_timeout_s: float,
        kept: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.outputs = outputs
        self.stop = stop
        self.finish_timeout_s = finish_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.kept = kept  # a durable outbox keeps what is not acknowledged for the next start
        self._clock = clock

    def run(
        self, finished: bool, wait: Callable[[int], None], read_acks: Callable[[], None]
    ) -> None:
        """End every link and wait (`wait` serves the links, the control channel and signals)
        until the targets have acknowledged everything or the deadline passed; then close the
        links. Raises DeliveryError where output is lost."""
        for link in self.outputs:
            if finished:
                link.force(FrameKind.EOS, [])
            else:
                link.say_bye()
        now = self._clock()
        finish_deadline = now + (self.finish_timeout_s if finished else 0.0)
        if not finished and not self.stop.requested:  # failed: as long as a stop would take
            finish_deadline = now + self.stop.stop_budget_s
        next_warning = now + STALL_WARNING_S
        while waiting := self.undelivered(finished):
            now = self._clock()
            deadline = self.stop.stop_deadline if self.stop.requested else finish_deadline
            if now >= deadline:
                break
            if now >= next_warning:
                next_warning = now + STALL_WARNING_S
                for link in waiting:
                    log.warning("output_waiting", pipeline=self.pipeline, target=link.target,
                                messages=link.data_held(),
                                give_up_in_s=round(deadline - now))  # fmt: skip
            wait(WAIT_MS)
        read_acks()
        try:
            self.check_delivered(finished)
        finally:
            for link in all_links(self.outputs):
                # at-most-once has nothing to wait for but ZeroMQ's own queue: give it time
                link.close(linger_ms=300 if link.settings.acked else int(FLUSH_TIMEOUT_S * 1000))

    def undelivered(self, finished: bool) -> list[OutputLink]:
        """The links still waiting for acknowledgements worth waiting for: a stopping worker
        gives up on targets that are down; a finished stream waits for them to come back."""
        give_up_on_down = self.stop.requested or not finished
        return [
            link
            for link in all_links(self.outputs)
            if not link.delivered
            # at-most-once waits only for a live target to confirm our end (no replay)
            and not (link.down and (give_up_on_down or not link.settings.acked))
        ]

    def check_delivered(self, finished: bool) -> None:
        """Say what the targets did not acknowledge: an error where it is lost, or where a
        finished stream could not be delivered; a warning where a durable outbox keeps it."""
        kept = self.kept
        links = all_links(self.outputs)
        undelivered = [(link, link.data_held()) for link in links if not link.gone]
        undelivered = [(link, held) for link, held in undelivered if held]
        if not undelivered:
            return
        for link, held in undelivered:
            if not kept:
                link.dropped += held
            say = log.warning if kept else log.error
            say("output_unacknowledged", pipeline=self.pipeline, target=link.target,
                messages=held, kept=kept)  # fmt: skip
        if kept and not finished:
            return  # replayed by the next start
        what = ", ".join(f"{held} messages for {link.target}" for link, held in undelivered)
        if finished and not self.stop.requested:
            why = f"its stream ended but {what} were not delivered within finish_timeout_s "
            why += f"{self.finish_timeout_s:g} s"
        else:
            why = f"{what} were not acknowledged before the stop deadline "
            why += f"(--stop-timeout {self.stop_timeout_s:g} s)"
        fate = "kept in the durable outbox for the next start" if kept else "lost"
        raise DeliveryError(f"{why}: {fate}")  # the supervisor names the pipeline
