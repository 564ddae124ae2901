"""The data-plane header codec and the payload serializers."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porch import serializers
from porch.errors import PorchError, WireError
from porch.serializers import SerializationError
from porch.wire import (
    HEADER_SIZE,
    MAX_NAME_BYTES,
    ORIGINS,
    VERSION,
    FrameKind,
    Header,
    HeaderEncoder,
    decode_ack,
    decode_header,
    decode_prefix,
    encode_header,
    run_origins,
    runs_of,
    union,
)

pytestmark = pytest.mark.timeout(30)

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U8 = st.integers(min_value=0, max_value=255)
SENDERS = st.text(max_size=60).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 255)
VALID_SENDERS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60).filter(
    lambda s: len(s.encode("utf-8")) <= MAX_NAME_BYTES
)


# --- header ---------------------------------------------------------------------------------


def _ack_the_long_way(frame: bytes) -> int | None:
    try:
        header = decode_header(frame)
    except WireError:
        return None
    return header.seq if header.kind is FrameKind.ACK else None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), U8, U8, VALID_SENDERS, U64)
def test_decode_ack_reads_what_decode_header_reads(
    junk: bytes, version: int, kind: int, sender: str, seq: int
) -> None:
    """decode_ack's glance (an ACK of this version, its length, a name seen before) gives
    what decoding the whole header gives, for any frame: acks of names seen or not, any other
    kind or version, cut or padded frames, junk."""
    ack = encode_header(FrameKind.ACK, 0, 7, seq, sender)
    name = sender.encode("utf-8")
    raw = struct.pack("!BBBBQQ", version, kind, 0, len(name), 7, seq) + name
    frames = [ack, ack[:-1], ack + b"x", raw, junk, bytes([VERSION, FrameKind.ACK]) + junk]
    for frame in frames:
        assert decode_ack(frame) == _ack_the_long_way(frame), frame
    decode_header(ack)  # the name is seen now (decode_prefix caches it)
    for frame in frames:
        assert decode_ack(frame) == _ack_the_long_way(frame), frame
    assert decode_ack(ack) == seq


@pytest.mark.parametrize("kind", list(FrameKind))
def test_header_round_trips_for_every_kind(kind: FrameKind) -> None:
    frame = encode_header(kind, 1, 0xDEADBEEF, 42, "pipeline_a")

    assert decode_header(frame) == Header(kind, 1, 0xDEADBEEF, 42, "pipeline_a")


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(FrameKind)),
    serializer=U8,
    instance=U64,
    seq=U64,
    sender=VALID_SENDERS,
)
def test_header_round_trips_for_any_values(
    kind: FrameKind, serializer: int, instance: int, seq: int, sender: str
) -> None:
    frame = encode_header(kind, serializer, instance, seq, sender)

    header = decode_header(frame)

    assert header == Header(kind, serializer, instance, seq, sender)
    assert isinstance(header.kind, FrameKind)


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(list(FrameKind)),
    serializer=U8,
    instance=U64,
    seq=U64,
    sender=VALID_SENDERS,
)
def test_header_encoder_matches_encode_header(
    kind: FrameKind, serializer: int, instance: int, seq: int, sender: str
) -> None:
    encoder = HeaderEncoder(serializer, instance, sender)

    assert encoder.encode(kind, seq) == encode_header(kind, serializer, instance, seq, sender)


def test_sender_name_longer_than_255_bytes_is_refused() -> None:
    with pytest.raises(WireError):
        encode_header(FrameKind.DATA, 1, 0, 0, "é" * 128)
    with pytest.raises(WireError):
        HeaderEncoder(1, 0, "x" * 256)
    assert decode_header(encode_header(FrameKind.DATA, 1, 0, 0, "x" * 255)).sender == "x" * 255


def valid_frame(sender: str = "pipeline_a") -> bytes:
    return encode_header(FrameKind.DATA, 1, 7, 9, sender)


@pytest.mark.parametrize("length", [0, 1, HEADER_SIZE - 1])
def test_truncated_header_is_a_wire_error(length: int) -> None:
    with pytest.raises(WireError, match="too short"):
        decode_header(valid_frame()[:length])


def test_header_cut_inside_the_name_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        decode_header(valid_frame()[:-1])


def test_header_with_trailing_bytes_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        decode_header(valid_frame() + b"x")


def test_wrong_version_is_a_wire_error() -> None:
    frame = bytes([VERSION + 1]) + valid_frame()[1:]
    with pytest.raises(WireError, match=f"version {VERSION + 1} .*speaks {VERSION}.*release"):
        decode_header(frame)


@pytest.mark.parametrize("kind", [0, 7, 255])
def test_unknown_kind_is_a_wire_error(kind: int) -> None:
    frame = bytearray(valid_frame())
    frame[1] = kind
    with pytest.raises(WireError):
        decode_header(bytes(frame))


def test_name_that_is_not_utf8_is_a_wire_error() -> None:
    frame = struct.pack("!BBBBQQ", VERSION, FrameKind.DATA, 1, 2, 0, 0) + b"\xff\xfe"
    with pytest.raises(WireError):
        decode_header(frame)


def test_wire_error_is_a_porch_error() -> None:
    assert issubclass(WireError, PorchError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_header_only_ever_raises_wire_error(frame: bytes) -> None:
    try:
        header = decode_header(frame)
    except WireError:
        return
    assert isinstance(header, Header)


@settings(max_examples=300, deadline=None)
@given(kind=U8, serializer=U8, name_len=U8, instance=U64, seq=U64, name=st.binary(max_size=300))
def test_decode_header_only_ever_raises_wire_error_with_a_valid_prefix(
    kind: int, serializer: int, name_len: int, instance: int, seq: int, name: bytes
) -> None:
    frame = struct.pack("!BBBBQQ", VERSION, kind, serializer, name_len, instance, seq) + name
    try:
        header = decode_header(frame)
    except WireError:
        return
    assert header.kind == kind
    assert header.sender.encode("utf-8") == name


# --- serializers ----------------------------------------------------------------------------

VALUES = [None, 0, -1.5, "text", b"bytes", [1, [2, 3]], {"a": {"b": [None, True]}}]


@pytest.mark.parametrize("name", ["pickle", "dill", "json"])
@pytest.mark.parametrize("value", VALUES[:2] + VALUES[2:4] + VALUES[5:])
def test_serializers_round_trip_json_values(name: str, value: object) -> None:
    serializer = serializers.get(name)

    assert serializer.loads(serializer.dumps(value)) == value


@pytest.mark.parametrize("name", ["pickle", "dill"])
def test_python_serializers_round_trip_python_values(name: str) -> None:
    serializer = serializers.get(name)
    value = {"bytes": b"\x00\xff", "tuple": (1, 2), "set": {3, 4}, "complex": 1 + 2j}

    assert serializer.loads(serializer.dumps(value)) == value


def test_serializer_ids_are_distinct_and_looked_up() -> None:
    ids = {s.id for s in serializers.SERIALIZERS.values()}
    assert len(ids) == len(serializers.SERIALIZERS)
    for serializer in serializers.SERIALIZERS.values():
        assert serializers.BY_ID[serializer.id] is serializer
        assert serializers.get(serializer.name) is serializer


def test_pickle_sends_large_buffers_out_of_band() -> None:
    pickler = serializers.get("pickle")
    payload = bytearray(b"x" * 10**6)

    frames = pickler.dumps(pickle.PickleBuffer(payload))

    assert len(frames) > 1
    assert len(frames[0]) < 1000  # the big buffer is not copied into the pickle stream
    assert bytes(pickler.loads(frames)) == bytes(payload)


def test_pickle_round_trips_frames_received_as_bytes() -> None:
    pickler = serializers.get("pickle")
    value = {"blob": pickle.PickleBuffer(bytearray(b"y" * 10**5)), "meta": 1}

    frames = pickler.dumps(value)
    received = pickler.loads([bytes(f) for f in frames])  # as copied off a socket

    assert bytes(received["blob"]) == b"y" * 10**5
    assert received["meta"] == 1


def test_json_serializer_rejects_a_set_with_a_clear_message() -> None:
    with pytest.raises(SerializationError) as info:
        serializers.get("json").dumps({1, 2})

    message = str(info.value)
    assert "set" in message
    assert "json" in message
    assert "pickle" in message  # tells the user the way out
    assert isinstance(info.value, PorchError)


def test_dill_round_trips_a_lambda() -> None:
    dill = serializers.get("dill")

    double = dill.loads(dill.dumps(lambda x: x * 2))

    assert double(21) == 42


def test_batch_round_trip_and_malformed_batches_are_wire_errors() -> None:
    from porch.wire import decode_batch, encode_batch

    header = encode_header(FrameKind.DATA_BATCH, 1, 7, 10, "sender")
    payloads = [b"a", b"", b"xyz" * 100]
    frame = encode_batch(header, payloads)
    _, end = decode_prefix(frame)
    assert [bytes(p) for p in decode_batch(frame, end)] == payloads
    for broken in (frame[:-1], frame + b"!", frame[: end + 2], header + b"\0\0\0\0"):
        with pytest.raises(WireError):
            decode_batch(broken, end)


# --- origins --------------------------------------------------------------------------------

STREAMS = st.tuples(st.sampled_from(["pipeline_a", "b_branch", "é" * 20]), U64)
ORIGIN_SETS = st.lists(st.tuples(STREAMS, U64), max_size=3).map(
    lambda ids: tuple(x for pair in ids for x in pair)
)
RUNS = st.lists(st.tuples(st.integers(1, 300), ORIGIN_SETS), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(runs=RUNS, seq=U64)
def test_origins_round_trip_in_the_header_of_data_and_batches(
    runs: list[tuple[int, tuple[object, ...]]], seq: int
) -> None:
    for kind in (FrameKind.DATA, FrameKind.DATA_BATCH):
        frame = encode_header(kind, 1, 7, seq, "sender", runs)
        header, end = decode_prefix(frame + b"payload")

        assert end == len(frame)
        assert header.seq == seq and header.sender == "sender"
        expected = tuple(runs) if any(origin for _, origin in runs) else ()
        assert header.origins == expected
        assert HeaderEncoder(1, 7, "sender").encode_data(kind, seq, runs) == frame


def test_a_source_batch_is_one_run_and_costs_a_fixed_few_bytes() -> None:
    stream = ("pipeline_a", 2**62)
    origins = [(stream, seq) for seq in range(1000, 1256)]
    runs = runs_of(origins)
    frame = HeaderEncoder(1, 7, "pipeline_a").encode_data(FrameKind.DATA_BATCH, 5, runs)

    assert runs == [(256, (stream, 1000))]
    assert len(frame) - len(encode_header(FrameKind.DATA_BATCH, 1, 7, 5, "pipeline_a")) < 45
    assert run_origins(runs) == origins


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([(("x", 1), 1), (("x", 1), 2), (("y", 1), 3), ()]), min_size=1))
def test_runs_of_and_run_origins_are_inverse(origins: list[tuple[object, ...]]) -> None:
    assert run_origins(runs_of(origins)) == origins


def test_origins_are_refused_on_control_frames_and_when_malformed() -> None:
    runs = [(1, (("pipeline_a", 1), 5))]
    frame = encode_header(FrameKind.DATA, 1, 7, 1, "sender", runs)
    control = bytes([frame[0], FrameKind.EOS | ORIGINS]) + frame[2:]
    with pytest.raises(WireError, match="origins on a EOS frame"):
        decode_prefix(control)
    for cut in range(HEADER_SIZE + len("sender"), len(frame)):
        with pytest.raises(WireError):
            decode_prefix(frame[:cut])


def test_union_keeps_each_id_once() -> None:
    a = (("pipeline_a", 1), 5)
    b = (("b_branch", 2), 9)
    assert union(a, a) == a  # a diamond's join: both branches derive from one iteration
    assert union(a, b) == a + b
    assert union(a + b, b) == a + b
    assert union((), b) == b


def test_a_seen_stream_table_decodes_the_same_and_other_sections_still_decode() -> None:
    stream = ("cached_src", 2**40 + 3)
    one = encode_header(FrameKind.DATA, 1, 7, 9, "sender", [(1, (stream, 41))])
    first = decode_prefix(one + b"x")
    assert decode_prefix(one + b"x") == first  # the second time from the cached table
    assert first[0].origins == ((1, (stream, 41)),)
    # the same table with other runs (two runs; two ids) is read in full
    runs = [(2, (stream, 5)), (1, (stream, 9, stream, 3))]
    frame = encode_header(FrameKind.DATA_BATCH, 1, 7, 9, "sender", runs)
    assert decode_prefix(frame)[0].origins == tuple(runs)
    for broken in (one[:-1], one[: len(one) - 5]):  # cut inside the run
        with pytest.raises(WireError):
            decode_prefix(broken)


# --- a batch of protocol-3 pickles: one pickle of the list of its values --------------------


def _pickled_batch(values: list[Any], skip_at: int | None = None) -> tuple[bytes, int, list[bytes]]:
    from porch.wire import encode_batch

    payloads = [pickle.dumps(value, protocol=3) for value in values]
    if skip_at is not None:
        payloads.insert(skip_at, b"")  # a skip marker
    frame = encode_batch(encode_header(FrameKind.DATA_BATCH, 1, 7, 10, "sender"), payloads)
    return frame, decode_prefix(frame)[1], payloads


def test_a_batch_of_protocol_3_pickles_loads_in_one_call_and_gives_each_back_alone() -> None:
    from porch.wire import decode_batch, read_batch

    values = [{"seq": i, "topic": "bench", "value": 1.5} for i in range(5)]
    frame, end, payloads = _pickled_batch(values, skip_at=2)

    batch = read_batch(frame, end)
    assert batch.pickled and batch.lengths[2] == 0
    assert pickle.loads(batch.region) == [*values[:2], None, *values[2:]]
    # each value alone is exactly what the sender pickled (to decode alone, to dead-letter)
    assert [bytes(p) for p in decode_batch(frame, end)] == payloads


def test_shared_references_and_cycles_survive_inside_a_value_and_values_stay_apart() -> None:
    from porch.wire import read_batch

    shared = ["inner"]
    cycle: list[Any] = ["head"]
    cycle.append(cycle)
    text = "s" * 40
    values = [{"a": shared, "b": shared}, cycle, {"x": text, "y": text}, ["other"], [shared]]
    frame, end, _ = _pickled_batch(values)

    got = pickle.loads(read_batch(frame, end).region)

    assert got == [{"a": ["inner"], "b": ["inner"]}, got[1], {"x": text, "y": text},
                   ["other"], [["inner"]]]  # fmt: skip
    assert got[0]["a"] is got[0]["b"] and got[1][1] is got[1]
    assert got[2]["x"] is got[2]["y"]
    assert got[4][0] is not got[0]["a"]  # another value's memo slot 0 is its own


def test_batches_of_other_payloads_keep_the_separate_layout() -> None:
    from porch.wire import encode_batch, read_batch

    header = encode_header(FrameKind.DATA_BATCH, 1, 7, 10, "sender")
    for payloads in ([pickle.dumps(1, protocol=3), pickle.dumps(2, protocol=5)],
                     [b'{"json": 1}', b"[2]"], [b"", b""], [b"", b"\x80\x03."]):  # fmt: skip
        frame = encode_batch(header, payloads)
        batch = read_batch(frame, decode_prefix(frame)[1])
        assert not batch.pickled and [bytes(p) for p in batch.parts()] == payloads


def test_malformed_pickled_batches_are_wire_errors() -> None:
    from porch.wire import PICKLED, read_batch

    frame, end, _ = _pickled_batch([1, "two", [3.0]], skip_at=1)
    count = int.from_bytes(frame[end : end + 4], "big")
    assert count == 4 | PICKLED
    lengths = end + 4 + 4 * 4  # where the region starts
    broken = [
        frame[:-1],  # no STOP
        frame + b".",  # a byte past the region
        frame[:lengths] + b"\x80\x02" + frame[lengths + 2 :],  # not PROTO 3
        frame[:lengths] + b"\x80\x03)" + frame[lengths + 3 :],  # no MARK
        frame[:-2] + b"t.",  # not LIST
        frame[:end] + (5 | PICKLED).to_bytes(4, "big") + frame[end + 4 :],  # count off by one
        frame[:end] + (0 | PICKLED).to_bytes(4, "big"),  # no values
        frame[:end] + (70000 | PICKLED).to_bytes(4, "big") + frame[end + 4 :],  # too many
        frame[: end + 4] + (9).to_bytes(4, "big") + frame[end + 8 :],  # a length off
        frame[:lengths],  # lengths without the region
    ]
    for data in broken:
        with pytest.raises(WireError):
            read_batch(data, end)
