"""Dead letters of output links (workers/deadletter.py LinkLetters): a message a target would
not take is written with its value decoded by our serializer, or with its raw bytes only."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from porch.serializers import get
from porch.wire import FrameKind, HeaderEncoder
from workers.deadletter import DeadLetters, LinkLetters
from workers.links import Outgoing

pytestmark = pytest.mark.timeout(10)


def message(payload: list[bytes], seq: int = 7) -> Outgoing:
    serializer = get("json")
    header = HeaderEncoder(serializer.id, 1, "src").encode_data(FrameKind.DATA, seq, [(1, ())])
    frames = [header + payload[0], *payload[1:]]
    return Outgoing(seq, frames, sum(len(p) for p in payload), FrameKind.DATA)


def test_a_message_a_target_refused_is_written_with_its_value(tmp_path: Path) -> None:
    serializer = get("json")
    letters = DeadLetters(tmp_path, "src")
    write = LinkLetters(letters, serializer)

    with capture_logs() as logs:
        write("sink", message(serializer.dumps({"n": 3})), "target crashed on it 3 times")

    (entry,) = [json.loads(line) for line in (tmp_path / "src.jsonl").read_text().splitlines()]
    assert (entry["pipeline"], entry["source"]) == ("src", "src")
    assert entry["reason"] == "target crashed on it 3 times"
    assert entry["input"] == "{'n': 3}"
    assert letters.count == 1
    (event,) = logs
    assert (event["event"], event["target"], event["seq"]) == ("dead_lettered", "sink", 7)
    assert event["file"] == str(tmp_path / "src.jsonl")


def test_bytes_our_serializer_cannot_load_are_kept_raw(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path, "src")
    LinkLetters(letters, get("json"))("sink", message([b"\xff not json"]), "overflow")

    entry = json.loads((tmp_path / "src.jsonl").read_text())
    assert entry["input"] == "None"
    assert [base64.b64decode(p) for p in entry["payload_b64"]] == [b"\xff not json"]
