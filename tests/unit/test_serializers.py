"""Script-defined types by value, the fast path for plain values, and the errors that name
what cannot be sent or decoded."""

from __future__ import annotations

import pickle
import sys
import textwrap
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
import zmq

from porch import serializers
from porch.host import load_script
from porch.serializers import SerializationError, decode_failure, pickle_globals
from porch.wire import FrameKind, encode_batch, encode_header
from workers.inbox import Inbox, Undecodable

pytestmark = pytest.mark.timeout(30)

SCRIPT = """
    import enum
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: int
        y: int

        def norm(self):
            return abs(self.x) + abs(self.y)

    class Color(enum.Enum):
        RED = 1

    class Left:
        pass

    class Right:
        other = Left

    Left.other = Right  # classes that refer to each other

    def double(x):
        return 2 * x

    def step():
        return {"point": Point(1, -2), "color": Color.RED, "double": double,
                "lambda": lambda x: x + 1}
"""


@pytest.fixture
def script(tmp_path: Path) -> Any:
    """A loaded script module, as a worker loads it (its name is unique to this test)."""
    path = tmp_path / "shapes_src.py"
    path.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    loaded = load_script(path, 0, f"p{uuid.uuid4().hex[:8]}")
    yield loaded.module
    sys.modules.pop(loaded.module.__name__, None)


def received(name: str, value: Any, module_name: str) -> Any:
    """`value` sent and loaded where the script's module does not exist."""
    serializer = serializers.get(name)
    frames = [bytes(f) for f in serializer.dumps(value)]
    module = sys.modules.pop(module_name)
    try:
        return serializer.loads(frames)
    finally:
        sys.modules[module_name] = module


@pytest.mark.parametrize("name", ["pickle", "dill"])
def test_script_defined_types_travel_by_value(script: Any, name: str) -> None:
    value = {"point": script.Point(1, -2), "color": script.Color.RED, "left": script.Left()}

    got = received(name, value, script.__name__)

    assert got["point"].norm() == 3 and repr(got["point"]) == "Point(x=1, y=-2)"
    assert got["color"].name == "RED"
    assert type(got["left"]).other.other is type(got["left"])
    frames = serializers.get(name).dumps(value)
    assert not any(g.startswith(script.__name__) for g in pickle_globals(bytes(frames[0])))


def test_dill_sends_script_functions_and_lambdas_by_value(script: Any) -> None:
    value = script.step()

    got = received("dill", {"double": value["double"], "lambda": value["lambda"]}, script.__name__)

    assert got["double"](21) == 42 and got["lambda"](1) == 2


def test_plain_values_take_the_fast_path_unchanged() -> None:
    value = {"a": 1, "b": [1.5, "x"], "c": None}

    assert serializers.get("pickle").dumps(value) == [pickle.dumps(value, protocol=5)]


def test_pickle_refuses_a_script_lambda_naming_it_and_the_fix(script: Any) -> None:
    with pytest.raises(SerializationError) as info:
        serializers.get("pickle").dumps({"ok": 1, "f": [0, script.step()["lambda"]]})

    message = str(info.value)
    assert "a dict whose ['f'][1] is a lambda (step.<locals>.<lambda>)" in message, message
    assert '"serializer": "dill"' in message and "plain data" in message


def test_an_open_file_is_refused_naming_its_type(tmp_path: Path) -> None:
    with (tmp_path / "f.txt").open("w") as handle, pytest.raises(SerializationError) as info:
        serializers.get("pickle").dumps(handle)

    assert str(info.value).startswith("a _io.TextIOWrapper, which the pickle serializer cannot")


def test_decode_failure_names_sender_type_and_fix() -> None:
    module = types.ModuleType("shapes_elsewhere")
    exec("class Point:\n    pass", module.__dict__)
    sys.modules[module.__name__] = module
    head = pickle.dumps({"p": module.Point()}, protocol=5)
    del sys.modules[module.__name__]

    with pytest.raises(ModuleNotFoundError) as info:
        pickle.loads(head)
    message = decode_failure("pickle", head, info.value, "src")

    assert pickle_globals(head) == ["shapes_elsewhere:Point"]
    assert "value from 'src'" in message and "type shapes_elsewhere.Point" in message, message
    assert "install module 'shapes_elsewhere'" in message, message


def inbox_receiving(accepts: str, count: int, *frames: bytes) -> tuple[Inbox, list[Any]]:
    """An inbox accepting `accepts` that got HELLO then `frames` from member 'src': the
    `count` values it queued."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inbox = Inbox(ctx, "127.0.0.1", name="sink", instance=9, expected=1, any_input=False,
                  serializer=serializers.get(accepts), limit=8)  # fmt: skip
    peer = ctx.socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(inbox.endpoint)
    try:
        peer.send(encode_header(FrameKind.HELLO, 1, 1, 0, "src"))
        for frame in frames:
            peer.send(frame)
        for _ in range(100):
            if inbox.link.socket.poll(50):
                inbox.receive()
            if inbox.fanin.depth() >= count:
                break
        return inbox, [inbox.take()[0]["src"] for _ in range(inbox.fanin.depth())]
    finally:
        peer.close()
        inbox.close()
        ctx.term()


@pytest.mark.parametrize("accepts", ["pickle", "json"])
def test_a_member_payload_that_does_not_decode_is_queued_for_on_error(accepts: str) -> None:
    data = encode_header(FrameKind.DATA, 1, 1, 1, "src") + b"\x80\x05not a pickle"
    inbox, values = inbox_receiving(accepts, 1, data)

    bad = values[0]
    assert isinstance(bad, Undecodable) and bad.source == "src"
    assert bad.payload == [b"\x80\x05not a pickle"]  # the bytes are kept, never dropped
    assert inbox.undecodable == 1 and inbox.counters.bad_frames == 0
    expected = "accepts json only" if accepts == "json" else "cannot be decoded here"
    assert expected in bad.error, bad.error


def test_an_undecodable_item_of_a_batch_takes_only_its_own_place() -> None:
    header = encode_header(FrameKind.DATA_BATCH, 1, 1, 1, "src")
    items = [pickle.dumps(1, protocol=5), b"garbage", pickle.dumps(3, protocol=5)]
    inbox, values = inbox_receiving("pickle", 3, encode_batch(header, items))

    assert values[0] == 1 and values[2] == 3, values
    assert isinstance(values[1], Undecodable) and values[1].payload == [b"garbage"]
    assert inbox.undecodable == 1 and inbox.counters.bad_frames == 0


def test_a_script_type_sent_by_reference_says_to_upgrade_the_sender() -> None:
    module = types.ModuleType("porch_script_old_0_src")
    exec("class Point:\n    pass", module.__dict__)
    sys.modules[module.__name__] = module
    head = pickle.dumps(module.Point(), protocol=5)  # what Porch sent before by-value
    del sys.modules[module.__name__]

    with pytest.raises(ModuleNotFoundError) as info:
        pickle.loads(head)
    message = decode_failure("pickle", head, info.value, "old")

    assert "defined in a script of 'old'" in message and "upgrade Porch" in message, message


# ---- small plain values: protocol 3, a batch of them loaded in one call ------------------


def test_small_plain_values_are_pickled_with_protocol_3_and_others_as_before(script: Any) -> None:
    dumps_one = serializers.get("pickle").dumps_one
    assert dumps_one is not None
    for plain in ({"seq": 1, "topic": "bench", "value": 1.5}, [1, "x", None, b"y"], (True,), 7,
                  "text", {"nested": {"a": [1, 2]}}):  # fmt: skip
        head = dumps_one(plain)
        assert head is not None and head[:2] == b"\x80\x03" and pickle.loads(head) == plain
    # not plain (protocol 5 as before): a set, a big nested value, out-of-band buffers
    assert dumps_one({"s": {1, 2}}) == pickle.dumps({"s": {1, 2}}, protocol=5)
    big = {"rows": [b"x" * 20_000]}
    assert dumps_one(big) == pickle.dumps(big, protocol=5)
    buffer = pickle.PickleBuffer(bytearray(b"data"))
    assert dumps_one({"b": buffer}) is None and dumps_one({"b": [buffer]}) is None
    # a script's class, however deep, travels by value (dumps decides); a dict's key too
    assert dumps_one(script.Point(1, 2)) is None
    assert dumps_one({"deep": [script.Point(1, 2)]}) is None
    assert dumps_one({script.Color.RED: 1}) is None
    assert dumps_one({"deep": {script.Color.RED: 1}}) is None


def test_shared_references_inside_a_plain_value_survive_its_batch() -> None:
    dumps_one = serializers.get("pickle").dumps_one
    assert dumps_one is not None
    text = "shared" * 10
    sent = [{"a": text, "b": text}, {"other": "x" * 60, "again": "x" * 60}, [text, text]]
    header = encode_header(FrameKind.DATA_BATCH, 1, 1, 1, "src")
    frame = encode_batch(header, [head for value in sent if (head := dumps_one(value))])

    _, values = inbox_receiving("pickle", 3, frame)

    assert values == sent
    assert values[0]["a"] is values[0]["b"] and values[2][0] is values[2][1]
    assert values[2][0] is not values[0]["a"]


def test_an_undecodable_value_of_a_pickled_batch_takes_only_its_own_place() -> None:
    module = types.ModuleType(f"gone_{uuid.uuid4().hex}")
    exec("class Point:\n    pass", module.__dict__)
    module.Point.__module__ = module.__name__
    sys.modules[module.__name__] = module
    bad = pickle.dumps({"p": [module.Point()]}, protocol=3)  # a class the receiver lacks
    del sys.modules[module.__name__]
    items = [pickle.dumps(1, protocol=3), bad, b"", pickle.dumps({"v": 3}, protocol=3)]
    header = encode_header(FrameKind.DATA_BATCH, 1, 1, 1, "src")

    inbox, values = inbox_receiving("pickle", 3, encode_batch(header, items))

    assert values[0] == 1 and values[-1] == {"v": 3}, values  # (the skip marker is not taken)
    assert isinstance(values[1], Undecodable) and values[1].payload == [bad]
    assert f"{module.__name__}.Point" in values[1].error, values[1].error
    assert inbox.undecodable == 1 and inbox.counters.bad_frames == 0
