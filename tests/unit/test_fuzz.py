"""Fuzz targets for everything that parses bytes from the network, run for a bounded time.

Beacons (signed envelope, then the codec) and data-plane frames (header prefix, batches, acks):
random and mutated input may only ever produce the module's own error, never another exception.
PORCH_FUZZ_EXAMPLES scales the run (default 300 per target: a few seconds in all).
"""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from porch import serializers
from porch.discovery import Beacon, DiscoveryError, Entry, decode, encode
from porch.errors import PorchError, WireError
from porch.security import BeaconRejected, BeaconVerifier, KeyRing, new_key, sign
from porch.wire import (
    FrameKind,
    decode_ack,
    decode_batch,
    decode_prefix,
    encode_batch,
    read_batch,
)

pytestmark = pytest.mark.timeout(120)

EXAMPLES = int(os.environ.get("PORCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RING = KeyRing((new_key(),))
NOW = 1_700_000_000.0


def _signed_beacon() -> bytes:
    entries = (Entry("pipeline_a", "tcp://10.0.0.1:4000", "running", 7),)
    return sign(encode(Beacon("d1", "o", "10.0.0.1", "h", NOW, "n", 1, entries)), RING, now=NOW)


SIGNED = _signed_beacon()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None, tail: bytes) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    if cut is not None:
        del buf[cut % (len(buf) + 1) :]
    return bytes(buf) + tail


EDITS = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4)
CUTS = st.none() | st.integers(min_value=0)


@FUZZ
@given(EDITS, CUTS, st.binary(max_size=64))
def test_beacon_receive_path_only_raises_its_own_errors(
    edits: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    """verify() then decode(), as the broker does, on mutations of a genuine signed beacon."""
    data = _mutate(SIGNED, edits, cut, tail)
    try:
        inner, _ = BeaconVerifier(RING).verify(data, now=NOW)
        decode(inner)
    except (BeaconRejected, DiscoveryError):
        return
    assert data == SIGNED or not edits  # only the genuine bytes (or no edit at all) get through


@FUZZ
@given(st.binary(max_size=600))
def test_frame_prefix_decoder(frame: bytes) -> None:
    try:
        header, end = decode_prefix(frame)
    except WireError:
        return
    assert 0 < end <= len(frame) and isinstance(header.kind, FrameKind)


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=8), EDITS, CUTS, st.binary(max_size=16))
def test_batch_decoder(
    payloads: list[bytes], edits: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    frame = encode_batch(b"H" * 8, payloads)
    data = _mutate(frame, edits, cut, tail) if frame else tail
    try:
        parts = decode_batch(data, 8)
    except WireError:
        return
    assert sum(len(p) for p in parts) <= len(data)


PLAIN = st.recursive(
    st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@FUZZ
@given(st.lists(PLAIN, min_size=1, max_size=6), EDITS, CUTS, st.binary(max_size=16))
def test_pickled_batch_decoder(
    values: list[object], edits: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    frame = encode_batch(b"H" * 8, [pickle.dumps(value, protocol=3) for value in values])
    data = _mutate(frame, edits, cut, tail)
    try:
        batch = read_batch(data, 8)
    except WireError:
        return
    loaded = serializers.get("pickle").loads_batch
    assert loaded is not None
    got = loaded(batch.region, len(batch.lengths))  # a list of them all, or None: never raises
    assert got is None or len(got) == len(batch.lengths)
    try:
        parts = batch.parts()
    except WireError:  # a frame an edit made WHOLE: a corrupt frame, dropped and counted
        assert batch.whole and data != frame
        return
    assert len(parts) == len(batch.lengths)
    if data == frame:
        assert got == values


@FUZZ
@given(st.binary(max_size=300))
def test_ack_decoder(frame: bytes) -> None:
    try:
        seq = decode_ack(frame)
    except PorchError:
        return
    assert seq is None or seq >= 0
