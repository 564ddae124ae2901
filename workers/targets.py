"""What a worker says of its targets: each output link's state for status, and the warnings
about targets that keep the pipeline from making progress.

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
from porch.health import LinkState
from workers.links import OutputLink

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
