"""Serializers for pipeline payloads: pickle (default), dill, and code-free JSON.

Types and functions defined in a pipeline's scripts travel by value. Each script runs as a
module named `porch_script_<pipeline>_<index>_<stem>` that no other process can import, so
pickling its classes by reference (pickle's way) would send a name the receiver cannot
resolve. A value is first pickled the fast way; only when the result names a script module
(for plain values that check is one memchr: their stream names no class at all) or pickling
failed is it pickled again with cloudpickle, which embeds those classes and functions in the
message. A class's definition is pickled once per sender and loaded once per receiver
(`class_by_value`), so a receiver has one class per type and isinstance() holds.

`pickle` sends data: script-defined classes, dataclasses, enums and named tuples travel by
value, but lambdas and nested functions are refused (as pickle itself refuses them); `dill`
also sends code (functions, lambdas, closures).
"""

from __future__ import annotations

import copyreg
import functools
import io
import json
import pickle
import pickletools
import re
import types
import warnings
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from porch.errors import PorchError

Frames = list[Any]  # bytes-like frames: bytes, memoryview, pickle.PickleBuffer, zmq.Frame

SCRIPT_MODULE_PREFIX = "porch_script_"  # porch.host names each script's module with it
_SCRIPT_MARK = SCRIPT_MODULE_PREFIX.encode()
_STACK_GLOBAL = pickle.STACK_GLOBAL[0]  # protocol 4+ names every class and function with it
PLAIN_DATA = "dicts, lists, numbers, strings, numpy arrays"
CULPRIT_DEPTH = 8  # how deep a failing value is searched for the part that cannot be sent
CULPRIT_WIDTH = 1000


class SerializationError(PorchError):
    """A value could not be serialized or deserialized with the pipeline's serializer."""


class CodeRefused(pickle.PicklingError):
    """The pickle serializer sends data: a lambda or nested function needs dill."""


@dataclass(frozen=True)
class Serializer:
    """A named pair of functions between a Python value and a list of wire frames."""

    id: int
    name: str
    dumps: Callable[[Any], Frames]
    loads: Callable[[Sequence[Any]], Any]
    # the hot path: the one frame of a plain value, or None when dumps() must decide (the
    # value fails, travels by value, or has buffers of its own); None: dumps() always
    dumps_one: Callable[[Any], bytes | None] | None = None
    loads_one: Callable[[Any], Any] | None = None  # loads() of one frame, when it is faster
    # the values of a pickled batch's region in one call (porch.wire), or None: decode each
    loads_batch: Callable[[Any, int], list[Any] | None] | None = None


# ---- by value ----------------------------------------------------------------------------

_script_modules: list[types.ModuleType] = []  # loaded scripts, registered with cloudpickle lazily
_script_files: set[str] = set()
_picklers: dict[bool, type[pickle.Pickler]] = {}
# a script class pickled once, by value; each message then carries these bytes (a copy)
_defining: set[type] = set()  # classes whose definition is being pickled right now
_class_blobs: dict[bool, weakref.WeakKeyDictionary[type, bytes]] = {
    code: weakref.WeakKeyDictionary() for code in (False, True)
}
_classes: dict[bytes, type] = {}  # receiver side: one class per definition received
CLASS_CACHE_SIZE = 256


def send_by_value(module: types.ModuleType) -> None:
    """Have the classes and functions of this (script) module travel by value."""
    _script_modules.append(module)
    if module.__file__:
        _script_files.add(module.__file__)


def _pickler(sends_code: bool) -> type[pickle.Pickler]:
    """cloudpickle's Pickler, minus what the serializer must not send (built on first use)."""
    if sends_code in _picklers:
        return _picklers[sends_code]
    base: Any = _cloudpickle().Pickler
    # a file opened for reading would travel as its contents: not what "send" means
    table = {k: v for k, v in base.dispatch_table.items() if k is not io.TextIOWrapper}

    class ByValuePickler(base):  # type: ignore[misc]
        dispatch_table = ChainMap(table, copyreg.dispatch_table)

        def reducer_override(self, obj: Any) -> Any:
            # a class met again while its own definition is being written (itself, or
            # classes that refer to each other) is written inline, as cloudpickle does
            if isinstance(obj, type) and obj not in _defining and _is_script_type(obj):
                return class_by_value, (_class_blob(obj, sends_code),)
            if not sends_code and isinstance(obj, types.FunctionType) and _is_code(obj):
                raise CodeRefused(f"{obj.__qualname__} is code")
            return super().reducer_override(obj)

    _picklers[sends_code] = ByValuePickler
    return ByValuePickler


def _cloudpickle() -> Any:
    try:
        import cloudpickle  # 20 ms: imported only when a value needs it
    except ImportError:  # an environment installed before Porch depended on it
        raise SerializationError(
            "cloudpickle is not installed (Porch needs it to send types defined in scripts); "
            "fix: pip install 'cloudpickle>=3.0', or `make install` in a source checkout"
        ) from None
    return cloudpickle


def _register_scripts() -> None:
    cloudpickle = _cloudpickle()
    while _script_modules:
        cloudpickle.register_pickle_by_value(_script_modules.pop())


def _is_script_type(cls: type) -> bool:
    module = getattr(cls, "__module__", None)
    return isinstance(module, str) and module.startswith(SCRIPT_MODULE_PREFIX)


def _class_blob(cls: type, sends_code: bool) -> bytes:
    """A script class's definition, pickled by value once (cloudpickle takes ~300 µs)."""
    blob = _class_blobs[sends_code].get(cls)
    if blob is None:
        out = io.BytesIO()
        _defining.add(cls)
        try:
            _pickler(sends_code)(out, protocol=5).dump(cls)
        finally:
            _defining.discard(cls)
        blob = _class_blobs[sends_code][cls] = out.getvalue()
    return blob


def class_by_value(blob: bytes) -> type:
    """The class a blob defines (what a script-defined type's messages carry), loaded once."""
    cls = _classes.get(blob)
    if cls is None:
        cls = pickle.loads(blob)
        if len(_classes) >= CLASS_CACHE_SIZE:
            del _classes[next(iter(_classes))]
        _classes[blob] = cls
    return cls


def _is_code(fn: types.FunctionType) -> bool:
    """A lambda or a nested function written in a script (pickle refuses both). Methods,
    and what libraries generate for a class (a dataclass's __init__), are part of a type."""
    parts = fn.__qualname__.split(".")
    nested = parts[-1] == "<lambda>" or (len(parts) > 1 and parts[-2] == "<locals>")
    return nested and fn.__code__.co_filename in _script_files


def _by_value(value: Any, *, sends_code: bool, out_of_band: bool) -> Frames:
    _register_scripts()
    out = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    callback = buffers.append if out_of_band else None
    _pickler(sends_code)(out, protocol=5, buffer_callback=callback).dump(value)
    return [out.getvalue(), *(b.raw() for b in buffers)]


def _needs_by_value(head: bytes) -> bool:
    """Whether a pickle stream names a script's class or function. Most streams name no
    class or function at all: one byte search (memchr) rules those out cheaply."""
    return _STACK_GLOBAL in head and _SCRIPT_MARK in head


# ---- pickle and dill ---------------------------------------------------------------------


def _pickle_dumps(value: Any) -> Frames:
    buffers: list[pickle.PickleBuffer] = []
    try:
        head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:
        return _slow_dumps(value, "pickle", sends_code=False, out_of_band=True)
    if _needs_by_value(head):
        return _slow_dumps(value, "pickle", sends_code=False, out_of_band=True)
    if buffers:
        return [head, *(b.raw() for b in buffers)]
    return [head]


_NO_BUFFERS: list[pickle.PickleBuffer] = []  # dumps_one's out-of-band buffers (it gives up)
# Small plain values are pickled with protocol 3: a batch of them travels as one pickle that
# the receiver loads in one call (porch.wire, "pickled" DATA_BATCH). Plain: one of these exact
# types, and a dict's values or a list's or tuple's items too (one level: a dict's keys, and
# whatever is deeper, are found in the stream). Anything else keeps protocol 5 (out-of-band
# buffers: numpy; a script's classes by value).
_ATOMS = frozenset({int, float, str, bool, type(None), bytes})
_CONTAINERS = frozenset({dict, list, tuple})
_GLOBAL = pickle.GLOBAL[0]  # protocol 3 names every class and function with it
_NEWLINE = ord("\n")  # ...and ends the module's name and the class's with it
PLAIN_MAX = 16 * 1024  # a larger protocol-3 pickle of a nested value is made again with 5


def _pickle_dumps_one(value: Any) -> bytes | None:
    # the test costs ~0.2 µs for the bench's dict of 3 (its protocol-3 pickle saves ~0.1 µs
    # over protocol 5's with its buffer_callback): a loop per type, no flag, no other call
    kind = type(value)
    if kind is dict:
        for item in value.values():
            if type(item) not in _ATOMS:
                return _pickle_dumps_nested(value, value.values())
        try:
            head = pickle.dumps(value, 3)
        except Exception:  # (a str over 4 GB)
            return _pickle_dumps_5(value)
        # a key may be of any hashable type (a script's enum): a class is named in the stream
        if _NEWLINE in head and _GLOBAL in head:  # (memchr: GLOBAL is "c module\n name\n")
            return _plain_stream(value, head)
        return head
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _ATOMS:
                return _pickle_dumps_nested(value, value)
    elif kind not in _ATOMS:
        return _pickle_dumps_5(value)
    try:
        return pickle.dumps(value, 3)
    except Exception:  # (a str over 4 GB)
        return _pickle_dumps_5(value)


def _pickle_dumps_nested(value: Any, items: Iterable[Any]) -> bytes | None:
    """dumps_one of a dict, list or tuple that holds more than atoms: protocol 3 if it holds
    containers only (whatever is deeper is found in the stream), else protocol 5."""
    if not _CONTAINERS.issuperset(type(item) for item in items if type(item) not in _ATOMS):
        return _pickle_dumps_5(value)
    try:
        head = pickle.dumps(value, 3)
    except Exception:  # something nested that protocol 3 refuses (a PickleBuffer)
        return _pickle_dumps_5(value)
    if _NEWLINE in head and _GLOBAL in head:
        return _plain_stream(value, head)
    return head if len(head) <= PLAIN_MAX else _pickle_dumps_5(value)


def _plain_stream(value: Any, head: bytes) -> bytes | None:
    """A protocol-3 pickle that may name classes: kept unless it is large (a buffer, zero-copy
    with protocol 5) or names a script's module (its classes travel by value)."""
    if len(head) <= PLAIN_MAX and head.find(_SCRIPT_MARK) < 0:
        return head
    return _pickle_dumps_5(value)


def _pickle_dumps_5(value: Any) -> bytes | None:
    """dumps_one with protocol 5: None when the value has buffers, travels by value or fails."""
    try:
        head = pickle.dumps(value, protocol=5, buffer_callback=_NO_BUFFERS.append)
    except Exception:
        _NO_BUFFERS.clear()
        return None
    if _NO_BUFFERS:
        _NO_BUFFERS.clear()
        return None
    if _STACK_GLOBAL in head and _SCRIPT_MARK in head:
        return None
    return head


def _pickle_loads(frames: Sequence[Any]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


def _pickle_loads_batch(region: Any, count: int) -> list[Any] | None:
    """The `count` values of a pickled batch's region (porch.wire) in one call; None when it
    does not load as a list of `count` (then each value is decoded alone, to find the bad one)."""
    try:
        values = pickle.loads(region)
    except Exception:
        return None
    if type(values) is not list or len(values) != count:
        return None
    return values


@functools.cache
def _dill() -> Any:
    import dill  # imported lazily: most pipelines never need it

    # dill warns while it tries to pickle a class received by value (its module is not
    # here); Porch then sends it by value with cloudpickle, so the warning is only noise
    warnings.filterwarnings("ignore", category=dill.PicklingWarning)
    return dill


def _dill_dumps(value: Any) -> Frames:
    dill = _dill()
    try:
        head = dill.dumps(value, protocol=5)
    except Exception:
        return _slow_dumps(value, "dill", sends_code=True, out_of_band=False)
    if _needs_by_value(head):
        return _slow_dumps(value, "dill", sends_code=True, out_of_band=False)
    return [head]


def _dill_loads(frames: Sequence[Any]) -> Any:
    return _dill().loads(bytes(frames[0]))


def _slow_dumps(value: Any, name: str, *, sends_code: bool, out_of_band: bool) -> Frames:
    """By value: the fast way named a script module, or failed (then this may succeed)."""
    try:
        return _by_value(value, sends_code=sends_code, out_of_band=out_of_band)
    except SerializationError:
        raise
    except Exception as exc:
        raise _unsendable(value, name, sends_code, exc) from None


def _unsendable(value: Any, name: str, sends_code: bool, exc: Exception) -> SerializationError:
    where, culprit = _culprit(value, lambda v: _by_value(v, sends_code=sends_code,
                                                         out_of_band=False))  # fmt: skip
    fix = f"return plain data ({PLAIN_DATA})"
    if not sends_code:
        fix += ' or set "serializer": "dill" in the config (it sends functions and lambdas)'
    what = _describe(value)
    if where != "value":
        what += f" whose {where.removeprefix('value')} is {_describe(culprit)}"
    why = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, CodeRefused):  # name the function unless it is the part named above
        code = "" if isinstance(culprit, types.FunctionType) else f"{exc}; "
        why = f"{code}it sends data, not code"
    return SerializationError(
        f"{what}, which the {name} serializer cannot send ({why}); fix: {fix}"
    )


def _culprit(value: Any, dumps: Callable[[Any], Any]) -> tuple[str, Any]:
    """The innermost part of `value` that cannot be sent, and where it is (value['f'].x)."""
    path = "value"
    for _ in range(CULPRIT_DEPTH):
        for key, child in _children(value):
            try:
                dumps(child)
            except Exception:
                path, value = path + key, child
                break
        else:
            break
    return path, value


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        items: Any = ((f"[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    elif isinstance(getattr(value, "__dict__", None), dict) and not isinstance(
        value, (type, types.FunctionType, types.ModuleType)
    ):
        items = ((f".{k}", v) for k, v in vars(value).items())
    else:
        return iter(())
    return (item for _, item in zip(range(CULPRIT_WIDTH), items, strict=False))


def _describe(obj: Any) -> str:
    """a lambda (step.<locals>.<lambda>), a _io.TextIOWrapper, a dict."""
    if isinstance(obj, types.FunctionType):
        kind = "lambda" if obj.__name__ == "<lambda>" else "function"
        return f"a {kind} ({obj.__qualname__})"
    cls = type(obj)
    module = "" if cls.__module__ == "builtins" else f"{cls.__module__}."
    return f"a {module}{cls.__qualname__}"


# ---- what a receiver says about a payload it cannot decode -------------------------------

_MISSING_ATTRIBUTE = re.compile(r"Can't get attribute '([^']+)' on <module '([^']+)'")


def decode_failure(serializer: str, head: bytes, exc: Exception, sender: str) -> str:
    """Why a payload from `sender` did not decode, naming the type where it can, and the fix."""
    problem = f"a {serializer} value from '{sender}' cannot be decoded here"
    cause = f"{type(exc).__name__}: {exc}"
    plain = f"or have '{sender}' send plain data ({PLAIN_DATA})"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        module = exc.name
        named = [g for g in pickle_globals(head) if g.split(":")[0].split(".")[0] == module]
        what = named[0].replace(":", ".") if named else module
        if module.startswith(SCRIPT_MODULE_PREFIX):  # an older Porch sent it by reference
            return (f"{problem}: its type {what} is defined in a script of '{sender}', which an "
                    f"older Porch sends by reference; fix: upgrade Porch where '{sender}' "
                    f"runs, {plain}")  # fmt: skip
        return (
            f"{problem}: its type {what} is not importable ({cause}); fix: install "
            f"module '{module}' here or put it beside this pipeline's scripts, {plain}"
        )
    if found := _MISSING_ATTRIBUTE.search(str(exc)):
        return (
            f"{problem}: its type {found[2]}.{found[1]} is not importable ({cause}); fix: "
            f"install the same version of module '{found[2]}' on both hosts, {plain}"
        )
    return f"{problem} ({cause}); fix: run the same Python and libraries on both hosts, {plain}"


def pickle_globals(head: bytes) -> list[str]:
    """The classes and functions a pickle stream names, as 'module:qualname', in order."""
    found: list[str] = []
    pushed: list[Any] = []  # what the opcodes pushed, enough to follow STACK_GLOBAL's strings
    memo: dict[int, Any] = {}
    try:
        for op, arg, _ in pickletools.genops(head):
            if op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                found.append(f"{pushed[-2]}:{pushed[-1]}")
                pushed.append(None)
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", ":", 1))
                pushed.append(None)
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                pushed.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                pushed.append(memo.get(arg))
            elif op.name not in ("PROTO", "FRAME"):
                pushed.append(None)
    except Exception:  # a truncated or foreign stream: what was read so far still helps
        pass
    return found


# ---- json --------------------------------------------------------------------------------


def _json_dumps(value: Any) -> Frames:
    try:
        return [json.dumps(value, separators=(",", ":"), allow_nan=True).encode("utf-8")]
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{_describe(value)}, which the json serializer cannot send ({exc}); fix: return "
            'JSON types (dict, list, str, int, float, bool, None) or set "serializer": '
            '"pickle" in the config'
        ) from exc


def _json_loads(frames: Sequence[Any]) -> Any:
    return json.loads(bytes(frames[0]))


SERIALIZERS: dict[str, Serializer] = {
    s.name: s
    for s in (
        Serializer(
            1,
            "pickle",
            _pickle_dumps,
            _pickle_loads,
            _pickle_dumps_one,
            pickle.loads,
            _pickle_loads_batch,
        ),
        Serializer(2, "dill", _dill_dumps, _dill_loads),
        Serializer(3, "json", _json_dumps, _json_loads),
    )
}
BY_ID: dict[int, Serializer] = {s.id: s for s in SERIALIZERS.values()}


def get(name: str) -> Serializer:
    """The serializer called `name`."""
    return SERIALIZERS[name]
