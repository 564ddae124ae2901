"""The directory's one typed definition: what a supervisor tells its workers, coded both ways
(no sockets)."""

from __future__ import annotations

import json

import pytest

from porch.control import MessageType, WorkerState, decode
from porch.directory import (
    DIRECTORY_VERSION,
    Directory,
    DirectoryEntry,
    DirectoryError,
    Entry,
    Withdrawn,
    decode_directory,
    encode_directory,
)
from porch.discovery import Beacon, encode
from porch.discovery import decode as decode_beacon

pytestmark = pytest.mark.timeout(10)

LOCAL = DirectoryEntry(WorkerState.RUNNING, "tcp://127.0.0.1:5000", "local", 3, "k1",
                       ("sink",), False)  # fmt: skip
GONE = DirectoryEntry(Withdrawn.WITHDRAWN, None, "10.0.0.2", 1, "k2", since=1700000000.5)
ENDED = DirectoryEntry(WorkerState.FINISHED, None, "local", 2, None, ("sink",), final=True)


def _round_trip(data: bytes) -> Directory:
    kind, message = decode(data)
    assert kind is MessageType.DIRECTORY
    return decode_directory(message)


def test_entries_and_names_survive_the_round_trip() -> None:
    pipelines = {"source": LOCAL, "remote": GONE, "done": ENDED}
    directory = _round_trip(encode_directory(pipelines, ["done", "remote", "source"]))

    assert directory.pipelines == pipelines
    assert directory.names == ("done", "remote", "source")
    assert directory.malformed == ()
    assert _round_trip(encode_directory(pipelines)).names is None  # names unchanged: not sent


def test_the_wire_keeps_the_fields_workers_of_before_read() -> None:
    message = json.loads(encode_directory({"source": LOCAL, "remote": GONE}))

    assert message["v"] == DIRECTORY_VERSION
    assert message["pipelines"]["source"] == {
        "endpoint": "tcp://127.0.0.1:5000", "state": "running", "instance": 3, "host": "local",
        "key": "k1", "targets": ["sink"], "final": False,
    }  # fmt: skip
    assert message["pipelines"]["remote"]["state"] == "withdrawn"
    assert message["pipelines"]["remote"]["since"] == 1700000000.5


def test_a_directory_without_a_version_is_read_as_version_1() -> None:
    """What supervisors sent before the field existed: the same format, tolerated."""
    directory = decode_directory({"pipelines": {"a": {"state": "stopped"}}})

    assert directory.pipelines == {"a": DirectoryEntry(WorkerState.STOPPED)}


def test_another_version_is_refused_with_a_clear_error() -> None:
    with pytest.raises(DirectoryError, match=r"directory version 2 is not supported.*restart"):
        decode_directory({"v": 2, "pipelines": {}})
    with pytest.raises(DirectoryError, match="pipelines must be"):
        decode_directory({"pipelines": ["a"]})


def test_entries_that_are_not_entries_are_left_out_and_named() -> None:
    directory = decode_directory({
        "pipelines": {
            "odd": "not an entry",
            "dancing": {"state": "dancing"},
            "ok": {"state": "backoff", "instance": True, "since": float("nan"), "targets": [1]},
        }
    })  # fmt: skip

    assert directory.malformed == ("odd", "dancing")
    assert directory.pipelines == {"ok": DirectoryEntry(WorkerState.BACKOFF)}


def test_states_are_enums_equal_to_their_names() -> None:
    entry = Entry("a", None, "running")  # type: ignore[arg-type]

    assert entry.state is WorkerState.RUNNING
    assert entry.live
    assert not Entry("a", None, WorkerState.FAILED).live
    assert WorkerState.RUNNING == "running" and Withdrawn.WITHDRAWN == "withdrawn"
    with pytest.raises(ValueError):
        Entry("a", None, "withdrawn")  # type: ignore[arg-type]


# What porch before the typed directory (311efa9) put on the wire for this beacon: hosts on
# either side of the change must read each other, so the bytes stay these.
BEACON_V1 = (
    b'PRCH\x01\x00{"v":1,"daemon":"d1","origin":"o1","host":"10.0.0.1","hostname":"alpha",'
    b'"sent_at":1234.5,"nonce":"n1","seq":9,"entries":[{"name":"pipeline_a","endpoint":'
    b'"tcp://10.0.0.1:4000","state":"running","instance":7,"key":"00112233aabbccdd",'
    b'"endpoints":["tcp://10.0.0.1:4000","tcp://10.1.0.1:4000"],"targets":["pipeline_b"]},'
    b'{"name":"pipeline_b","endpoint":null,"state":"finished","final":true}]}'
)


def test_beacons_keep_their_bytes_across_the_typed_entries() -> None:
    first = Entry("pipeline_a", "tcp://10.0.0.1:4000", WorkerState.RUNNING, 7,
                  key="00112233aabbccdd", endpoints=("tcp://10.0.0.1:4000", "tcp://10.1.0.1:4000"),
                  targets=("pipeline_b",))  # fmt: skip
    second = Entry("pipeline_b", None, WorkerState.FINISHED, final=True)
    beacon = Beacon("d1", "o1", "10.0.0.1", "alpha", 1234.5, "n1", 9, (first, second))

    assert encode(beacon) == BEACON_V1
    assert decode_beacon(BEACON_V1).entries == (first, second)
