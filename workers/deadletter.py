"""Dead letters: inputs that a pipeline could not process, kept as JSON lines for a human."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from porch import logs
from porch.paths import ensure_private_dir, open_private_file
from porch.serializers import Serializer
from porch.wire import decode_prefix

if TYPE_CHECKING:
    from workers.sendqueue import Outgoing

log = logs.get("porch.worker")

MAX_REPR = 2000


class DeadLetters:
    """Appends one JSON line per dead letter to `<folder>/<pipeline>.jsonl`."""

    def __init__(self, folder: Path, pipeline: str) -> None:
        self.path = folder / f"{pipeline}.jsonl"
        self.pipeline = pipeline
        self.count = 0

    def write(
        self,
        reason: str,
        *,
        value: Any = None,
        payload: list[Any] | None = None,
        traceback: str = "",
        source: str = "",
    ) -> Path:
        """Record one dead letter: a summary of the value, its wire bytes if any, and why."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pipeline": self.pipeline,
            "source": source,
            "reason": reason,
            "input": summary(value),
            "payload_b64": [base64.b64encode(bytes(f)).decode() for f in payload or []],
            "traceback": traceback,
        }
        ensure_private_dir(self.path.parent)  # never through a symlink or into others' files
        fd = open_private_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        self.count += 1
        return self.path


class LinkLetters:
    """Dead letters for the messages an output link gives up on (see OutputLink's
    on_dead_letter): each with its value decoded where our own serializer can."""

    def __init__(self, letters: DeadLetters, serializer: Serializer) -> None:
        self.letters = letters
        self.serializer = serializer

    def __call__(self, target: str, message: Outgoing, reason: str) -> None:
        """Write one message `target` did not take, and say so."""
        head = bytes(message.frames[0])
        _, end = decode_prefix(head)
        payload = [head[end:], *message.frames[1:]] if len(head) > end else message.frames[1:]
        try:
            value = self.serializer.loads(payload)
        except Exception:  # our own bytes; if they don't load, the raw payload still helps
            value = None
        pipeline = self.letters.pipeline
        path = self.letters.write(reason, value=value, payload=payload, source=pipeline)
        log.error("dead_lettered", pipeline=pipeline, target=target, seq=message.seq,
                  reason=reason, file=str(path))  # fmt: skip


def summary(value: Any) -> str:
    """A bounded one-line repr of a value, for logs and dead letters."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise; the summary must not
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    text = " ".join(text.split())
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."
