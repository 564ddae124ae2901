"""Pipeline configs: parse DPorch-compatible JSON into frozen dataclasses and check them.

Nothing here runs user code: scripts are checked by parsing them (ast), never by importing.
Every problem names the file, the field and the fix, as `file: field: problem`.
"""

from __future__ import annotations

import ast
import codecs
import difflib
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from porch import discovery
from porch.control import WorkerState
from porch.directory import Entry
from porch.errors import ConfigError
from porch.names import (
    TAG_HEX_DIGITS,
    is_replica,
    name_problem,
    name_warning,
    pipeline_of,
    process_name_problem,
    replica_name,
)
from porch.restart import RestartPolicy


# Optional fields whose value is one of a few words. Each is a StrEnum: code compares members,
# the JSON holds their values, and the order of the members is the order error messages list.
class SerializerName(enum.StrEnum):
    """Config field `serializer`: how values are encoded between pipelines."""

    PICKLE = "pickle"
    DILL = "dill"
    JSON = "json"


class OnError(enum.StrEnum):
    """Config field `on_error`: what a raising step() (or an unsendable output) does."""

    STOP = "stop"
    SKIP = "skip"
    DEAD_LETTER = "dead-letter"


class FanIn(enum.StrEnum):
    """Config field `fan_in`: whether an iteration waits for all sources or takes any."""

    ALL = "all"
    ANY = "any"


class Overflow(enum.StrEnum):
    """Config field `overflow`: what a full output queue does."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


class Delivery(enum.StrEnum):
    """Config field `delivery`: whether outputs are acknowledged and resent."""

    AT_LEAST_ONCE = "at-least-once"
    AT_MOST_ONCE = "at-most-once"


class Outbox(enum.StrEnum):
    """Config field `outbox`: where unacknowledged outputs are kept."""

    MEMORY = "memory"
    DURABLE = "durable"


# field -> its enum (RestartPolicy, of porch/restart.py, is field `restart`); the defaults are
# PipelineConfig's
CHOICE_TYPES: dict[str, type[enum.StrEnum]] = {
    "serializer": SerializerName,
    "restart": RestartPolicy,
    "on_error": OnError,
    "fan_in": FanIn,
    "overflow": Overflow,
    "delivery": Delivery,
    "outbox": Outbox,
}
SERIALIZERS = tuple(s.value for s in SerializerName)
RESTART_POLICIES = tuple(r.value for r in RestartPolicy)
# field -> the words it allows
CHOICES: dict[str, tuple[str, ...]] = {
    key: tuple(m.value for m in kind) for key, kind in CHOICE_TYPES.items()
}
DEFAULT_QUEUE_LIMIT = 1000
DEFAULT_QUEUE_LIMIT_BYTES = 64 * 1024 * 1024
DEFAULT_HEARTBEAT_TIMEOUT_S = 30.0
# Bounds of the numbers the runtime uses. A ZeroMQ high-water mark is a C int (int32) and
# links set queue_limit plus a margin as one, so queue_limit stays far below 2**31.
MAX_QUEUE_LIMIT = 1_000_000_000
MIN_QUEUE_LIMIT_BYTES = 1024
MAX_QUEUE_LIMIT_BYTES = 2**40  # 1 TiB held per link: beyond any host's memory
MAX_SOURCE_PIPELINE_COUNT = 10_000  # each source is a connection (a file descriptor) of its own
# Workers report every second (porch.control.HEARTBEAT_INTERVAL_S): below two missed reports a
# healthy worker would be killed; beyond a day the watchdog is as good as off.
MIN_HEARTBEAT_TIMEOUT_S = 2.0
MAX_HEARTBEAT_TIMEOUT_S = 86_400.0
DEFAULT_FINISH_TIMEOUT_S = 600.0
# how long a finished stream may wait for its targets: from a moment to a week
MIN_FINISH_TIMEOUT_S = 0.1
MAX_FINISH_TIMEOUT_S = 604_800.0
# the first restart's wait under porchd (each failure in the window doubles it, up to 30 s)
DEFAULT_RESTART_BACKOFF_S = 0.5
MAX_RESTART_BACKOFF_S = 30.0
# iterations in flight at once in one worker (async steps): each holds its input and a task
MAX_CONCURRENCY = 10_000
# worker processes of one pipeline on one supervisor (each a connection to each of its peers)
MAX_REPLICAS = 64


class Severity(enum.Enum):
    """How bad a problem is: errors stop a run, warnings are printed and tolerated."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding about one field of one config file."""

    file: str
    field: str
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        tag = "warning: " if self.severity is Severity.WARNING else ""
        return f"{self.file}: {self.field}: {tag}{self.message}"


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline: its name, its scripts (absolute paths), its sources and its targets."""

    name: str
    scripts: tuple[Path, ...]
    source_pipeline_count: int = 0
    target_pipeline_names: tuple[str, ...] = ()
    serializer: SerializerName = SerializerName.PICKLE
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    queue_limit_bytes: int = DEFAULT_QUEUE_LIMIT_BYTES
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    finish_timeout_s: float = DEFAULT_FINISH_TIMEOUT_S
    restart_backoff_s: float = DEFAULT_RESTART_BACKOFF_S
    on_error: OnError = OnError.STOP
    fan_in: FanIn = FanIn.ALL
    overflow: Overflow = Overflow.BLOCK
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    outbox: Outbox = Outbox.MEMORY
    concurrency: int = 1
    # Replicas (docs/replicas.md, README "Scaling a stage"): `replicas` worker processes run
    # this pipeline; `replicated` says the config has the key (then its processes are named
    # NAME#TAG-K, even for 1, and the same config on several hosts forms one pipeline).
    replicas: int = 1
    replicated: bool = False
    ordered: bool = False  # targets get the output in the order of the input
    partition_by: str | None = None  # senders route each value by value[FIELD]
    # Set on a replica's worker only: the pipeline's name (`name` is then the process name,
    # NAME#TAG-K, from `python -m workers --replica`).
    replica_of: str | None = None
    path: Path = field(default=Path("config.json"), compare=False)

    def __post_init__(self) -> None:
        # a config built in code with plain words gets the enum members all the same
        for key, kind in CHOICE_TYPES.items():
            object.__setattr__(self, key, kind(getattr(self, key)))

    @property
    def pipeline(self) -> str:
        """The pipeline's name: `name`, or for a replica's worker the name it is a replica of."""
        return self.replica_of or self.name

    @property
    def folder(self) -> Path:
        """The folder the config lives in; script paths are relative to it."""
        return self.path.parent


# field name -> (required, expected python types, human type name)
_FIELDS: dict[str, tuple[bool, tuple[type, ...], str]] = {
    "name": (True, (str,), "a string"),
    "scripts": (True, (list,), "a list of .py paths"),
    "source_pipeline_count": (False, (int,), "a whole number"),
    "target_pipeline_names": (False, (list,), "a list of pipeline names"),
    "queue_limit": (False, (int,), f"a whole number from 1 to {MAX_QUEUE_LIMIT:,}"),
    "queue_limit_bytes": (
        False,
        (int,),
        f"a whole number of bytes from {MIN_QUEUE_LIMIT_BYTES} to {MAX_QUEUE_LIMIT_BYTES:,}",
    ),
    "concurrency": (False, (int,), f"a whole number from 1 to {MAX_CONCURRENCY:,}"),
    "heartbeat_timeout_s": (
        False,
        (int, float),
        f"a number of seconds from {MIN_HEARTBEAT_TIMEOUT_S:g} to {MAX_HEARTBEAT_TIMEOUT_S:g}",
    ),
    "finish_timeout_s": (
        False,
        (int, float),
        f"a number of seconds from {MIN_FINISH_TIMEOUT_S:g} to {MAX_FINISH_TIMEOUT_S:g}",
    ),
    "restart_backoff_s": (
        False,
        (int, float),
        f"a number of seconds from 0 to {MAX_RESTART_BACKOFF_S:g}",
    ),
    "replicas": (False, (int,), f"a whole number from 1 to {MAX_REPLICAS}"),
    "ordered": (False, (bool,), "true or false"),
    "partition_by": (False, (str,), "the name of a field (a dict key or an attribute)"),
    **{key: (False, (str,), f"one of {', '.join(allowed)}") for key, allowed in CHOICES.items()},
}


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


# Byte order marks Porch reads (UTF-32 first: its little-endian mark starts like UTF-16's).
BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
SAVE_AS_UTF8 = (
    "save it as UTF-8 (in an editor: Save As, encoding UTF-8; in PowerShell: "
    "Set-Content -Encoding utf8; on Linux: iconv -f latin1 -t utf-8)"
)


def decode_text(data: bytes) -> str:
    """A config file's text: UTF-8 with or without a BOM, or UTF-16/32 with a BOM (what Windows
    PowerShell's `>` writes). Anything else raises UnicodeError with one line saying what to do.
    """
    for bom, codec in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                raise UnicodeError(
                    f"starts with a {codec} byte order mark but is not valid {codec} "
                    f"(byte {exc.start}); {SAVE_AS_UTF8}"
                ) from None
    if b"\0" in data:  # no JSON text holds a NUL byte; UTF-16 text is full of them
        raise UnicodeError(f"looks like UTF-16 without a byte order mark; {SAVE_AS_UTF8}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UnicodeError(
            f"is not UTF-8 (byte 0x{data[exc.start]:02X} on line {line}: Latin-1 or another "
            f"legacy encoding?); {SAVE_AS_UTF8}"
        ) from None


def script_path(folder: Path, raw: str) -> Path:
    """Resolve a script path from a config; Windows separators (`..\\x.py`) are accepted."""
    return (folder / raw.replace("\\", "/")).resolve()


class _Checker:
    """Collects the problems of one config file while building its PipelineConfig."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = str(path)
        self.problems: list[Problem] = []

    def error(self, fld: str, message: str) -> None:
        self.problems.append(Problem(self.file, fld, message))

    def warn(self, fld: str, message: str) -> None:
        self.problems.append(Problem(self.file, fld, message, Severity.WARNING))

    def read(self) -> Mapping[str, object] | None:
        try:
            text = decode_text(self.path.read_bytes())
        except UnicodeError as exc:
            self.error("file", str(exc))
            return None
        except FileNotFoundError:
            self.error("file", "does not exist; check the path or create it with `porch init`")
            return None
        except OSError as exc:
            self.error("file", f"cannot be read: {exc.strerror}")
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.error("json", f"line {exc.lineno} column {exc.colno}: {exc.msg}")
            return None
        if not isinstance(data, dict):
            self.error("json", f"must be a JSON object, got {type(data).__name__}")
            return None
        return data

    def check_keys(self, data: Mapping[str, object]) -> bool:
        ok = True
        for key in data:
            if key not in _FIELDS:
                known = ", ".join(_FIELDS)
                lower = {k.lower().replace("_", ""): k for k in _FIELDS}
                close = difflib.get_close_matches(key.lower().replace("_", ""), lower, n=1)
                fix = f"did you mean {lower[close[0]]!r}?" if close else "remove it"
                self.error(key, f"unknown key; {fix} (known keys: {known})")
                ok = False
        for key, (required, types, human) in _FIELDS.items():
            if key not in data:
                if required:
                    self.error(key, f"missing; add it as {human}")
                    ok = False
                continue
            value = data[key]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                self.error(key, f"must be {human}, got {json.dumps(value)}")
                ok = False
        return ok

    def check_name(self, name: str) -> None:
        why = name_problem(name)
        if why:
            self.error("name", why)
            return
        awkward = name_warning(name)
        if awkward:
            self.warn("name", awkward)

    def check_scripts(self, raw: object) -> tuple[Path, ...]:
        items = raw if isinstance(raw, list) else []  # check_keys said so if it is not
        if not items:
            self.error("scripts", "must name at least one .py script")
        paths: list[Path] = []
        for i, item in enumerate(items):
            fld = f"scripts[{i}]"
            if not isinstance(item, str) or not item.strip():
                self.error(fld, f"must be a path to a .py file, got {json.dumps(item)}")
                continue
            try:
                path = script_path(self.path.parent, item)
            except (ValueError, UnicodeError) as exc:
                self.error(fld, f"is not a usable file path ({exc}); fix the path")
                continue
            paths.append(path)
            for message in script_problems(path):
                self.error(fld, message)
        return tuple(paths)

    def check_numbers(self, data: Mapping[str, object]) -> None:
        self.check_range(data, "source_pipeline_count", 0, MAX_SOURCE_PIPELINE_COUNT)
        self.check_range(data, "queue_limit", 1, MAX_QUEUE_LIMIT)
        self.check_range(data, "concurrency", 1, MAX_CONCURRENCY)
        self.check_range(data, "queue_limit_bytes", MIN_QUEUE_LIMIT_BYTES, MAX_QUEUE_LIMIT_BYTES)
        self.check_range(
            data, "heartbeat_timeout_s", MIN_HEARTBEAT_TIMEOUT_S, MAX_HEARTBEAT_TIMEOUT_S
        )
        self.check_range(data, "finish_timeout_s", MIN_FINISH_TIMEOUT_S, MAX_FINISH_TIMEOUT_S)
        self.check_range(data, "restart_backoff_s", 0, MAX_RESTART_BACKOFF_S)
        self.check_range(data, "replicas", 1, MAX_REPLICAS)
        if data.get("outbox") == Outbox.DURABLE and data.get("delivery") == Delivery.AT_MOST_ONCE:
            self.error("outbox", "a durable outbox replays what a crash left unacknowledged, "
                       "which delivery at-most-once forbids: use outbox \"memory\" with it, "
                       "or delivery \"at-least-once\"")  # fmt: skip
        for key, allowed in CHOICES.items():
            value = data.get(key)
            if isinstance(value, str) and value not in allowed:
                self.error(key, f"must be one of {', '.join(allowed)}, got {value!r}")

    def check_range(self, data: Mapping[str, object], key: str, low: float, high: float) -> None:
        """A number field must lie in [low, high] (and be finite: JSON's NaN and Infinity)."""
        value = data.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        if not (math.isfinite(value) and low <= value <= high):
            self.error(key, f"must be from {_number(low)} to {_number(high)}, got {value!r}; "
                       f"set a value in that range or remove the key for the default")  # fmt: skip

    def check_concurrency(self, data: Mapping[str, object], scripts: tuple[Path, ...]) -> None:
        """concurrency > 1 overlaps only async steps: without one it does nothing, say so."""
        value = data.get("concurrency", 1)
        if isinstance(value, bool) or not isinstance(value, int):
            return
        if not 1 < value <= MAX_CONCURRENCY:  # 1 is the default; out of range is an error
            return
        if not any(_has_async_step(path) for path in scripts):
            self.warn("concurrency", f"is {value}, but no script has an `async def step()`: "
                      "sync steps run one at a time; make the step that waits on I/O async, "
                      "or remove the key")  # fmt: skip

    def check_replicas(self, data: Mapping[str, object]) -> None:
        """ordered and partition_by shape how a replicated pipeline's values travel."""
        field_name = data.get("partition_by")
        if isinstance(field_name, str) and not field_name.strip():
            self.error("partition_by", "must name a field of the values (a dict key or an "
                       "attribute), got an empty string; name one or remove the key")  # fmt: skip
        elif isinstance(field_name, str) and (
            len(field_name) > discovery.MAX_TEXT or not field_name.isprintable()
        ):  # discovery beacons carry it to the senders on other hosts
            self.error("partition_by", f"must be at most {discovery.MAX_TEXT} printable "
                       f"characters (beacons carry it), got {field_name[:40]!r}; use a "
                       "shorter field name")  # fmt: skip
        if data.get("ordered") is True and data.get("fan_in") == FanIn.ANY:
            self.error("ordered", "cannot order the output of a `fan_in: any` stage (it stamps "
                       "each value anew, so its input order is not carried through); remove "
                       "\"ordered\" or use fan_in \"all\"")  # fmt: skip
        if "replicas" in data:
            if data.get("ordered") is True and not data.get("target_pipeline_names"):
                self.warn("ordered", "does nothing without target_pipeline_names (it orders "
                          "what this pipeline's targets receive); remove it")  # fmt: skip
            return
        for key in ("ordered", "partition_by"):
            if key in data and data[key] not in (False, None):
                self.warn(key, "does nothing without \"replicas\": add \"replicas\": N "
                          "(1 or more) or remove the key")  # fmt: skip

    def check_targets(self, raw: object, own_name: str) -> tuple[str, ...]:
        names: list[str] = []
        for i, item in enumerate(raw if isinstance(raw, list) else []):
            fld = f"target_pipeline_names[{i}]"
            if not isinstance(item, str):
                self.error(fld, f"must be a pipeline name, got {json.dumps(item)}")
                continue
            why = name_problem(item)
            if why and is_replica(item) and not process_name_problem(item):
                why = (
                    f"{item!r} is one replica of the pipeline {pipeline_of(item)!r}: name the "
                    "pipeline (its senders pick a replica for each value)"
                )
            if why:
                self.error(fld, why)
            elif item == own_name:
                self.error(fld, "a pipeline cannot target itself")
            elif item in names:
                self.error(fld, f"{item!r} is listed twice; remove the duplicate")
            names.append(item)
        return tuple(names)


def check_config(path: str | Path) -> tuple[PipelineConfig | None, list[Problem]]:
    """Parse one config file; return the config (None when it has errors) and its problems."""
    checker = _Checker(Path(path))
    data = checker.read()
    if data is None or not checker.check_keys(data):
        return None, checker.problems
    name = str(data["name"])  # check_keys: a string
    checker.check_name(name)
    scripts = checker.check_scripts(data["scripts"])
    checker.check_numbers(data)
    targets = checker.check_targets(data.get("target_pipeline_names", []), name)
    checker.check_concurrency(data, scripts)
    checker.check_replicas(data)
    if any(p.severity is Severity.ERROR for p in checker.problems):
        return None, checker.problems
    checked = _Checked(data)  # every value has its type (check_keys) and range (check_numbers)
    config = PipelineConfig(
        name=name,
        scripts=scripts,
        source_pipeline_count=checked.whole("source_pipeline_count", 0),
        target_pipeline_names=targets,
        queue_limit=checked.whole("queue_limit", DEFAULT_QUEUE_LIMIT),
        queue_limit_bytes=checked.whole("queue_limit_bytes", DEFAULT_QUEUE_LIMIT_BYTES),
        heartbeat_timeout_s=checked.seconds("heartbeat_timeout_s", DEFAULT_HEARTBEAT_TIMEOUT_S),
        finish_timeout_s=checked.seconds("finish_timeout_s", DEFAULT_FINISH_TIMEOUT_S),
        restart_backoff_s=checked.seconds("restart_backoff_s", DEFAULT_RESTART_BACKOFF_S),
        concurrency=checked.whole("concurrency", 1),
        replicas=checked.whole("replicas", 1),
        replicated="replicas" in data,
        ordered=data.get("ordered") is True,
        partition_by=partition_by
        if isinstance(partition_by := data.get("partition_by"), str)
        else None,
        serializer=SerializerName(checked.word("serializer", PipelineConfig.serializer)),
        restart=RestartPolicy(checked.word("restart", PipelineConfig.restart)),
        on_error=OnError(checked.word("on_error", PipelineConfig.on_error)),
        fan_in=FanIn(checked.word("fan_in", PipelineConfig.fan_in)),
        overflow=Overflow(checked.word("overflow", PipelineConfig.overflow)),
        delivery=Delivery(checked.word("delivery", PipelineConfig.delivery)),
        outbox=Outbox(checked.word("outbox", PipelineConfig.outbox)),
        path=Path(path).resolve(),
    )
    return config, checker.problems


@dataclass(frozen=True)
class _Checked:
    """A config file's values once checked: each read as the type its check found."""

    data: Mapping[str, object]

    def whole(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def seconds(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        return float(value) if isinstance(value, int | float) else default

    def word(self, key: str, default: enum.StrEnum) -> str:
        value = self.data.get(key, default)
        return value if isinstance(value, str) else default.value


def load_config(path: str | Path) -> PipelineConfig:
    """Parse one config file or raise ConfigError with every problem it has."""
    config, problems = check_config(path)
    if config is None:
        raise ConfigError([str(p) for p in problems])
    return config


def script_problems(path: Path) -> list[str]:
    """Problems of one script file, found by parsing it (the user's code is not run)."""
    if path.suffix != ".py":
        return [f"{path}: must be a .py file"]
    try:
        source = path.read_bytes()  # as Python reads it: a BOM or a coding line decides
    except FileNotFoundError:
        return [f"{path}: script does not exist; create it or fix the path"]
    except OSError as exc:
        return [f"{path}: cannot be read: {exc.strerror or exc}"]
    if not source.strip() or source.strip() == codecs.BOM_UTF8:
        return [f"{path}: script is empty; it needs a step() function"]
    if b"\0" in source:
        return [f"{path}: looks like UTF-16 (it holds NUL bytes), but Python reads scripts as "
                f"UTF-8; {SAVE_AS_UTF8}"]  # fmt: skip
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        if exc.lineno is None or "codec" in str(exc.msg):
            return [f"{path}: cannot be decoded: {exc.msg}; {SAVE_AS_UTF8}, or declare its "
                    "encoding on its first line (# -*- coding: latin-1 -*-)"]  # fmt: skip
        return [f"{path}:{exc.lineno}: syntax error: {exc.msg}"]

    return _hook_problems(path, tree)


def _has_async_step(path: Path) -> bool:
    """Whether the script defines `async def step()` at its top level (False if unreadable:
    script_problems reports that)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.AsyncFunctionDef) and node.name == "step" for node in tree.body)


def _required_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """How many arguments a call must pass (positional without default, keyword-only too)."""
    args = fn.args
    positional = len(args.posonlyargs) + len(args.args) - len(args.defaults)
    return positional + sum(1 for d in args.kw_defaults if d is None)


def _hook_problems(path: Path, tree: ast.Module) -> list[str]:
    hooks = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in ("step", "end")
    }
    problems: list[str] = []
    step = hooks.get("step")
    if step is None:
        problems.append(f"{path}: has no top-level step() function; add `def step(input_data):`")
    elif _required_params(step) > 1:
        problems.append(
            f"{path}:{step.lineno}: step() must take 0 or 1 parameters, "
            f"it requires {_required_params(step)}"
        )
    end = hooks.get("end")
    if end is not None and _required_params(end) > 0:
        problems.append(f"{path}:{end.lineno}: end() must take no parameters")
    return problems


def check_graph(configs: Sequence[PipelineConfig]) -> list[Problem]:
    """Problems of the graph that a set of configs forms (duplicates, dangling edges, counts)."""
    problems: list[Problem] = []
    by_name: dict[str, PipelineConfig] = {}
    for config in configs:
        if config.name in by_name:
            other = by_name[config.name].path
            problems.append(
                Problem(
                    str(config.path),
                    "name",
                    f"{config.name!r} is also the name in {other}; pipeline names must be unique",
                )
            )
        else:
            by_name[config.name] = config
    incoming: dict[str, int] = {name: 0 for name in by_name}
    for config in by_name.values():
        for i, target in enumerate(config.target_pipeline_names):
            if target in incoming:
                incoming[target] += 1
            else:
                close = difflib.get_close_matches(target, [n for n in by_name if n != config.name])
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(
                    Problem(
                        str(config.path),
                        f"target_pipeline_names[{i}]",
                        f"{target!r} is not among the given configs "
                        f"(fine if it runs on another host){hint}",
                        Severity.WARNING,
                    )
                )
    for name, count in incoming.items():
        config = by_name[name]
        if count != config.source_pipeline_count:
            senders = sorted(c.name for c in by_name.values() if name in c.target_pipeline_names)
            problems.append(
                Problem(
                    str(config.path),
                    "source_pipeline_count",
                    f"is {config.source_pipeline_count}, but {count} of the given configs "
                    f"target {name!r} ({', '.join(senders) or 'none'}); "
                    "fine if the others run on another host",
                    Severity.WARNING,
                )
            )
    problems.extend(_replicated_sources(by_name.values()))
    problems.extend(_cycle_problems(by_name))
    problems.extend(_beacon_problems(list(by_name.values())))
    return problems


def _replicated_sources(configs: Iterable[PipelineConfig]) -> list[Problem]:
    """A replicated pipeline counts once as a source of its targets (its replicas are one
    pipeline there); but a source pipeline with several replicas runs its stream that many
    times, each replica making it whole."""
    return [
        Problem(
            str(c.path),
            "replicas",
            f"is {c.replicas}, but {c.name} is a source pipeline (source_pipeline_count 0): "
            f"each replica runs its own stream, so its targets get every value {c.replicas} "
            "times; give it 1 replica, or replicate the stage after it",
            Severity.WARNING,
        )
        for c in configs
        if c.replicas > 1 and c.source_pipeline_count == 0
    ]


def _beacon_problems(configs: Sequence[PipelineConfig]) -> list[Problem]:
    """One supervisor announces its pipelines in a beacon of up to MAX_PARTS datagrams, and
    other hosts' tables hold up to MAX_REMOTE_PIPELINES: more (or names too long) and other
    hosts would not see them all."""

    # a replicated pipeline is announced as one entry per replica (NAME#TAG-K)
    entries = [
        Entry(replica_name(c.name, "f" * TAG_HEX_DIGITS, k), None, WorkerState.RUNNING,
              ordered=c.ordered, partition_by=c.partition_by)
        if c.replicated else Entry(c.name, None, WorkerState.RUNNING)
        for c in configs
        for k in range(c.replicas if c.replicated else 1)
    ]  # fmt: skip
    replicated = any(c.replicated for c in configs)
    size = discovery.announced_bytes(entries)
    room = discovery.MAX_PARTS * (discovery.MAX_BEACON_BYTES - discovery.BEACON_OVERHEAD_BYTES)
    if len(entries) <= discovery.MAX_REMOTE_PIPELINES and size <= room:
        return []
    return [
        Problem(
            str(configs[-1].path),
            "name",
            f"{len(entries)} pipelines{' (each replica counts)' if replicated else ''} under "
            "one supervisor: other hosts hold at most "
            f"{discovery.MAX_REMOTE_PIPELINES:,} of one host's pipelines, in a discovery "
            f"beacon of at most {room:,} bytes (this one needs up to {size:,}): other hosts "
            "would not see them all; run them under several porchd or porch run, or shorten "
            "their names",
            Severity.WARNING,
        )
    ]


def _reachable(start: str, by_name: dict[str, PipelineConfig]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in by_name[todo.pop()].target_pipeline_names:
            if target in by_name and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _cycles(by_name: dict[str, PipelineConfig]) -> list[list[str]]:
    """The strongly connected groups of two or more pipelines (each a cycle or several)."""
    reach = {name: _reachable(name, by_name) for name in by_name}
    groups: list[list[str]] = []
    placed: set[str] = set()
    for name in sorted(by_name):
        if name in placed or name not in reach[name]:
            continue
        group = sorted(n for n in reach[name] if name in reach[n])
        placed.update(group)
        groups.append(group)
    return groups


def _cycle_problems(by_name: dict[str, PipelineConfig]) -> list[Problem]:
    """A cycle in which every member waits for all its inputs can never start."""
    problems = []
    for group in _cycles(by_name):
        if any(by_name[name].fan_in is FanIn.ANY for name in group):
            continue
        for name in group:
            problems.append(
                Problem(
                    str(by_name[name].path),
                    "fan_in",
                    f"{name} is in a cycle among {', '.join(group)} where every member waits "
                    'for all its inputs, so none can ever start; set "fan_in": "any" on one',
                    Severity.WARNING,
                )
            )
    return problems


def validate(paths: Iterable[str | Path]) -> tuple[list[PipelineConfig], list[Problem]]:
    """Check every file and the graph they form; return the good configs and all problems."""
    configs: list[PipelineConfig] = []
    problems: list[Problem] = []
    for path in paths:
        config, found = check_config(path)
        problems.extend(found)
        if config is not None:
            configs.append(config)
    problems.extend(check_graph(configs))
    return configs, problems


def has_errors(problems: Iterable[Problem]) -> bool:
    """Whether any problem is an error rather than a warning."""
    return any(p.severity is Severity.ERROR for p in problems)
