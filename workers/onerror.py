"""What `on_error` does with an input the pipeline could not process: a step() that raised, a
value the serializer could not encode, an input that did not decode.

`stop` fails the pipeline (the caller raises); `skip` logs the input and goes on;
`dead-letter` writes it to the pipeline's dead-letter file (workers/deadletter.py) and goes
on. Each skipped input counts once in the `skipped` counter.
"""

from __future__ import annotations

from typing import Any

from porch import logs
from porch.config import OnError
from porch.errors import ScriptError
from porch.serializers import SerializationError
from workers.deadletter import DeadLetters, summary
from workers.heartbeat import Counters
from workers.inbox import Inbox, Undecodable
from workers.scheduler import Inputs

log = logs.get("porch.worker")


class ErrorPolicy:
    """One pipeline's `on_error`, applied to the inputs it could not process."""

    def __init__(
        self, pipeline: str, on_error: OnError, counters: Counters, letters: DeadLetters
    ) -> None:
        self.pipeline = pipeline
        self.on_error = on_error
        self.counters = counters
        self.letters = letters

    @property
    def fails(self) -> bool:
        """Whether an input that cannot be processed fails the pipeline (on_error stop)."""
        return self.on_error is OnError.STOP

    def poison(self, exc: ScriptError, inputs: Any) -> None:
        """on_error skip / dead-letter: record the input that made step() raise, and go on."""
        self.counters.skipped += 1
        if self.on_error is OnError.DEAD_LETTER:
            path = self.letters.write(str(exc), value=inputs, traceback=exc.user_traceback)
            log.error("dead_lettered", pipeline=self.pipeline, error=str(exc), file=str(path))
        else:
            log.warning("input_skipped", pipeline=self.pipeline, error=str(exc),
                        input=summary(inputs)[:200])  # fmt: skip

    def decoded(self, inbox: Inbox, values: Inputs) -> bool:
        """Whether every value of this input set decoded; if not, on_error decides, as for a
        failing step(): stop fails the pipeline, skip and dead-letter go on."""
        bad = [v for v in values.values() if isinstance(v, Undecodable)]
        inbox.undecodable -= len(bad)
        if not bad:
            return True
        if self.on_error is OnError.STOP:
            raise SerializationError(f'{bad[0].error}; or set "on_error" to skip or dead-letter')
        self.counters.skipped += 1
        for item in bad:
            if self.on_error is OnError.DEAD_LETTER:
                path = self.letters.write(item.error, value=values, payload=item.payload,
                                          source=item.source)  # fmt: skip
                log.error("dead_lettered", pipeline=self.pipeline, source=item.source,
                          error=item.error, file=str(path))  # fmt: skip
            else:
                log.warning("input_skipped", pipeline=self.pipeline, source=item.source,
                            error=item.error, input=summary(values)[:200])  # fmt: skip
        return False
