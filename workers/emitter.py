"""The output side of the message loop: each value step() returned goes to every target.

A value is serialized once and handed to every output link (a small one joins each link's
batch; a full link makes the loop wait, workers/waiting.py), with its origin: a source (or a
fan_in any stage: a loop must not carry one origin round and round) stamps its values with
its own origin ids, `(stream, seq)` (the seq travels as a bare int, the stream in the link's
header); every other stage passes its inputs' origin on. A stage that sends nothing for an
input (SKIP, a failed step()) passes a marker (an empty frame) on, so a join downstream drops
that origin's partner. With a durable outbox each value is stored before it is sent.

A replicated target (workers/replicas.py) takes a value like a link does; one that routes by
`partition_by` is first told the value (a value it cannot route fails like step() would).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from porch.errors import ScriptError
from porch.serializers import SerializationError, Serializer
from porch.wire import FrameKind, Origin
from workers.heartbeat import Counters
from workers.host import ScriptHost
from workers.onerror import ErrorPolicy
from workers.outbox import DurableOutbox
from workers.replicas import Output, PartitionError, TargetGroup

HandOver = Callable[[Output, FrameKind, list[Any], Origin | int], None]


class Emitter:
    """Sends a pipeline's values and skip markers to its output links (module doc)."""

    def __init__(
        self,
        pipeline: str,
        outputs: Sequence[Output],
        serializer: Serializer,
        durable: DurableOutbox | None,
        counters: Counters,
        *,
        stamps: bool,
        host: ScriptHost,
        errors: ErrorPolicy,
        hand_over: HandOver,
    ) -> None:
        self.outputs = outputs
        self.serializer = serializer
        self.durable = durable
        self.counters = counters
        self.stamps = stamps
        self.host = host
        self.errors = errors
        self.hand_over = hand_over
        epoch = random.getrandbits(63)
        self.origin_seq = 1  # the next of our own origin ids (stamps only)
        if durable is not None and stamps:
            epoch, self.origin_seq = durable.origin_start(epoch)
        self.stream = (pipeline, epoch)
        for link in outputs:
            if not isinstance(link, TargetGroup):
                link.framer.stream = self.stream
        self.routed: list[TargetGroup] = []  # targets that route each value by partition_by

    def outputs_changed(self) -> None:
        """A target became replicas, or its replicas' partition_by changed."""
        self.routed = [
            o for o in self.outputs if isinstance(o, TargetGroup) and o.router.partition_by
        ]

    def own_origins(self, count: int) -> range:
        """The next `count` of our own origin seqs (a burst of a stamping pipeline's values)."""
        first = self.origin_seq
        self.origin_seq = first + count
        return range(first, first + count)

    def emit(self, value: Any, inputs: Any, origin: Origin) -> bool:
        """Send `value` to every target; False if the serializer could not encode it (then
        on_error decides, as for a failing step())."""
        if not self.outputs:
            return True
        try:
            payload = self.serializer.dumps(value)
            for group in self.routed:
                group.aim(value)
        except (SerializationError, PartitionError) as exc:
            error = ScriptError(f"{self.host.output_origin()}: step() returned {exc}")
            if self.errors.fails:
                raise error from None
            self.errors.poison(error, inputs)
            return False
        stamp: Origin | int = origin
        if self.stamps:  # the links take our own origin seq as a bare int (the hot path)
            stamp = own = self.origin_seq
            self.origin_seq = own + 1
            if self.durable is not None:
                self.durable.store(payload, (self.stream, own), own)
        elif self.durable is not None:
            self.durable.store(payload, origin)
        if len(payload) == 1:  # the hot path: one small frame joins each link's batch
            item = payload[0]
            for link in self.outputs:
                if not link.add(item, stamp):
                    self.hand_over(link, FrameKind.DATA, payload, stamp)
        else:
            for link in self.outputs:
                self.hand_over(link, FrameKind.DATA, payload, stamp)
        self.counters.msgs_out += 1
        return True

    def pass_marker(self, origin: Origin) -> None:
        """This stage will send nothing for `origin`: say so, so a join drops its partner."""
        if self.stamps or not origin or not self.outputs:
            return  # a stamping stage's own ids are never joined on what it skips
        if self.durable is not None:
            self.durable.store([b""], origin)
        for link in self.outputs:
            self.hand_over(link, FrameKind.DATA, [b""], origin)
