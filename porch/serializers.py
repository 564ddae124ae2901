"""Serializers for pipeline payloads: pickle (default), dill, and code-free JSON."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from porch.errors import PorchError

Frames = list[Any]  # bytes-like frames: bytes, memoryview, pickle.PickleBuffer, zmq.Frame


class SerializationError(PorchError):
    """A value could not be serialized or deserialized with the pipeline's serializer."""


@dataclass(frozen=True)
class Serializer:
    """A named pair of functions between a Python value and a list of wire frames."""

    id: int
    name: str
    dumps: Callable[[Any], Frames]
    loads: Callable[[Sequence[Any]], Any]


def _pickle_dumps(value: Any) -> Frames:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return [head, *(b.raw() for b in buffers)]


def _pickle_loads(frames: Sequence[Any]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


def _dill_dumps(value: Any) -> Frames:
    import dill  # imported lazily: most pipelines never need it

    return [dill.dumps(value, protocol=5)]


def _dill_loads(frames: Sequence[Any]) -> Any:
    import dill

    return dill.loads(bytes(frames[0]))


def _json_dumps(value: Any) -> Frames:
    try:
        return [json.dumps(value, separators=(",", ":"), allow_nan=True).encode("utf-8")]
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot send {type(value).__name__} with the json serializer ({exc}); "
            "return JSON types (dict, list, str, int, float, bool, None) or choose "
            '"serializer": "pickle" in the config'
        ) from exc


def _json_loads(frames: Sequence[Any]) -> Any:
    return json.loads(bytes(frames[0]))


SERIALIZERS: dict[str, Serializer] = {
    s.name: s
    for s in (
        Serializer(1, "pickle", _pickle_dumps, _pickle_loads),
        Serializer(2, "dill", _dill_dumps, _dill_loads),
        Serializer(3, "json", _json_dumps, _json_loads),
    )
}
BY_ID: dict[int, Serializer] = {s.id: s for s in SERIALIZERS.values()}


def get(name: str) -> Serializer:
    """The serializer called `name`."""
    return SERIALIZERS[name]
